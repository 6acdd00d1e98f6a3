"""Hot and cold tier tests on SQLite files and on PostgreSQL tablespaces.

Archiving moves old products cold; a training snapshot built afterwards reads both
tiers and equals the one built before.
"""

import os
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from mkt.catalog import (
    ingest_products,
    load_category_progress,
    refresh_category_counts,
    register_store,
    sync_category_tree,
)
from mkt.database import create_database_engine, utc_now
from mkt.snapshot import build_training_snapshot, load_labelled_products
from mkt.stores.config import parse_store_config
from mkt.stores.connectors import CategoryRecord, ProductRecord
from mkt.tiers import TierSettings, archive_products
from tests.conftest import connect_postgres

STORE_ID = "shop-tier"
CATEGORIES = {"11": "Phones", "12": "Lamps", "13": "Kettles"}


def store_config():
    return parse_store_config(
        {
            "store_id": STORE_ID,
            "marketplace": "test",
            "connector": {"kind": "file", "options": {"products": "p.csv"}},
            "min_products_per_category": 3,
        }
    )


def fill_store(engine, per_category=12):
    """Register the store, add products and make the even-numbered ones old."""
    register_store(engine, store_config())
    tree = [CategoryRecord("1", "Root")] + [
        CategoryRecord(category_id, name, "1")
        for category_id, name in CATEGORIES.items()
    ]
    sync_category_tree(engine, STORE_ID, tree)
    products = [
        ProductRecord(f"{category_id}-{i}", f"{name} item {i}", category_id)
        for category_id, name in CATEGORIES.items()
        for i in range(per_category)
    ]
    ingest_products(engine, STORE_ID, products, "test")
    old = (utc_now() - timedelta(days=200)).replace(tzinfo=None)
    with engine.begin() as connection:
        aged = connection.execute(
            text(
                "UPDATE product SET last_seen_at = :old "
                "WHERE store_id = :store AND (title LIKE '%0' OR title LIKE '%2' "
                "OR title LIKE '%4' OR title LIKE '%6' OR title LIKE '%8')"
            ),
            {"old": old, "store": STORE_ID},
        )
    return products, aged.rowcount


def snapshot_of(engine):
    frame, _ = build_training_snapshot(
        load_labelled_products(engine, STORE_ID), store_config()
    )
    return frame


def product_count(engine, table):
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def check_archive_keeps_snapshot(engine, settings):
    products, aged_count = fill_store(engine)
    before = snapshot_of(engine)

    result = archive_products(
        engine, STORE_ID, older_than=timedelta(days=30), settings=settings
    )

    after = snapshot_of(engine)
    cold_table = "cold.product_archive" if settings.cold_path else "product_archive"
    assert aged_count > 0
    assert result.product_count == aged_count
    assert product_count(engine, "product") == len(products) - aged_count
    assert product_count(engine, cold_table) == aged_count
    pd.testing.assert_frame_equal(after, before)
    return result


def test_sqlite_archive_moves_old_products_to_cold_file(tmp_path):
    (tmp_path / "hot").mkdir()
    engine = create_database_engine(f"sqlite:///{tmp_path / 'hot' / 'mkt.db'}")
    settings = TierSettings(cold_path=tmp_path / "cold" / "mkt-cold.db")

    check_archive_keeps_snapshot(engine, settings)

    assert settings.cold_path.stat().st_size > 0


def test_sqlite_archived_product_seen_again_counts_once(tmp_path):
    engine = create_database_engine(f"sqlite:///{tmp_path / 'mkt.db'}")
    settings = TierSettings(cold_path=tmp_path / "cold.db")
    fill_store(engine)
    archive_products(engine, STORE_ID, older_than=timedelta(days=30), settings=settings)

    ingest_products(
        engine, STORE_ID, [ProductRecord("11-0", "Phones item 0", "11")], "test"
    )
    refresh_category_counts(engine, STORE_ID)

    titles = load_labelled_products(engine, STORE_ID)["title"]
    progress = {
        item.external_id: item.product_count
        for item in load_category_progress(engine, STORE_ID, 12)
    }
    assert len(titles) == 36
    assert titles.is_unique
    assert progress["11"] == 12


def test_sqlite_archive_twice_moves_nothing_more(tmp_path):
    engine = create_database_engine(f"sqlite:///{tmp_path / 'mkt.db'}")
    settings = TierSettings(cold_path=tmp_path / "cold.db")
    fill_store(engine)
    archive_products(engine, STORE_ID, older_than=timedelta(days=30), settings=settings)

    second = archive_products(
        engine, STORE_ID, older_than=timedelta(days=30), settings=settings
    )

    assert second.product_count == 0


def run_as_postgres(sql):
    """Run SQL as the postgres superuser, or skip when that is not possible here."""
    if os.geteuid() != 0 or shutil.which("su") is None:
        pytest.skip("creating tablespaces needs root to run psql as postgres")
    completed = subprocess.run(
        ["su", "postgres", "-c", f'psql -q -v ON_ERROR_STOP=1 -c "{sql}"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if completed.returncode != 0:
        pytest.skip(f"psql as postgres failed: {completed.stderr.strip()}")


@pytest.fixture
def tablespaces():
    """Create hot and cold tablespaces in temporary folders owned by postgres."""
    import pwd
    import tempfile

    engine = connect_postgres()
    names = {tier: f"mkt_{tier}_{uuid.uuid4().hex[:8]}" for tier in ("hot", "cold")}
    postgres_user = pwd.getpwnam("postgres")
    # pytest's tmp_path sits below a folder only root may enter, so the server could
    # not reach it.
    base = Path(tempfile.mkdtemp(prefix="mkt-tablespaces-"))
    base.chmod(0o755)
    for tier, name in names.items():
        folder = base / tier
        folder.mkdir()
        os.chown(folder, postgres_user.pw_uid, postgres_user.pw_gid)
        run_as_postgres(f"CREATE TABLESPACE {name} LOCATION '{folder}'")
        run_as_postgres(f"GRANT CREATE ON TABLESPACE {name} TO mkt")
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS product_archive CASCADE"))
    SQLModel.metadata.drop_all(engine)
    SQLModel.metadata.create_all(engine)
    yield (
        engine,
        TierSettings(hot_tablespace=names["hot"], cold_tablespace=names["cold"]),
    )

    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS product_archive CASCADE"))
    SQLModel.metadata.drop_all(engine)
    engine.dispose()
    for name in names.values():
        run_as_postgres(f"DROP TABLESPACE IF EXISTS {name}")
    shutil.rmtree(base, ignore_errors=True)


def test_postgres_archive_moves_old_partitions_to_cold_tablespace(tablespaces):
    engine, settings = tablespaces

    result = check_archive_keeps_snapshot(engine, settings)

    with engine.connect() as connection:
        placed = dict(
            connection.execute(
                text(
                    "SELECT tablename, tablespace FROM pg_tables "
                    "WHERE tablename LIKE 'product%'"
                )
            ).all()
        )
    partitions = [name for name in placed if name.startswith("product_archive_")]
    assert result.partition_count == 1
    assert placed["product"] == settings.hot_tablespace
    assert len(partitions) == 1
    assert placed[partitions[0]] == settings.cold_tablespace
