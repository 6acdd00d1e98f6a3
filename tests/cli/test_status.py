"""Tests of `mkt status` with stores in different states, through Typer's CliRunner."""

import json

import pytest
from typer.testing import CliRunner

from mkt.cli.main import app
from mkt.database import utc_now
from mkt.flows.context import open_database
from mkt.monitoring import WARNING, Alert, create_alert_table
from mkt.promotion import promote_classifier
from mkt.registry import configure_mlflow
from mkt.settings import Settings
from tests.conftest import write_sample_products
from tests.registered import add_store, metrics_of, register_version

runner = CliRunner()


@pytest.fixture
def stores(mkt_home, tmp_path, prefect_harness):
    """Four stores: registered only, crawled only, with a champion, with a rejected challenger."""
    from mkt.flows.crawl import crawl_store

    configure_mlflow(Settings())
    engine = open_database(Settings())
    add_store(tmp_path / "empty", "empty-shop")

    (tmp_path / "crawled").mkdir()
    write_sample_products(tmp_path / "crawled", per_category=5)
    add_store(tmp_path / "crawled", "crawled-shop")
    crawl_store("crawled-shop")

    champion = add_store(tmp_path / "champion", "champion-shop")
    promote_classifier(
        engine,
        "champion-shop",
        register_version(champion, metrics_of(0.912)),
        actor="test",
    )

    rejected = add_store(tmp_path / "rejected", "rejected-shop")
    register_version(rejected, metrics_of(0.85))
    register_version(rejected, metrics_of(0.80))
    promote_classifier(engine, "rejected-shop", "1", actor="test")
    promote_classifier(engine, "rejected-shop", "2", actor="test")

    create_alert_table(engine)
    with engine.begin() as connection:
        connection.execute(
            Alert.__table__.insert().values(
                store_id="rejected-shop",
                kind="stale_crawl",
                severity=WARNING,
                message="no crawl for 200 hours",
                raised_at=utc_now(),
            )
        )


def status_by_store(output: str) -> dict[str, dict]:
    statuses = [json.loads(line) for line in output.splitlines() if line.strip()]
    return {item["store_id"]: item for item in statuses}


def test_status_json_shows_each_state(stores):
    result = runner.invoke(app, ["status", "--json"])

    assert result.exit_code == 0, result.output
    found = status_by_store(result.stdout)
    assert set(found) == {
        "empty-shop",
        "crawled-shop",
        "champion-shop",
        "rejected-shop",
    }
    empty = found["empty-shop"]
    assert empty["category_count"] == 0
    assert empty["last_crawl_at"] is None
    assert empty["champion_version"] is None
    assert empty["flow_run_states"]["crawl"] == "-"
    crawled = found["crawled-shop"]
    assert crawled["category_count"] == 4
    assert crawled["product_count"] == 20
    assert crawled["complete_count"] == 0
    assert crawled["last_crawl_at"] is not None
    assert crawled["flow_run_states"]["crawl"] == "Completed"
    assert crawled["last_train_at"] is None
    champion = found["champion-shop"]
    assert champion["champion_version"] == "1"
    assert champion["champion_metrics"]["weighted_f1"] == pytest.approx(0.912)
    assert champion["last_train_at"] is not None
    assert champion["challenger_version"] is None
    rejected = found["rejected-shop"]
    assert rejected["champion_version"] == "1"
    assert rejected["challenger_version"] == "2"
    assert rejected["challenger_status"] == "rejected"
    assert "does not beat" in rejected["challenger_reason"]
    assert rejected["alerts"] == ["warning: stale_crawl"]


def test_status_table_lists_every_store(stores, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")

    result = runner.invoke(app, ["status"])

    assert result.exit_code == 0, result.output
    for store_id in ("empty-shop", "crawled-shop", "champion-shop", "rejected-shop"):
        assert store_id in result.stdout
    assert "v2 rejected" in result.stdout
    assert "F1 0.912" in result.stdout
    assert "warning: stale_crawl" in result.stdout
    assert "ok" in result.stdout


def test_status_without_stores_says_how_to_add(mkt_home):
    result = runner.invoke(app, ["status"])

    assert result.exit_code == 0
    assert "mkt add-store" in result.output


def test_status_categories_shows_histogram_and_least_covered(mkt_home):
    from mkt.catalog import (
        ingest_products,
        refresh_category_counts,
        register_store,
        sync_category_tree,
    )
    from mkt.stores.config import parse_store_config
    from mkt.stores.connectors import CategoryRecord, ProductRecord

    engine = open_database(Settings())
    config = parse_store_config(
        {
            "store_id": "cover-shop",
            "marketplace": "test",
            "connector": {"kind": "file", "options": {"products": "p.csv"}},
            "target_products_per_category": 4,
        }
    )
    register_store(engine, config)
    tree = [CategoryRecord("1", "Root")] + [
        CategoryRecord(f"1{i}", f"Leaf {i}", "1") for i in range(3)
    ]
    sync_category_tree(engine, "cover-shop", tree)
    products = [ProductRecord(f"a{i}", f"Thing {i}", "10") for i in range(4)]
    products += [ProductRecord("b0", "Gadget", "11")]
    ingest_products(engine, "cover-shop", products, "test")
    refresh_category_counts(engine, "cover-shop")

    result = runner.invoke(app, ["status", "cover-shop", "--categories", "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["histogram"]["complete"] == 1
    assert document["histogram"]["25-49%"] == 1
    assert document["histogram"]["0"] == 1
    assert [item["category_id"] for item in document["least_covered"]] == ["12", "11"]


def test_status_categories_without_store_says_how(mkt_home):
    result = runner.invoke(app, ["status", "--categories"])

    assert result.exit_code == 1
    assert "mkt status STORE --categories" in result.output


def test_status_of_unknown_store_says_not_found(mkt_home):
    result = runner.invoke(app, ["status", "nope-shop", "--categories"])

    assert result.exit_code == 1
    assert "'nope-shop' not found" in result.output
