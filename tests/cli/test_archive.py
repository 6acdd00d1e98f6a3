"""Tests of `mkt archive` through Typer's CliRunner."""

import json

from typer.testing import CliRunner

from mkt.cli.main import app
from mkt.flows.context import open_database
from mkt.settings import Settings
from tests.test_tiers import STORE_ID, fill_store

runner = CliRunner()


def test_archive_moves_old_products_and_prints_count(
    mkt_home, tmp_path, monkeypatch, prefect_harness
):
    monkeypatch.setenv("MKT_COLD_DIR", str(tmp_path / "cold"))
    _, aged_count = fill_store(open_database(Settings()))

    result = runner.invoke(app, ["archive", STORE_ID, "--older-than-days", "30"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["product_count"] == aged_count


def test_archive_without_cold_tier_names_the_setting(mkt_home, prefect_harness):
    fill_store(open_database(Settings()))

    result = runner.invoke(app, ["archive", STORE_ID])

    assert result.exit_code == 1
    assert "MKT_COLD_DIR" in result.output
    assert repr(STORE_ID) in result.output
