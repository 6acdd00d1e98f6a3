"""Connectors read a store's category tree and products from a source.

Every connector turns its source into `CategoryRecord`s and `ProductRecord`s; rows it
cannot use become `RejectedRow`s with a reason, so nothing is dropped silently.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from mkt.stores.connectors.file import FileConnector, FileConnectorOptions
from mkt.stores.connectors.records import CategoryRecord, ProductRecord, RejectedRow

CONNECTOR_OPTIONS: dict[str, type[BaseModel]] = {"file": FileConnectorOptions}

__all__ = [
    "CONNECTOR_OPTIONS",
    "CategoryRecord",
    "Connector",
    "ProductRecord",
    "RejectedRow",
    "create_connector",
]


class Connector(Protocol):
    """Interface of a connector, as the crawl stage uses it."""

    def read_category_tree(self) -> list[CategoryRecord]:
        """Return every category of the store's tree."""

    def iter_products(self) -> Iterator[ProductRecord | RejectedRow]:
        """Yield the store's products, and a `RejectedRow` for each row that is unusable."""


@dataclass(frozen=True)
class _Factory:
    options_model: type[BaseModel]
    connector_class: type


_FACTORIES = {"file": _Factory(FileConnectorOptions, FileConnector)}


def create_connector(kind: str, options: dict[str, Any]) -> Connector:
    """Build the connector of a kind from its validated options."""
    factory = _FACTORIES[kind]
    return factory.connector_class(factory.options_model.model_validate(options))
