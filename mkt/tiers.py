"""Hot and cold storage tiers for products: current ones hot, history cold.

On SQLite the cold tier is a second database file attached to every connection as
`cold`. On PostgreSQL it is a tablespace: the products table lives in the hot
tablespace and archived products in `product_archive`, partitioned by month of
`last_seen_at`, whose partitions are created in the cold tablespace. Readers call
`tiered_products`, which unions both tiers, so they never need to know where a row is.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    inspect,
    literal_column,
    select,
    text,
    union_all,
)
from sqlalchemy.sql import Subquery

from mkt.database import Product, utc_now

logger = logging.getLogger(__name__)

ARCHIVE_TABLE = "product_archive"
COLD_SCHEMA = "cold"


@dataclass(frozen=True)
class TierSettings:
    """Location of the cold tier: a SQLite file, or PostgreSQL tablespace names."""

    cold_path: Path | None = None
    hot_tablespace: str | None = None
    cold_tablespace: str | None = None


def archive_table(engine: Engine) -> Table:
    """Return the archive table as it is named on the engine's database."""
    schema = COLD_SCHEMA if engine.dialect.name == "sqlite" else None
    return Table(
        ARCHIVE_TABLE,
        MetaData(),
        Column("id", Integer),
        Column("store_id", String(63), nullable=False),
        Column("external_id", String, nullable=False),
        Column("title", Text, nullable=False),
        Column("category_external_id", String, nullable=False),
        Column("first_seen_at", DateTime, nullable=False),
        Column("last_seen_at", DateTime, nullable=False),
        schema=schema,
    )


def enable_tiers(engine: Engine, settings: TierSettings) -> None:
    """Attach or create the cold tier on an engine; safe to call more than once.

    Raises:
        ValueError: if the settings do not fit the engine's database.
    """
    if engine.dialect.name == "sqlite":
        if settings.cold_path is None:
            raise ValueError("a SQLite database needs the cold tier's file path")
        attach_cold_file(engine, settings.cold_path)
    else:
        if not settings.hot_tablespace or not settings.cold_tablespace:
            raise ValueError("PostgreSQL needs hot and cold tablespace names")
        create_partitioned_archive(engine, settings)


def attach_cold_file(engine: Engine, cold_path: Path) -> None:
    """Attach the cold SQLite file to every connection and create its archive table."""
    if getattr(engine, "_mkt_cold_path", None) == str(cold_path):
        return
    cold_path.parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _attach(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"ATTACH DATABASE ? AS {COLD_SCHEMA}", (str(cold_path),))
        cursor.execute(f"PRAGMA {COLD_SCHEMA}.journal_mode=WAL")
        cursor.close()

    # Connections opened before the listener lack the attachment, so they are dropped.
    engine.dispose()
    engine._mkt_cold_path = str(cold_path)
    table = archive_table(engine)
    with engine.begin() as connection:
        table.create(connection, checkfirst=True)
        connection.execute(
            text(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {COLD_SCHEMA}.product_archive_key "
                f"ON {ARCHIVE_TABLE} (store_id, external_id)"
            )
        )


def create_partitioned_archive(engine: Engine, settings: TierSettings) -> None:
    """Move the products table to the hot tablespace and create the partitioned archive."""
    if getattr(engine, "_mkt_tiers", None) == settings:
        return
    with engine.begin() as connection:
        current = connection.execute(
            text("SELECT tablespace FROM pg_tables WHERE tablename = 'product'")
        ).scalar()
        if current != settings.hot_tablespace:
            # Rewrites the table under an exclusive lock, once per new tablespace.
            connection.execute(
                text(f'ALTER TABLE product SET TABLESPACE "{settings.hot_tablespace}"')
            )
        connection.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {ARCHIVE_TABLE} ("
                "id integer, store_id varchar(63) NOT NULL, external_id varchar "
                "NOT NULL, title text NOT NULL, category_external_id varchar NOT NULL, "
                "first_seen_at timestamp NOT NULL, last_seen_at timestamp NOT NULL, "
                "UNIQUE (store_id, external_id, last_seen_at)"
                ") PARTITION BY RANGE (last_seen_at)"
            )
        )
    engine._mkt_tiers = settings


def is_tiered(engine: Engine) -> bool:
    """Return whether the engine's database has an archive tier."""
    schema = COLD_SCHEMA if engine.dialect.name == "sqlite" else None
    if schema is not None and getattr(engine, "_mkt_cold_path", None) is None:
        return False
    return inspect(engine).has_table(ARCHIVE_TABLE, schema=schema)


def tiered_products(engine: Engine) -> Subquery:
    """Return a selectable of both tiers' products, a hot row winning over its archived copy.

    Archiving copies rows to the cold tier before it deletes them from the hot one, and
    a product archived then seen again is inserted hot anew, so both tiers can hold it.
    """
    hot = Product.__table__
    columns = ("store_id", "external_id", "title", "category_external_id")
    hot_select = select(*(hot.c[name] for name in columns))
    if not is_tiered(engine):
        return hot_select.subquery("products")
    cold = archive_table(engine)
    # Only the newest archived copy of a product counts on PostgreSQL, where the
    # archive may hold one row per archiving.
    newest = (
        select(
            cold.c.store_id,
            cold.c.external_id,
            func.max(cold.c.last_seen_at).label("last_seen_at"),
        )
        .group_by(cold.c.store_id, cold.c.external_id)
        .subquery("newest")
    )
    cold_select = (
        select(*(cold.c[name] for name in columns))
        .join(
            newest,
            (newest.c.store_id == cold.c.store_id)
            & (newest.c.external_id == cold.c.external_id)
            & (newest.c.last_seen_at == cold.c.last_seen_at),
        )
        .where(
            ~select(literal_column("1"))
            .where(
                (hot.c.store_id == cold.c.store_id)
                & (hot.c.external_id == cold.c.external_id)
            )
            .exists()
        )
    )
    return union_all(hot_select, cold_select).subquery("products")


@dataclass
class ArchiveResult:
    """Products moved to the cold tier by one archive run."""

    product_count: int = 0
    partition_count: int = 0


def archive_products(
    engine: Engine,
    store_id: str,
    *,
    older_than: timedelta,
    settings: TierSettings,
    now: datetime | None = None,
) -> ArchiveResult:
    """Move a store's products not seen for `older_than` to the cold tier.

    Raises:
        ValueError: if the engine has no cold tier configured.
    """
    enable_tiers(engine, settings)
    cutoff = (now or utc_now()) - older_than
    if engine.dialect.name == "sqlite":
        return archive_to_cold_file(engine, store_id, cutoff)
    return archive_to_cold_partitions(engine, store_id, cutoff, settings)


HOT_COLUMNS = "id, store_id, external_id, title, category_external_id, first_seen_at, last_seen_at"


def archive_to_cold_file(
    engine: Engine, store_id: str, cutoff: datetime
) -> ArchiveResult:
    """Copy old products into the attached cold file, then delete them from the hot one.

    SQLite commits a transaction over attached WAL databases per file. A crash between
    the two files can leave a product in both tiers, and readers then take the hot row.
    """
    condition = "store_id = :store_id AND last_seen_at < :cutoff"
    parameters = {"store_id": store_id, "cutoff": cutoff.replace(tzinfo=None)}
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT OR REPLACE INTO {COLD_SCHEMA}.{ARCHIVE_TABLE} ({HOT_COLUMNS}) "
                f"SELECT {HOT_COLUMNS} FROM main.product WHERE {condition}"
            ),
            parameters,
        )
        deleted = connection.execute(
            text(f"DELETE FROM main.product WHERE {condition}"), parameters
        )
    return ArchiveResult(product_count=deleted.rowcount)


def archive_to_cold_partitions(
    engine: Engine, store_id: str, cutoff: datetime, settings: TierSettings
) -> ArchiveResult:
    """Move old products into monthly archive partitions in the cold tablespace.

    One statement deletes and inserts, so the move is atomic.
    """
    parameters = {"store_id": store_id, "cutoff": cutoff.replace(tzinfo=None)}
    result = ArchiveResult()
    with engine.begin() as connection:
        months = connection.execute(
            text(
                "SELECT DISTINCT date_trunc('month', last_seen_at) FROM product "
                "WHERE store_id = :store_id AND last_seen_at < :cutoff"
            ),
            parameters,
        ).scalars()
        for month in months:
            result.partition_count += create_month_partition(
                connection, month, settings.cold_tablespace
            )
        moved = connection.execute(
            text(
                "WITH moved AS (DELETE FROM product WHERE store_id = :store_id "
                f"AND last_seen_at < :cutoff RETURNING {HOT_COLUMNS}) "
                f"INSERT INTO {ARCHIVE_TABLE} ({HOT_COLUMNS}) SELECT {HOT_COLUMNS} "
                "FROM moved"
            ),
            parameters,
        )
        result.product_count = moved.rowcount
    return result


def create_month_partition(connection, month: datetime, tablespace: str) -> int:
    """Create the archive partition of one month in a tablespace; return 1 if created."""
    name = f"{ARCHIVE_TABLE}_{month:%Y%m}"
    exists = connection.execute(
        text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}
    ).scalar()
    if exists:
        return 0
    next_month = (month.replace(day=28) + timedelta(days=4)).replace(day=1)
    connection.execute(
        text(
            f"CREATE TABLE {name} PARTITION OF {ARCHIVE_TABLE} FOR VALUES FROM "
            f"('{month:%Y-%m-%d}') TO ('{next_month:%Y-%m-%d}') "
            f'TABLESPACE "{tablespace}"'
        )
    )
    return 1
