"""Archive flow tests: a SQLite store with a cold tier, and one without."""

import pytest
from sqlalchemy import text

from mkt.errors import ConfigError
from mkt.flows.context import open_database
from mkt.settings import Settings
from tests.test_tiers import STORE_ID, fill_store, snapshot_of


def test_archive_flow_moves_old_products(
    mkt_home, tmp_path, monkeypatch, prefect_harness
):
    from mkt.flows.archive import archive_store

    monkeypatch.setenv("MKT_COLD_DIR", str(tmp_path / "cold"))
    engine = open_database(Settings())
    _, aged_count = fill_store(engine)
    before = snapshot_of(engine)

    summary = archive_store(STORE_ID, older_than_days=30)

    with engine.connect() as connection:
        cold_count = connection.execute(
            text("SELECT count(*) FROM cold.product_archive")
        ).scalar()
    assert summary["product_count"] == aged_count
    assert cold_count == aged_count
    assert (tmp_path / "cold" / "mkt-cold.db").is_file()
    assert snapshot_of(engine).equals(before)


def test_archive_flow_without_cold_tier(mkt_home, prefect_harness):
    from mkt.flows.archive import archive_store

    fill_store(open_database(Settings()))

    with pytest.raises(ConfigError, match="MKT_COLD_DIR"):
        archive_store(STORE_ID, older_than_days=30)
