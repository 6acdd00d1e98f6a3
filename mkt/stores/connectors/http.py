"""The http connector: category trees and product listings from paginated JSON APIs."""

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from mkt.errors import ConfigError, ConnectorError
from mkt.stores.connectors.file import (
    product_from_row,
    read_category_csv,
    text_or_empty,
)
from mkt.stores.connectors.records import (
    CategoryRecord,
    ProductPage,
    ProductRecord,
    RejectedRow,
)
from mkt.titles import clean_title

logger = logging.getLogger(__name__)

RETRIED_STATUS_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpConnectorOptions(BaseModel):
    """Options of the http connector: endpoints, response fields, paging and limits.

    Field options are dotted paths into the JSON (`paging.next`); endpoint paths are
    relative to `base_url` and may contain `{category_id}`.
    """

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(pattern=r"^https?://", description="API root URL.")
    categories_path: str = Field(default="/categories", description="Tree endpoint.")
    categories_file: str | None = Field(
        default=None,
        description="Category tree CSV (id, parent_id, name) read instead of the tree "
        "endpoint, for APIs that publish their tree only as a report.",
    )
    tree_shape: Literal["flat", "nested", "by_parent"] = Field(
        default="flat",
        description=(
            "flat: one list of categories with parent ids; nested: nodes with child "
            "lists; by_parent: the endpoint lists the children of `parent_param`."
        ),
    )
    categories_key: str = Field(
        default="categories",
        description="Path to the category list, or to the root node when nested.",
    )
    category_id_field: str = "id"
    category_name_field: str = "name"
    category_parent_field: str = "parent_id"
    children_field: str = Field(default="children", description="Child list (nested).")
    parent_param: str = Field(default="parent_id", description="Query (by_parent).")
    redirects_path: str | None = Field(
        default=None,
        description="Endpoint listing removed categories and their successors, if any.",
    )
    redirects_key: str = Field(default="redirects", description="Path to the list.")
    redirect_from_field: str = "id"
    redirect_to_field: str = "redirect_to"
    products_path: str = Field(
        default="/categories/{category_id}/products",
        description="Product listing endpoint of one category.",
    )
    products_params: dict[str, str] = Field(
        default_factory=dict,
        description="Extra query parameters; values may contain {category_id}.",
    )
    products_key: str = Field(default="products", description="Path to the items.")
    product_id_field: str = "id"
    product_title_field: str = "title"
    pagination: Literal["cursor", "page", "offset"] = Field(
        default="cursor",
        description=(
            "cursor: the response names the next page (a token or a URL); page: "
            "numbered pages; offset: item offsets. page and offset end on a short page."
        ),
    )
    cursor_param: str = Field(
        default="cursor", description="Query parameter of the cursor, page or offset."
    )
    next_cursor_field: str = Field(
        default="next_cursor", description="Path to the next cursor (cursor paging)."
    )
    first_page: int = Field(default=1, ge=0, description="Number of the first page.")
    page_size: int = Field(default=50, ge=1, le=10_000)
    page_size_param: str = "limit"
    auth_credential: str | None = Field(
        default=None,
        description="Name of the store credential sent in `auth_header`; never logged.",
    )
    auth_header: str = "Authorization"
    auth_scheme: str = Field(
        default="Bearer", description="Prefix of the credential; empty for none."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers.")
    timeout_s: float = Field(default=30.0, gt=0, description="Per request, seconds.")
    max_retries: int = Field(default=5, ge=0, description="Retries per request.")
    backoff_s: float = Field(
        default=1.0, ge=0, description="First retry delay; doubles on each retry."
    )
    max_backoff_s: float = Field(default=60.0, ge=0, description="Longest delay.")
    requests_per_s: float = Field(
        default=5.0, gt=0, description="Rate limit of this store's requests."
    )


class RateLimiter:
    """Space calls at least `1 / requests_per_s` seconds apart."""

    def __init__(self, requests_per_s: float) -> None:
        self.interval_s = 1.0 / requests_per_s
        self.next_at = 0.0

    def wait(self) -> None:
        """Sleep until the next call is allowed, then reserve the slot after it."""
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval_s


class MalformedResponse(ValueError):
    """A response whose body is not the JSON the options describe."""


def field_at(document: Any, path: str) -> Any:
    """Return the value at a dotted path of a JSON document, or None if it is absent."""
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


class HttpConnector:
    """Read a store from a paginated JSON API with timeouts, retries and a rate limit."""

    options_model = HttpConnectorOptions

    def __init__(
        self, options: HttpConnectorOptions, secrets: Mapping[str, str] | None = None
    ) -> None:
        self.options = options
        self.rate_limiter = RateLimiter(options.requests_per_s)
        self.client = httpx.Client(
            base_url=options.base_url,
            headers=self._build_headers(dict(secrets or {})),
            timeout=options.timeout_s,
        )

    def _build_headers(self, secrets: dict[str, str]) -> dict[str, str]:
        headers = {"Accept": "application/json", **self.options.headers}
        name = self.options.auth_credential
        if name is None:
            return headers
        if not secrets.get(name):
            raise ConfigError(
                f"The http connector needs credential {name!r}, which is missing or "
                f"empty. Add it under credentials.{name} in the store config and set it "
                "where the crawl runs."
            )
        scheme = self.options.auth_scheme
        headers[self.options.auth_header] = (
            f"{scheme} {secrets[name]}" if scheme else secrets[name]
        )
        return headers

    def read_category_tree(self) -> list[CategoryRecord]:
        """Return every category of the store's tree.

        Raises:
            ConnectorError: if the endpoint keeps failing or returns no category list.
        """
        if self.options.categories_file is not None:
            return read_category_csv(Path(self.options.categories_file))
        shape = self.options.tree_shape
        if shape == "nested":
            root = self.get_json(self.options.categories_path, {}, "categories")
            records: list[CategoryRecord] = []
            self._walk_nested(
                field_at(root, self.options.categories_key), None, records
            )
            return records
        if shape == "by_parent":
            return self._walk_by_parent()
        return [
            self._category_of(item, self._parent_of(item))
            for item in self._category_list({})
        ]

    def _category_list(self, params: dict[str, str]) -> list[dict]:
        key = self.options.categories_key
        document = self.get_json(
            self.options.categories_path, params, "categories", key
        )
        return field_at(document, key)

    def _parent_of(self, item: dict) -> str | None:
        return text_or_empty(field_at(item, self.options.category_parent_field)) or None

    def _category_of(self, item: dict, parent_id: str | None) -> CategoryRecord:
        external_id = text_or_empty(field_at(item, self.options.category_id_field))
        name = clean_title(field_at(item, self.options.category_name_field))
        return CategoryRecord(external_id, name or external_id, parent_id)

    def _walk_nested(
        self, node: Any, parent_id: str | None, records: list[CategoryRecord]
    ) -> None:
        nodes = node if isinstance(node, list) else [node]
        for item in nodes:
            if not isinstance(item, dict):
                raise ConnectorError(
                    f"Category tree from {self.options.base_url!r} has a node that is "
                    f"not an object: {str(item)[:80]!r}. Check options.categories_key "
                    "and options.children_field."
                )
            record = self._category_of(item, parent_id)
            records.append(record)
            children = field_at(item, self.options.children_field) or []
            self._walk_nested(children, record.external_id, records)

    def _walk_by_parent(self) -> list[CategoryRecord]:
        records: list[CategoryRecord] = []
        pending: list[str | None] = [None]
        while pending:
            parent_id = pending.pop()
            params = {} if parent_id is None else {self.options.parent_param: parent_id}
            for item in self._category_list(params):
                record = self._category_of(item, parent_id)
                records.append(record)
                pending.append(record.external_id)
        return records

    def read_category_redirects(self) -> dict[str, str]:
        """Return the successor of each removed category; empty without `redirects_path`.

        Raises:
            ConnectorError: if the endpoint keeps failing or returns no list.
        """
        options = self.options
        if options.redirects_path is None:
            return {}
        document = self.get_json(
            options.redirects_path, {}, "redirects", options.redirects_key
        )
        redirects = {}
        for item in field_at(document, options.redirects_key):
            source = text_or_empty(field_at(item, options.redirect_from_field))
            target = text_or_empty(field_at(item, options.redirect_to_field))
            if source and target:
                redirects[source] = target
        return redirects

    def read_product_page(self, category_id: str, cursor: str | None) -> ProductPage:
        """Return one page of a category's listing and the cursor of the next page.

        Raises:
            ConnectorError: if the endpoint keeps failing or returns malformed pages.
        """
        options = self.options
        path = options.products_path.format(category_id=category_id)
        params = {
            key: value.format(category_id=category_id)
            for key, value in options.products_params.items()
        }
        params[options.page_size_param] = str(options.page_size)
        if options.pagination == "cursor" and cursor and is_url(cursor):
            path, params = self._checked_next_url(cursor), {}
        elif options.pagination == "cursor" and cursor:
            params[options.cursor_param] = cursor
        elif options.pagination == "page":
            params[options.cursor_param] = cursor or str(options.first_page)
        elif options.pagination == "offset":
            params[options.cursor_param] = cursor or "0"

        what = f"products of category {category_id!r}"
        document = self.get_json(path, params, what, options.products_key)
        items = field_at(document, options.products_key)
        rows = self._rows_of(items, category_id, path)
        return ProductPage(rows, self._next_cursor(document, params, len(items)))

    def _rows_of(
        self, items: list, category_id: str, source: str
    ) -> list[ProductRecord | RejectedRow]:
        rows: list[ProductRecord | RejectedRow] = []
        for position, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                rows.append(RejectedRow(source, position, "not an object", str(item)))
                continue
            row = {
                "title": field_at(item, self.options.product_title_field),
                "category_id": category_id,
                "product_id": field_at(item, self.options.product_id_field),
            }
            rows.append(product_from_row(row, source, position))
        return rows

    def _next_cursor(
        self, document: Any, params: dict[str, str], item_count: int
    ) -> str | None:
        options = self.options
        if options.pagination == "cursor":
            return text_or_empty(field_at(document, options.next_cursor_field)) or None
        if item_count < options.page_size:
            return None
        step = 1 if options.pagination == "page" else options.page_size
        return str(int(params[options.cursor_param]) + step)

    def _checked_next_url(self, url: str) -> str:
        # The auth header goes with every request, so a next link may not leave the API.
        if urlsplit(url).netloc != urlsplit(self.options.base_url).netloc:
            raise ConnectorError(
                f"Next page link {url!r} leaves the API host of "
                f"{self.options.base_url!r}; it is not followed, so the credential "
                "stays with the API. Check options.next_cursor_field."
            )
        return url

    def iter_products(self) -> Iterator[ProductRecord | RejectedRow]:
        """Yield every product of every leaf category, page by page, without resuming."""
        tree = self.read_category_tree()
        parents = {record.parent_id for record in tree}
        for record in tree:
            if record.external_id in parents:
                continue
            cursor = None
            while True:
                page = self.read_product_page(record.external_id, cursor)
                yield from page.rows
                cursor = page.next_cursor
                if cursor is None:
                    break

    def get_json(
        self, path: str, params: dict[str, str], what: str, list_key: str | None = None
    ) -> Any:
        """GET a JSON document, retrying timeouts, 429s, 5xx and malformed bodies.

        With `list_key`, a body without a list at that path counts as malformed.

        Raises:
            ConnectorError: on another 4xx, or when the retries are used up.
        """
        options = self.options
        for attempt in range(options.max_retries + 1):
            self.rate_limiter.wait()
            try:
                return self._get_once(path, params, list_key)
            except (httpx.TransportError, MalformedResponse) as exc:
                failure, retry_after_s = describe_failure(exc), None
            except RetriedStatus as exc:
                failure, retry_after_s = str(exc), exc.retry_after_s
            if attempt == options.max_retries:
                break
            delay_s = min(options.max_backoff_s, options.backoff_s * 2**attempt)
            delay_s = max(delay_s, retry_after_s or 0.0)
            logger.warning(
                "Request for %s failed (%s); retry %d of %d in %.2f s",
                what,
                failure,
                attempt + 1,
                options.max_retries,
                delay_s,
            )
            time.sleep(delay_s)
        raise ConnectorError(
            f"Request for {what} at {options.base_url!r} failed {options.max_retries + 1} "
            f"times, last with {failure}. Check that the API is up, or raise "
            "connector.options.max_retries or timeout_s."
        )

    def _get_once(self, path: str, params: dict[str, str], list_key: str | None) -> Any:
        response = self.client.get(path, params=params)
        if response.status_code in RETRIED_STATUS_CODES:
            raise RetriedStatus(response)
        if response.status_code >= 400:
            hint = (
                "Check the store's credential."
                if response.status_code in (401, 403)
                else "Check the connector options."
            )
            raise ConnectorError(
                f"GET {response.request.url.path!r} returned HTTP "
                f"{response.status_code}. {hint}"
            )
        try:
            document = response.json()
        except ValueError as exc:
            raise MalformedResponse(f"body is not JSON: {exc}") from exc
        if list_key is not None and not isinstance(field_at(document, list_key), list):
            raise MalformedResponse(f"no list at {list_key!r}")
        return document

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()


class RetriedStatus(Exception):
    """An HTTP status worth retrying, with the delay the server asked for."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        retry_after = response.headers.get("Retry-After", "")
        self.retry_after_s = float(retry_after) if retry_after.isdigit() else None


def describe_failure(exc: Exception) -> str:
    """Name a failed request's error without the request's headers."""
    return f"{type(exc).__name__}: {exc}"[:200]


def is_url(cursor: str) -> bool:
    """Return whether a cursor is a whole next-page URL rather than a token."""
    return cursor.startswith(("http://", "https://"))
