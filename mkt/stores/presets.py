"""Built-in store presets, so `mkt add-store amazon-de` needs no config file."""

import copy
from pathlib import Path
from typing import Any

import yaml

from mkt.errors import ConfigError

# Each marketplace's regions and the environment variable its API token is read from.
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
    # NOTE: presets read exports from the store's inbox folder; they switch to the
    # marketplaces' HTTP APIs once an http connector exists.
    return {
        "store_id": store_id,
        "marketplace": marketplace,
        "connector": {
            "kind": "file",
            "options": {
                "products": str(inbox / "products.csv"),
                "categories": str(inbox / "categories.csv"),
            },
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
