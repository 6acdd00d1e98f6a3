"""Tests of the store config model and its YAML loader."""

from pathlib import Path

import pytest

from mkt.errors import ConfigError
from mkt.stores.config import (
    DEFAULT_EMBEDDING_MODEL,
    load_store_config,
    parse_store_config,
)


def minimal_config(**overrides) -> dict:
    document = {
        "store_id": "amazon-de",
        "marketplace": "amazon",
        "connector": {"kind": "file", "options": {"products": "/data/products.csv"}},
    }
    document.update(overrides)
    return document


def test_config_defaults_fill_optional_fields():
    config = parse_store_config(minimal_config())

    assert config.embedding_model == DEFAULT_EMBEDDING_MODEL
    assert config.target_products_per_category == 2000
    assert config.classifier.k == 10
    assert config.evaluation.seed == 42


@pytest.mark.parametrize(
    "store_id", ["Amazon-DE", "-amazon", "amazon_de", "amazon de", ""]
)
def test_config_rejects_store_id_that_is_not_a_slug(store_id):
    with pytest.raises(ConfigError) as caught:
        parse_store_config(minimal_config(store_id=store_id), "'stores/bad.yaml'")

    message = str(caught.value)
    assert "store_id" in message
    assert "lower-case letters, digits and '-'" in message
    assert repr(store_id) in message
    assert "'stores/bad.yaml'" in message


def test_config_rejects_unknown_field_as_typo():
    with pytest.raises(ConfigError) as caught:
        parse_store_config(minimal_config(embeding_model="x"))

    assert "embeding_model" in str(caught.value)


def test_config_rejects_unknown_connector_kind():
    document = minimal_config(connector={"kind": "ftp", "options": {}})

    with pytest.raises(ConfigError) as caught:
        parse_store_config(document)

    assert "'ftp'" in str(caught.value)
    assert "file" in str(caught.value)


def test_config_rejects_unknown_connector_option():
    document = minimal_config(
        connector={"kind": "file", "options": {"prodcts": "a.csv"}}
    )

    with pytest.raises(ConfigError) as caught:
        parse_store_config(document)

    assert "connector.options" in str(caught.value) or "prodcts" in str(caught.value)


def test_config_rejects_out_of_range_classifier_setting():
    with pytest.raises(ConfigError) as caught:
        parse_store_config(minimal_config(classifier={"k": 0}))

    assert "classifier.k" in str(caught.value)


def test_load_resolves_product_path_against_config_folder(tmp_path):
    path = tmp_path / "store.yaml"
    path.write_text(
        "store_id: shop\nmarketplace: test\nconnector:\n  kind: file\n"
        "  options:\n    products: data/products.csv\n"
    )

    config = load_store_config(path)

    assert config.connector.options["products"] == str(
        tmp_path / "data" / "products.csv"
    )


def test_load_reports_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="not found"):
        load_store_config(missing)


def test_load_rejects_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")

    with pytest.raises(ConfigError, match="mapping"):
        load_store_config(path)


def test_load_rejects_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("store_id: [unclosed\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_store_config(path)


def test_load_fills_store_id_from_argument(tmp_path):
    path = tmp_path / "store.yaml"
    path.write_text(
        "marketplace: test\nconnector: {kind: file, options: {products: a.csv}}\n"
    )

    config = load_store_config(path, store_id="shop-pl")

    assert config.store_id == "shop-pl"


def test_load_rejects_store_id_that_differs_from_argument(tmp_path):
    path = tmp_path / "store.yaml"
    path.write_text(
        "store_id: shop-de\nmarketplace: test\nconnector: {kind: file, options: {products: a.csv}}\n"
    )

    with pytest.raises(ConfigError) as caught:
        load_store_config(path, store_id="shop-pl")

    assert "'shop-de'" in str(caught.value)
    assert "'shop-pl'" in str(caught.value)


def test_example_store_config_is_valid():
    example = (
        Path(__file__).resolve().parents[2] / "examples" / "pricerunner" / "store.yaml"
    )

    config = load_store_config(example)

    assert config.store_id == "pricerunner-sample"
    assert Path(config.connector.options["products"]).is_file()


def test_config_moves_champion_metric_to_promotion():
    config = parse_store_config(
        minimal_config(evaluation={"champion_metric": "macro_f1"})
    )

    assert config.promotion.metric == "macro_f1"
    assert "champion_metric" not in config.evaluation.model_dump()


def test_config_rejects_conflicting_champion_metric():
    document = minimal_config(
        evaluation={"champion_metric": "macro_f1"}, promotion={"metric": "accuracy"}
    )

    with pytest.raises(ConfigError) as caught:
        parse_store_config(document)

    assert "'macro_f1' conflicts with promotion.metric 'accuracy'" in str(caught.value)


def test_config_promotion_defaults():
    promotion = parse_store_config(minimal_config()).promotion

    assert promotion.metric == "weighted_f1"
    assert promotion.min_gain == 0.0
    assert promotion.max_level_drop == 0.02
    assert promotion.min_coverage == 0.0


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("index", "hnsw", "'auto', 'flat', 'ivf' or 'ivfpq'"),
        ("memory_budget_gb", 0, "greater than 0"),
        ("recall_target", 1.5, "less than or equal to 1"),
    ],
)
def test_config_rejects_invalid_index_settings(field, value, fragment):
    with pytest.raises(ConfigError) as caught:
        parse_store_config(minimal_config(classifier={field: value}))

    message = str(caught.value)
    assert f"classifier.{field}" in message
    assert repr(value) in message
    assert fragment in message
