"""Tests of the built-in marketplace presets: each is a valid http store config."""

import pytest

from mkt.stores.config import parse_store_config
from mkt.stores.presets import MARKETPLACES, build_preset_config


@pytest.mark.parametrize(
    "store_id",
    [
        f"{marketplace}-{region}"
        for marketplace, preset in MARKETPLACES.items()
        for region in preset["regions"]
    ],
)
def test_every_preset_is_a_valid_http_store(store_id, tmp_path):
    config = parse_store_config(build_preset_config(store_id, tmp_path))

    assert config.connector.kind == "http"
    assert config.connector.options["auth_credential"] == "api_token"
    assert "api_token" in config.credentials


def test_ebay_preset_names_marketplace_and_tree(tmp_path):
    options = build_preset_config("ebay-uk", tmp_path)["connector"]["options"]

    assert options["headers"]["X-EBAY-C-MARKETPLACE-ID"] == "EBAY_GB"
    assert options["categories_path"].endswith("/category_tree/3")


def test_amazon_preset_reads_tree_from_inbox(tmp_path):
    options = build_preset_config("amazon-us", tmp_path)["connector"]["options"]

    assert options["categories_file"] == str(
        tmp_path / "inbox" / "amazon-us" / "categories.csv"
    )
    assert options["base_url"] == "https://sellingpartnerapi-na.amazon.com"
    assert options["products_params"]["marketplaceIds"] == "ATVPDKIKX0DER"


def test_allegro_preset_walks_tree_by_parent(tmp_path):
    options = build_preset_config("allegro-cz", tmp_path)["connector"]["options"]

    assert options["tree_shape"] == "by_parent"
    assert options["products_params"]["marketplace"] == "allegro-cz"
