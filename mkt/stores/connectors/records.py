"""Plain records that connectors hand to the crawl stage."""

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoryRecord:
    """One node of a category tree as the source describes it."""

    external_id: str
    name: str
    parent_id: str | None = None


@dataclass(frozen=True)
class ProductRecord:
    """One product listing: a title and the category it is listed in."""

    external_id: str
    title: str
    category_id: str


@dataclass(frozen=True)
class RejectedRow:
    """A source row that could not be used, with the reason; the crawl quarantines it."""

    source: str
    position: int
    reason: str
    raw: str


@dataclass(frozen=True)
class ProductPage:
    """One page of a category's product listing and the cursor of the page after it."""

    rows: list[ProductRecord | RejectedRow]
    next_cursor: str | None
