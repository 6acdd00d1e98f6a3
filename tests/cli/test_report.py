"""Tests of `mkt report` on a store whose whole pipeline ran."""

import re

import pytest
from typer.testing import CliRunner

from mkt.catalog import register_store
from mkt.cli.main import app
from mkt.flows.context import open_database
from mkt.settings import Settings
from mkt.stores.config import load_store_config
from tests.conftest import write_sample_products, write_store_config

runner = CliRunner()
IMAGE_PATTERN = re.compile(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"')


@pytest.mark.slow
def test_report_writes_html_and_logs_plots(mkt_home, tmp_path, prefect_harness):
    from mlflow import MlflowClient

    from mkt.flows.crawl import crawl_store
    from mkt.flows.embed import embed_store
    from mkt.flows.evaluate import evaluate_store
    from mkt.flows.train import train_store
    from mkt.registry import configure_mlflow, get_champion

    products = write_sample_products(tmp_path, per_category=30)
    config = load_store_config(write_store_config(tmp_path, products))
    register_store(open_database(Settings()), config)
    for stage in (crawl_store, embed_store, train_store, evaluate_store):
        stage(config.store_id)
    output = tmp_path / "out" / "report.html"
    output.parent.mkdir()

    result = runner.invoke(app, ["report", "shop-test", "--output", str(output)])

    assert result.exit_code == 0, result.output
    page = output.read_text(encoding="utf-8")
    assert len(IMAGE_PATTERN.findall(page)) >= 3
    assert "Champion: version 1" in page
    configure_mlflow(Settings())
    run_id = get_champion("shop-test").run_id
    logged = {item.path for item in MlflowClient().list_artifacts(run_id, "report")}
    assert {
        "report/coverage_histogram.png",
        "report/level_accuracy.png",
        "report/confidence.png",
        "report/report.html",
    } <= logged


def test_report_without_champion_writes_coverage(mkt_home, tmp_path):
    config = write_store_config(tmp_path, tmp_path / "p.csv")
    runner.invoke(app, ["add-store", "shop-test", "--config", str(config)])
    output = tmp_path / "report.html"

    result = runner.invoke(app, ["report", "shop-test", "--output", str(output)])

    assert result.exit_code == 0, result.output
    assert "nothing was logged to MLflow" in result.output
    assert len(IMAGE_PATTERN.findall(output.read_text())) == 1


def test_report_unknown_store_names_it(mkt_home):
    result = runner.invoke(app, ["report", "nowhere"])

    assert result.exit_code == 1
    assert "'nowhere'" in result.output
