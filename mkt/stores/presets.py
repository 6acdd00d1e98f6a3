"""Built-in store presets, so `mkt add-store amazon-de` needs no config file."""

import copy
from pathlib import Path
from typing import Any

import yaml

from mkt.errors import ConfigError

# Each marketplace's regions, the environment variable its API token is read from, and
# per region what its API needs: a marketplace id, an endpoint or a category tree id.
MARKETPLACES: dict[str, dict[str, Any]] = {
    "amazon": {
        "regions": ("de", "es", "fr", "it", "nl", "pl", "se", "uk", "us"),
        "token_env": "AMAZON_SP_API_TOKEN",
    },
    "ebay": {
        "regions": ("au", "de", "fr", "it", "uk", "us"),
        "token_env": "EBAY_OAUTH_TOKEN",
    },
    "allegro": {"regions": ("cz", "pl", "sk"), "token_env": "ALLEGRO_API_TOKEN"},
}

# Selling Partner API marketplace ids, as Amazon's SP-API docs list them.
AMAZON_MARKETPLACE_IDS = {
    "de": "A1PA6795UKMFR9",
    "es": "A1RKKUPIHCS9HS",
    "fr": "A13V1IB3VIYZZH",
    "it": "APJ6JRA9NG5V4",
    "nl": "A1805IZSGTT6HS",
    "pl": "A1C3SOZRARQ6R3",
    "se": "A2NODRKZP88ZB9",
    "uk": "A1F83G8C2ARO7P",
    "us": "ATVPDKIKX0DER",
}
# eBay marketplace ids and the category tree id of each, as the Taxonomy API docs list them.
EBAY_MARKETPLACES = {
    "au": ("EBAY_AU", "15"),
    "de": ("EBAY_DE", "77"),
    "fr": ("EBAY_FR", "71"),
    "it": ("EBAY_IT", "101"),
    "uk": ("EBAY_GB", "3"),
    "us": ("EBAY_US", "0"),
}


def allegro_connector(region: str, inbox: Path) -> dict[str, Any]:
    """Describe Allegro's REST API: the category tree by parent, offers by offset."""
    return {
        "base_url": "https://api.allegro.pl",
        "headers": {"Accept": "application/vnd.allegro.public.v1+json"},
        "categories_path": "/sale/categories",
        "tree_shape": "by_parent",
        "parent_param": "parent.id",
        "category_parent_field": "parent.id",
        "products_path": "/offers/listing",
        "products_params": {
            "category.id": "{category_id}",
            "marketplace": f"allegro-{region}",
        },
        "products_key": "items.regular",
        "product_title_field": "name",
        "pagination": "offset",
        "cursor_param": "offset",
        "page_size_param": "limit",
        "page_size": 60,
        "auth_credential": "api_token",
        "requests_per_s": 5.0,
    }


def ebay_connector(region: str, inbox: Path) -> dict[str, Any]:
    """Describe eBay's Taxonomy API (nested tree) and Browse API (items by offset)."""
    marketplace_id, tree_id = EBAY_MARKETPLACES[region]
    return {
        "base_url": "https://api.ebay.com",
        "headers": {"X-EBAY-C-MARKETPLACE-ID": marketplace_id},
        "categories_path": f"/commerce/taxonomy/v1/category_tree/{tree_id}",
        "tree_shape": "nested",
        "categories_key": "rootCategoryNode",
        "children_field": "childCategoryTreeNodes",
        "category_id_field": "category.categoryId",
        "category_name_field": "category.categoryName",
        "products_path": "/buy/browse/v1/item_summary/search",
        "products_params": {"category_ids": "{category_id}"},
        "products_key": "itemSummaries",
        "product_id_field": "itemId",
        "pagination": "offset",
        "cursor_param": "offset",
        "page_size_param": "limit",
        "page_size": 200,
        "auth_credential": "api_token",
        "requests_per_s": 5.0,
    }


def amazon_connector(region: str, inbox: Path) -> dict[str, Any]:
    """Describe the Selling Partner API's Catalog Items search by browse node.

    The SP-API publishes the browse tree only as a report, so the tree comes from a
    CSV converted from that report into the store's inbox.
    """
    # NOTE: searchCatalogItems documents classificationIds as a filter of keyword
    # searches, so Amazon may reject these requests until keywords are added per category.
    north_america = region == "us"
    host = "sellingpartnerapi-na" if north_america else "sellingpartnerapi-eu"
    return {
        "base_url": f"https://{host}.amazon.com",
        "categories_file": str(inbox / "categories.csv"),
        "products_path": "/catalog/2022-04-01/items",
        "products_params": {
            "marketplaceIds": AMAZON_MARKETPLACE_IDS[region],
            "classificationIds": "{category_id}",
            "includedData": "summaries",
        },
        "products_key": "items",
        "product_id_field": "asin",
        "product_title_field": "summaries.0.itemName",
        "pagination": "cursor",
        "cursor_param": "pageToken",
        "next_cursor_field": "pagination.nextToken",
        "page_size_param": "pageSize",
        "page_size": 20,
        "auth_credential": "api_token",
        "auth_header": "x-amz-access-token",
        "auth_scheme": "",
        "requests_per_s": 2.0,
    }


CONNECTOR_PRESETS = {
    "allegro": allegro_connector,
    "ebay": ebay_connector,
    "amazon": amazon_connector,
}

# Large stages run in containers: crawl and train on the CPU pool, embed on the GPU pool.
PRESET_DEPLOYMENTS = {
    "crawl": {
        "work_pool": "mkt-docker-cpu",
        "interval_h": 6,
        "after_previous_stage": False,
    },
    "embed": {"work_pool": "mkt-docker-gpu"},
    "train": {"work_pool": "mkt-docker-cpu", "cron": "0 3 * * 0"},
    "evaluate": {"work_pool": "mkt-process"},
}


def marketplace_of(store_id: str) -> str | None:
    """Return the preset marketplace a store id names (`amazon`, `amazon-de`), or None."""
    marketplace, _, region = store_id.partition("-")
    preset = MARKETPLACES.get(marketplace)
    if preset is None or (region and region not in preset["regions"]):
        return None
    return marketplace


def build_preset_config(store_id: str, home: Path) -> dict[str, Any]:
    """Return the preset config document of a store id such as `allegro-pl`.

    Raises:
        ConfigError: if the id names no preset marketplace and region.
    """
    marketplace = marketplace_of(store_id)
    if marketplace is None:
        known = ", ".join(
            f"{name} ({'/'.join(preset['regions'])})"
            for name, preset in MARKETPLACES.items()
        )
        raise ConfigError(
            f"No preset for store {store_id!r} (presets: {known}; use e.g. amazon-de). "
            f"Pass a config instead: mkt add-store {store_id} --config FILE"
        )
    inbox = home / "inbox" / store_id
    # NOTE: the API shapes come from the marketplaces' public docs and were not tried
    # against the live APIs.
    # A store id without a region gets the marketplace's first listed region.
    region = store_id.partition("-")[2] or MARKETPLACES[marketplace]["regions"][0]
    return {
        "store_id": store_id,
        "marketplace": marketplace,
        "connector": {
            "kind": "http",
            "options": CONNECTOR_PRESETS[marketplace](region, inbox),
        },
        "credentials": {"api_token": {"env": MARKETPLACES[marketplace]["token_env"]}},
        "deployments": copy.deepcopy(PRESET_DEPLOYMENTS),
    }


def apply_overrides(document: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of a config document with `key.sub=value` overrides applied.

    Values are parsed as YAML scalars, so `k=5` is a number and `flag=true` a boolean.

    Raises:
        ConfigError: if an override has no `=` or walks into a value that is not a mapping.
    """
    result = copy.deepcopy(document)
    for override in overrides:
        key, separator, raw_value = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(
                f"Invalid --set {override!r}: expected KEY=VALUE, e.g. classifier.k=5"
            )
        parts = key.strip().split(".")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(
                    f"Invalid --set {override!r}: {part!r} is not a section of the config."
                )
        target[parts[-1]] = yaml.safe_load(raw_value) if raw_value else ""
    return result
