"""Connectors read a store's category tree and products from a source.

Every connector turns its source into `CategoryRecord`s and `ProductRecord`s; rows it
cannot use become `RejectedRow`s with a reason, so nothing is dropped silently.

A connector is a class with an `options_model` class attribute (a pydantic model of its
options) and a constructor `(options, secrets)`, where `secrets` maps credential names
of the store config to their values. Besides the built-in `file` and `http` kinds, any
installed package can add a kind through the `mkt.connectors` entry points group:

    [project.entry-points."mkt.connectors"]
    shopify = "mkt_shopify:ShopifyConnector"
"""

import logging
from collections.abc import Iterator, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from mkt.errors import ConfigError
from mkt.stores.connectors.file import FileConnector
from mkt.stores.connectors.http import HttpConnector
from mkt.stores.connectors.records import (
    CategoryRecord,
    ProductPage,
    ProductRecord,
    RejectedRow,
)

logger = logging.getLogger(__name__)

ENTRY_POINTS_GROUP = "mkt.connectors"
BUILTIN_CONNECTORS: dict[str, type] = {"file": FileConnector, "http": HttpConnector}

__all__ = [
    "CategoryRecord",
    "Connector",
    "PagedConnector",
    "ProductPage",
    "ProductRecord",
    "RejectedRow",
    "connector_classes",
    "connector_options_model",
    "create_connector",
]


class Connector(Protocol):
    """Interface of a connector, as the crawl stage uses it."""

    def read_category_tree(self) -> list[CategoryRecord]:
        """Return every category of the store's tree."""

    def iter_products(self) -> Iterator[ProductRecord | RejectedRow]:
        """Yield the store's products, and a `RejectedRow` for each row that is unusable."""


@runtime_checkable
class PagedConnector(Protocol):
    """A connector that lists products page by page per category, so crawls can resume."""

    def read_category_tree(self) -> list[CategoryRecord]:
        """Return every category of the store's tree."""

    def read_product_page(self, category_id: str, cursor: str | None) -> ProductPage:
        """Return the page of a category that `cursor` points at; None is the first page."""


@cache
def connector_classes() -> dict[str, type]:
    """Return the connector classes by kind: the built-in ones and the installed plugins.

    A plugin cannot replace a built-in kind. A plugin that fails to load is skipped and
    logged as an error, so one broken package does not stop every store.
    """
    classes = dict(BUILTIN_CONNECTORS)
    for entry_point in entry_points(group=ENTRY_POINTS_GROUP):
        if entry_point.name in BUILTIN_CONNECTORS:
            continue
        try:
            classes[entry_point.name] = entry_point.load()
        except Exception:  # a plugin may fail in any way while importing
            logger.exception(
                "Connector plugin %r (%s) failed to load and is unavailable",
                entry_point.name,
                entry_point.value,
            )
    return classes


def connector_options_model(kind: str) -> type[BaseModel] | None:
    """Return the options model of a connector kind, or None if no connector has it."""
    connector_class = connector_classes().get(kind)
    return None if connector_class is None else connector_class.options_model


def create_connector(
    kind: str, options: dict[str, Any], secrets: Mapping[str, str] | None = None
) -> Connector:
    """Build the connector of a kind from its options and the store's credential values.

    Raises:
        ConfigError: if no built-in or installed connector has this kind.
    """
    connector_class = connector_classes().get(kind)
    if connector_class is None:
        known = ", ".join(sorted(connector_classes()))
        raise ConfigError(
            f"Unknown connector kind {kind!r} (known: {known}). Fix connector.kind in "
            f"the store config, or install the package that provides {kind!r}."
        )
    options_model = connector_class.options_model.model_validate(options)
    return connector_class(options_model, dict(secrets or {}))
