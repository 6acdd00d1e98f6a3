"""Tests of `mkt promote` and `mkt rollback` through Typer's CliRunner."""

import pytest
from typer.testing import CliRunner

from mkt.cli.main import app
from mkt.registry import configure_mlflow, get_champion
from mkt.settings import Settings
from tests.registered import add_store, metrics_of, register_version

runner = CliRunner()


@pytest.fixture
def store(mkt_home, tmp_path):
    configure_mlflow(Settings())
    return add_store(tmp_path / "store")


def test_promote_rejects_worse_version_and_says_force(store):
    register_version(store, metrics_of(0.85))
    register_version(store, metrics_of(0.80))
    runner.invoke(app, ["promote", "shop-test", "--version", "1"])

    result = runner.invoke(app, ["promote", "shop-test"])

    assert result.exit_code == 1
    assert "version 2 rejected" in result.output
    assert "mkt promote shop-test --version 2 --force" in result.output
    assert str(get_champion("shop-test").version) == "1"


def test_promote_force_then_rollback(store):
    register_version(store, metrics_of(0.85))
    register_version(store, metrics_of(0.80))
    runner.invoke(app, ["promote", "shop-test", "--version", "1"])

    forced = runner.invoke(app, ["promote", "shop-test", "--force"])
    rolled = runner.invoke(app, ["rollback", "shop-test"])

    assert forced.exit_code == 0, forced.output
    assert "version 2 is now @champion" in forced.output
    assert rolled.exit_code == 0, rolled.output
    assert "version 1 again" in rolled.output
    assert str(get_champion("shop-test").version) == "1"


def test_promote_unknown_version_names_it(store):
    register_version(store, metrics_of(0.85))

    result = runner.invoke(app, ["promote", "shop-test", "--version", "9"])

    assert result.exit_code == 1
    assert "'9'" in result.output


def test_rollback_without_history_fails_clearly(store):
    register_version(store, metrics_of(0.85))
    runner.invoke(app, ["promote", "shop-test"])

    result = runner.invoke(app, ["rollback", "shop-test"])

    assert result.exit_code == 1
    assert "no earlier champion" in result.output
    assert "Traceback" not in result.output


def test_rollback_unknown_store_names_it(mkt_home):
    result = runner.invoke(app, ["rollback", "nowhere"])

    assert result.exit_code == 1
    assert "'nowhere'" in result.output
