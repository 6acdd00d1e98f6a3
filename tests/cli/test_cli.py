"""Tests of the `mkt` command line through Typer's CliRunner."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mkt.cli.main import app
from tests.conftest import write_sample_products, write_store_config

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("add-store", "list-stores", "run", "classify"):
        assert command in result.output


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from mkt.cli.main import app; "
        "print(sorted(m for m in ('prefect', 'mlflow', 'sentence_transformers', 'torch', 'faiss') "
        "if m in sys.modules))"
    )

    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert loaded.stdout.strip() == "[]"


def test_add_store_rejects_bad_store_id(mkt_home, tmp_path):
    config = write_store_config(tmp_path, tmp_path / "p.csv", store_id="Bad_Store")

    result = runner.invoke(
        app, ["add-store", "Bad_Store", "--config", str(config), "--no-deploy"]
    )

    assert result.exit_code == 1
    assert "store_id" in result.output
    assert "'Bad_Store'" in result.output


def test_add_store_without_config_or_preset_says_how(mkt_home):
    result = runner.invoke(app, ["add-store", "corner-shop", "--no-deploy"])

    assert result.exit_code == 1
    assert "--config" in result.output


def test_add_store_with_missing_config_file(mkt_home, tmp_path):
    result = runner.invoke(
        app, ["add-store", "shop", "--config", str(tmp_path / "none.yaml")]
    )

    assert result.exit_code == 1
    assert "none.yaml" in result.output
    assert "not found" in result.output


def test_add_and_list_stores(mkt_home, tmp_path):
    config = write_store_config(tmp_path, tmp_path / "p.csv")

    added = runner.invoke(
        app, ["add-store", "shop-test", "--config", str(config), "--no-deploy"]
    )
    again = runner.invoke(
        app, ["add-store", "shop-test", "--config", str(config), "--no-deploy"]
    )
    listed = runner.invoke(app, ["list-stores"])

    assert added.exit_code == 0
    assert "registered" in added.output
    assert "updated" in again.output
    assert listed.exit_code == 0
    assert "shop-test" in listed.output


def test_run_unknown_store_names_it(mkt_home):
    result = runner.invoke(app, ["run", "nowhere"])

    assert result.exit_code == 1
    assert "'nowhere'" in result.output
    assert "mkt add-store" in result.output


def test_run_rejects_unknown_stage(mkt_home):
    result = runner.invoke(app, ["run", "shop", "--stage", "deploy"])

    assert result.exit_code == 2
    assert "deploy" in result.output


def test_classify_unknown_store_says_not_found(mkt_home):
    result = runner.invoke(app, ["classify", "nowhere", "iphone"])

    assert result.exit_code == 1
    assert "'nowhere' not found" in result.output


def test_classify_without_champion_says_to_run(mkt_home, tmp_path):
    config = write_store_config(tmp_path, tmp_path / "p.csv")
    runner.invoke(
        app, ["add-store", "shop-test", "--config", str(config), "--no-deploy"]
    )

    result = runner.invoke(app, ["classify", "shop-test", "iphone"])

    assert result.exit_code == 1
    assert "no @champion" in result.output
    assert "mkt run shop-test" in result.output


def test_run_with_missing_products_file_fails_cleanly(
    mkt_home, tmp_path, prefect_harness
):
    config = write_store_config(tmp_path, tmp_path / "gone.csv")
    runner.invoke(
        app, ["add-store", "shop-test", "--config", str(config), "--no-deploy"]
    )

    result = runner.invoke(app, ["run", "shop-test", "--stage", "crawl"])

    assert result.exit_code == 1
    assert "gone.csv" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_run_then_classify_as_json(mkt_home, tmp_path, prefect_harness):
    products = write_sample_products(tmp_path, per_category=25)
    config = write_store_config(tmp_path, products)
    runner.invoke(
        app, ["add-store", "shop-test", "--config", str(config), "--no-deploy"]
    )

    ran = runner.invoke(app, ["run", "shop-test"])
    classified = runner.invoke(
        app,
        [
            "classify",
            "shop-test",
            "sony kd-55xf9005 55 inch 4k tv",
            "--top-k",
            "2",
            "--json",
        ],
    )

    assert ran.exit_code == 0, ran.output
    assert "weighted_f1" in ran.output
    assert classified.exit_code == 0, classified.output
    answer = json.loads(classified.stdout)
    assert answer["category_path"] == "TVs"
    assert 1 <= len(answer["candidates"]) <= 2
    assert answer["candidates"][0]["category_path"] == "TVs"
