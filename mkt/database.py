"""The product database: stores, category trees, products and quarantined rows.

SQLite by default (WAL mode, busy timeout); any SQLAlchemy URL works, PostgreSQL included.
"""

import logging
from datetime import UTC, datetime

from sqlalchemy import Column, Engine, Text, UniqueConstraint, event, text
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine

logger = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


class Store(SQLModel, table=True):
    """A registered store and the JSON of its validated config."""

    store_id: str = Field(primary_key=True, max_length=63)
    marketplace: str
    config_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)


class Category(SQLModel, table=True):
    """One category of a store's tree, with its crawl progress."""

    __table_args__ = (UniqueConstraint("store_id", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    external_id: str
    parent_external_id: str | None = None
    name: str = Field(sa_column=Column(Text, nullable=False))
    path: str = Field(sa_column=Column(Text, nullable=False))
    depth: int = 1
    is_leaf: bool = True
    product_count: int = 0
    first_seen_at: datetime = Field(default_factory=utc_now)
    last_seen_at: datetime = Field(default_factory=utc_now)
    removed_at: datetime | None = None
    products_updated_at: datetime | None = None


class CategoryChange(SQLModel, table=True):
    """One change seen when a store's category tree was synced."""

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    external_id: str
    change: str = Field(description="added, removed, renamed, moved or redirected")
    old_value: str | None = Field(default=None, sa_column=Column(Text))
    new_value: str | None = Field(default=None, sa_column=Column(Text))
    changed_at: datetime = Field(default_factory=utc_now)


class Product(SQLModel, table=True):
    """One product listing of a store, unique by the store and its external id."""

    __table_args__ = (UniqueConstraint("store_id", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    external_id: str
    title: str = Field(sa_column=Column(Text, nullable=False))
    category_external_id: str = Field(index=True)
    first_seen_at: datetime = Field(default_factory=utc_now)
    last_seen_at: datetime = Field(default_factory=utc_now)


class CrawlCursor(SQLModel, table=True):
    """Where a store's crawl of one category stands, committed with the products it covers.

    `cursor` is the connector's token for the next page; None with `pass_started_at` set
    means the current pass has not fetched a page yet. A finished pass clears the cursor
    and sets `pass_completed_at`, so the next pass starts from the first page again.
    """

    __table_args__ = (UniqueConstraint("store_id", "category_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    category_external_id: str
    cursor: str | None = Field(default=None, sa_column=Column(Text))
    page_count: int = Field(
        default=0, description="Pages committed in the current pass."
    )
    pass_started_at: datetime | None = None
    pass_completed_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utc_now)


class QuarantinedRow(SQLModel, table=True):
    """A source row the crawl could not use, kept with the reason for an operator to inspect."""

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    source: str = Field(sa_column=Column(Text, nullable=False))
    position: int
    reason: str
    raw: str = Field(sa_column=Column(Text, nullable=False))
    quarantined_at: datetime = Field(default_factory=utc_now)


def create_database_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """Create an engine for the product database and its tables if missing.

    SQLite connections get WAL mode, so readers and the crawl's writer do not block each
    other, and a busy timeout, so a second writer waits for the lock before failing.
    """
    if url.startswith("sqlite"):
        engine = _create_sqlite_engine(url, busy_timeout_s)
        SQLModel.metadata.create_all(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True)
        _create_tables_serialised(engine)
    return engine


# Any fixed 64-bit number works; it only has to be the same in every mkt process.
_SCHEMA_LOCK_KEY = 0x6D6B745F736368


def _create_tables_serialised(engine: Engine) -> None:
    """Create missing tables while holding a PostgreSQL advisory lock.

    Two processes that both see a table missing would both run CREATE TABLE, and the
    second would fail on the catalog's unique index. The lock makes them take turns.
    """
    with engine.begin() as connection:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY}
        )
        SQLModel.metadata.create_all(connection)


def _create_sqlite_engine(url: str, busy_timeout_s: float) -> Engine:
    is_memory = url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
        poolclass=StaticPool if is_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _set_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        if not is_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def open_session(engine: Engine) -> Session:
    """Open a session whose objects stay readable after commit."""
    return Session(engine, expire_on_commit=False)


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    """Return one shared engine per database URL, creating tables on first use."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = create_database_engine(url, busy_timeout_s=busy_timeout_s)
        _ENGINES[url] = engine
    return engine
