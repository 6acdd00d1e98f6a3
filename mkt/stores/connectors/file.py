"""The file connector: category trees and products from CSV, JSON Lines or Parquet files."""

import hashlib
import io
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mkt.errors import ConnectorError
from mkt.stores.connectors.records import CategoryRecord, ProductRecord, RejectedRow
from mkt.titles import MAX_TITLE_CHARS, clean_title

logger = logging.getLogger(__name__)

CHUNK_ROWS = 50_000
FileFormat = Literal["auto", "csv", "jsonl", "parquet"]
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}


class FileConnectorOptions(BaseModel):
    """Options of the file connector."""

    model_config = ConfigDict(extra="forbid")

    products: str = Field(
        min_length=1, description="Products file (.csv, .jsonl, .parquet)."
    )
    categories: str | None = Field(
        default=None,
        description="Category tree CSV with columns id, parent_id, name; "
        "when absent the tree is derived from the products' category_path column.",
    )
    format: FileFormat = Field(default="auto", description="Products file format.")
    path_separator: str = Field(default=" > ", min_length=1)


class FileConnector:
    """Read a store from local files."""

    options_model = FileConnectorOptions

    def __init__(
        self, options: FileConnectorOptions, secrets: Mapping[str, str] | None = None
    ) -> None:
        self.options = options
        self.products_path = Path(options.products)

    def read_category_tree(self) -> list[CategoryRecord]:
        """Return the category tree from the categories CSV, or derived from category paths.

        Raises:
            ConnectorError: if a file is missing or lacks the needed columns.
        """
        if self.options.categories:
            return read_category_csv(Path(self.options.categories))
        return self._derive_tree_from_paths()

    def iter_products(self) -> Iterator[ProductRecord | RejectedRow]:
        """Yield each product row, or a rejection with its reason.

        Raises:
            ConnectorError: if the file is missing, unreadable or lacks the needed columns.
        """
        position = 0
        for chunk in self._read_product_chunks():
            for row in chunk.itertuples(index=False):
                position += 1
                yield product_from_row(row._asdict(), self.options.products, position)

    def _derive_tree_from_paths(self) -> list[CategoryRecord]:
        separator = self.options.path_separator
        records: dict[str, CategoryRecord] = {}
        for chunk in self._read_product_chunks():
            if "category_path" not in chunk.columns:
                raise ConnectorError(
                    f"Products file {self.options.products!r} has no category_path column, so "
                    "no category tree can be derived. Add the column or set connector.options"
                    ".categories to a tree CSV."
                )
            pairs = chunk[["category_id", "category_path"]].drop_duplicates()
            for category_id, category_path in pairs.itertuples(index=False):
                add_path_categories(
                    records, text_or_empty(category_id), category_path, separator
                )
        return list(records.values())

    def _read_product_chunks(self) -> Iterator[pd.DataFrame]:
        path = self.products_path
        if not path.is_file():
            raise ConnectorError(
                f"Products file {str(path)!r} not found. Fix connector.options.products "
                "in the store config."
            )
        file_format = self.options.format
        if file_format == "auto":
            file_format = _SUFFIX_FORMATS.get(path.suffix.lower())
            if file_format is None:
                raise ConnectorError(
                    f"Cannot tell the format of {str(path)!r} from its suffix. Rename it to "
                    ".csv, .jsonl or .parquet, or set connector.options.format."
                )
        try:
            for chunk in read_table_chunks(path, file_format):
                yield with_product_columns(chunk, path)
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise ConnectorError(
                f"Cannot read products file {str(path)!r}: {exc}"
            ) from exc


def read_table_chunks(path: Path, file_format: str) -> Iterator[pd.DataFrame]:
    """Yield a table file in chunks of text columns; invalid UTF-8 becomes U+FFFD."""
    if file_format == "parquet":
        yield pd.read_parquet(path).astype(object)
        return
    text = decode_text(path)
    if file_format == "csv":
        yield from pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS
        )
    else:
        yield from pd.read_json(
            io.StringIO(text), lines=True, dtype=False, chunksize=CHUNK_ROWS
        )


def decode_text(path: Path) -> str:
    """Read a text file as UTF-8, replacing invalid bytes and warning about them."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        logger.warning(
            "File %r is not valid UTF-8: %d invalid byte sequences replaced by U+FFFD",
            str(path),
            text.count("\ufffd"),
        )
        return text


def with_product_columns(chunk: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check a products chunk has a title and a category column; add the missing optional ones."""
    if "title" not in chunk.columns:
        raise ConnectorError(
            f"Products file {str(path)!r} has no 'title' column (columns: "
            f"{', '.join(map(str, chunk.columns))}). Rename the product name column to title."
        )
    if "category_id" not in chunk.columns and "category_path" not in chunk.columns:
        raise ConnectorError(
            f"Products file {str(path)!r} has neither 'category_id' nor 'category_path'. "
            "Add one of them."
        )
    if "category_id" not in chunk.columns:
        chunk = chunk.assign(category_id=chunk["category_path"])
    if "product_id" not in chunk.columns:
        chunk = chunk.assign(product_id="")
    columns = ["title", "category_id", "product_id"]
    if "category_path" in chunk.columns:
        columns.append("category_path")
    return chunk[columns]


def text_or_empty(value: object) -> str:
    """Return a cell as stripped text; None and NaN become an empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def product_from_row(
    row: dict, source: str, position: int
) -> ProductRecord | RejectedRow:
    """Turn one products row into a record, or a rejection saying why it is unusable."""
    raw_title = row.get("title")
    title = clean_title(raw_title)
    category_id = text_or_empty(row.get("category_id"))
    if not title:
        return RejectedRow(source, position, "empty title", repr(raw_title)[:200])
    if not category_id:
        return RejectedRow(source, position, "missing category", title[:200])
    if isinstance(raw_title, str) and len(raw_title) > MAX_TITLE_CHARS:
        logger.debug(
            "Row %d of %r: title cut to %d characters",
            position,
            source,
            MAX_TITLE_CHARS,
        )

    product_id = text_or_empty(row.get("product_id"))
    if not product_id:
        # Without a source id, the same title in the same category is the same product.
        digest = hashlib.sha1(
            f"{category_id}\x1f{title.casefold()}".encode()
        ).hexdigest()
        product_id = f"h-{digest[:20]}"
    return ProductRecord(external_id=product_id, title=title, category_id=category_id)


def add_path_categories(
    records: dict[str, CategoryRecord],
    category_id: str,
    category_path: object,
    separator: str,
) -> None:
    """Add a category and its ancestors, named by the levels of its path, to `records`."""
    levels = [level.strip() for level in text_or_empty(category_path).split(separator)]
    levels = [level for level in levels if level]
    if not levels:
        return
    parent_id = None
    for depth, name in enumerate(levels):
        is_last = depth == len(levels) - 1
        # Ancestors have no id of their own in a products file, so their path is the id.
        external_id = (
            (category_id or separator.join(levels))
            if is_last
            else separator.join(levels[: depth + 1])
        )
        if external_id not in records:
            records[external_id] = CategoryRecord(external_id, name, parent_id)
        parent_id = external_id


def read_category_csv(path: Path) -> list[CategoryRecord]:
    """Read a category tree CSV with columns id (or category_id), parent_id and name.

    Raises:
        ConnectorError: if the file is missing or lacks a needed column.
    """
    if not path.is_file():
        raise ConnectorError(
            f"Category file {str(path)!r} not found. Fix connector.options.categories."
        )
    table = pd.read_csv(
        io.StringIO(decode_text(path)), dtype=str, keep_default_na=False
    )
    if "id" not in table.columns and "category_id" in table.columns:
        table = table.rename(columns={"category_id": "id"})
    missing = [
        column for column in ("id", "parent_id", "name") if column not in table.columns
    ]
    if missing:
        raise ConnectorError(
            f"Category file {str(path)!r} lacks column(s) {', '.join(missing)}; "
            "expected id, parent_id, name."
        )
    return [
        CategoryRecord(
            external_id=text_or_empty(row.id),
            name=clean_title(row.name) or text_or_empty(row.id),
            parent_id=text_or_empty(row.parent_id) or None,
        )
        for row in table.itertuples(index=False)
        if text_or_empty(row.id)
    ]
