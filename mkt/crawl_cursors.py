"""Resumable crawls: per-category cursors committed with the products they cover.

A crawl walks the due categories of a store page by page. Each page's products, its
quarantined rows and the category's new cursor are written in one transaction, so a
crawl killed at any point resumes from its last commit with nothing lost or duplicated.
"""

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from mkt.catalog import (
    IngestResult,
    quarantined_row,
    refresh_category_counts,
    stage_product_batch,
)
from mkt.database import (
    Category,
    CrawlCursor,
    open_session,
    utc_now,
)
from mkt.errors import ConnectorError
from mkt.stores.connectors import (
    PagedConnector,
    ProductPage,
    ProductRecord,
    RejectedRow,
)

logger = logging.getLogger(__name__)


class StopRequest:
    """A request to stop a crawl after the page in hand, set by signals or cancellation."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = threading.Event()

    def request(self, reason: str) -> None:
        """Ask the crawl to checkpoint and stop; the first reason given is kept."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def is_requested(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a stop request while the block runs.

    Python lets only the main thread set signal handlers. In other threads the block
    keeps the old handlers, so a signal there ends the crawl as a hard kill would.
    """
    if threading.current_thread() is not threading.main_thread():
        logger.debug("Crawl runs outside the main thread; signal handlers unchanged")
        yield
        return

    def handle(signal_number, _frame) -> None:
        stop.request(signal.Signals(signal_number).name)

    previous = {
        number: signal.signal(number, handle)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class CrawlLimits:
    """How long a crawl may run and when a finished category is due again."""

    window_s: float
    revisit_after_s: float
    target: int


@dataclass
class CrawlResult:
    """Counts of a resumable crawl and its stop reason: done, window or a signal name."""

    stop_reason: str = "done"
    page_count: int = 0
    category_count: int = 0
    completed_category_count: int = 0
    ingest: IngestResult = field(default_factory=IngestResult)


@dataclass(frozen=True)
class DueCategory:
    """A category to crawl, with the cursor its current pass stopped at."""

    external_id: str
    cursor: str | None
    product_count: int
    pass_completed_at: datetime | None


def plan_crawl(
    engine: Engine, store_id: str, limits: CrawlLimits, now: datetime
) -> list[DueCategory]:
    """Return the due leaf categories: incomplete first, then the least recently crawled.

    A category is due while a pass over it is unfinished, before its first pass, and
    once its last pass is older than `limits.revisit_after_s`.
    """
    stale_before = now - timedelta(seconds=limits.revisit_after_s)
    with open_session(engine) as session:
        categories = session.exec(
            select(Category).where(
                Category.store_id == store_id,
                col(Category.removed_at).is_(None),
                col(Category.is_leaf).is_(True),
            )
        ).all()
        cursors = {
            row.category_external_id: row for row in load_cursors(session, store_id)
        }

    due = []
    for category in categories:
        row = cursors.get(category.external_id)
        completed_at = None if row is None else as_utc(row.pass_completed_at)
        is_in_pass = row is not None and row.pass_started_at is not None
        if is_in_pass or completed_at is None or completed_at < stale_before:
            cursor = row.cursor if is_in_pass else None
            due.append(
                DueCategory(
                    category.external_id, cursor, category.product_count, completed_at
                )
            )
    epoch = datetime.min.replace(tzinfo=now.tzinfo)
    due.sort(
        key=lambda item: (
            item.product_count >= limits.target,
            item.pass_completed_at or epoch,
            item.product_count,
            item.external_id,
        )
    )
    return due


def load_cursors(session: Session, store_id: str) -> list[CrawlCursor]:
    """Return a store's crawl cursors."""
    return list(
        session.exec(select(CrawlCursor).where(CrawlCursor.store_id == store_id))
    )


def as_utc(moment: datetime | None) -> datetime | None:
    """Attach UTC to a naive timestamp read back from SQLite."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=utc_now().tzinfo)


def crawl_categories(
    engine: Engine,
    store_id: str,
    connector: PagedConnector,
    *,
    limits: CrawlLimits,
    stop: StopRequest,
    clock: Callable[[], float] = time.monotonic,
) -> CrawlResult:
    """Crawl the due categories page by page until done, out of time or asked to stop.

    Every page is committed with its cursor before the next is requested, so stopping
    (or being killed) loses at most the page in flight.
    """
    deadline = clock() + limits.window_s
    refresh_category_counts(engine, store_id)
    result = CrawlResult()
    for category in plan_crawl(engine, store_id, limits, utc_now()):
        result.category_count += 1
        reason = crawl_category(
            engine,
            store_id,
            connector,
            category,
            result,
            lambda: check_stop(stop, clock, deadline),
        )
        if reason is not None:
            result.stop_reason = reason
            break
        result.completed_category_count += 1
    refresh_category_counts(engine, store_id)
    return result


def check_stop(
    stop: StopRequest, clock: Callable[[], float], deadline: float
) -> str | None:
    """Return why the crawl must stop now, or None to go on."""
    if stop.is_requested:
        return stop.reason
    if clock() >= deadline:
        return "window"
    return None


def crawl_category(
    engine: Engine,
    store_id: str,
    connector: PagedConnector,
    category: DueCategory,
    result: CrawlResult,
    should_stop: Callable[[], str | None],
) -> str | None:
    """Crawl one category from its cursor to its last page; return a stop reason if cut short."""
    cursor = category.cursor
    while True:
        reason = should_stop()
        if reason is not None:
            return reason
        page = connector.read_product_page(category.external_id, cursor)
        save_page(engine, store_id, category.external_id, cursor, page, result.ingest)
        result.page_count += 1
        cursor = page.next_cursor
        if cursor is None:
            return None


def save_page(
    engine: Engine,
    store_id: str,
    category_id: str,
    cursor: str | None,
    page: ProductPage,
    result: IngestResult,
) -> None:
    """Commit a page's products, its rejected rows and the category's next cursor together.

    Raises:
        ConnectorError: if another crawl moved this category's cursor meanwhile.
    """
    products, seen_ids = [], set()
    for row in page.rows:
        if not isinstance(row, ProductRecord):
            result.rejected[row.reason] += 1
        elif row.external_id in seen_ids:
            result.duplicates += 1
        else:
            seen_ids.add(row.external_id)
            products.append(row)

    now = utc_now()
    with open_session(engine) as session:
        row = advance_cursor(
            session, store_id, category_id, cursor, page.next_cursor, now
        )
        session.add(row)
        stage_product_batch(session, store_id, products, result)
        session.add_all(
            quarantined_row(store_id, rejected)
            for rejected in page.rows
            if isinstance(rejected, RejectedRow)
        )
        session.commit()


def advance_cursor(
    session: Session,
    store_id: str,
    category_id: str,
    cursor: str | None,
    next_cursor: str | None,
    now: datetime,
) -> CrawlCursor:
    """Move a category's cursor from `cursor` to `next_cursor` within the session.

    Raises:
        ConnectorError: if the stored cursor is no longer `cursor`, which means a second
            crawl of the store ran at the same time.
    """
    row = session.exec(
        select(CrawlCursor)
        .where(
            CrawlCursor.store_id == store_id,
            CrawlCursor.category_external_id == category_id,
        )
        .with_for_update()
    ).first()
    if row is None:
        row = CrawlCursor(store_id=store_id, category_external_id=category_id)
    stored = row.cursor if row.pass_started_at is not None else None
    if stored != cursor:
        raise ConnectorError(
            f"Store {store_id!r}: the cursor of category {category_id!r} moved from "
            f"{cursor!r} to {stored!r} during this crawl, so another crawl of the store "
            "is running. Run one crawl per store at a time."
        )

    if cursor is None:
        row.pass_started_at, row.page_count = now, 0
    row.page_count += 1
    row.cursor, row.updated_at = next_cursor, now
    if next_cursor is None:
        row.pass_started_at, row.pass_completed_at = None, now
    return row


def summarise_rejections(rejected: Counter) -> str:
    """Render rejection counts as `3 empty title, 1 not an object`."""
    return ", ".join(f"{count} {reason}" for reason, count in rejected.items())
