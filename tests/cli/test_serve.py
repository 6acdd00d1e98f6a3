"""Tests of `mkt serve`: its help, and a real server process started by the command."""

import os
import signal
import sys
from datetime import UTC, datetime

import httpx
import pytest
from typer.testing import CliRunner

from mkt.cli.main import app
from mkt.serving_stats import load_serving_windows
from tests.serving.stores import (
    PHONE_STORE,
    free_port,
    run_process,
    serving_engine,
    trained_stores,  # noqa: F401
)

runner = CliRunner()


def test_serve_help_names_limits_and_budget():
    result = runner.invoke(app, ["serve", "--help"])

    assert result.exit_code == 0
    for option in ("--port", "--token", "--memory-budget-mb", "--max-batch"):
        assert option in result.output


def test_serve_rejects_zero_batch_limit():
    result = runner.invoke(app, ["serve", "--max-batch", "0"])

    assert result.exit_code == 2
    assert "--max-batch" in result.output


@pytest.mark.slow
def test_serve_classifies_with_token_and_flushes_on_stop(trained_stores):  # noqa: F811
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mkt.cli.main", "serve", "--port", str(port)]
    command += ["--token", "t0ken", "--no-access-log"]
    started = datetime.now(UTC)

    with run_process(command, f"{url}/health", dict(os.environ)) as process:
        body = {"names": ["apple iphone 8 64gb"]}
        anonymous = httpx.post(f"{url}/stores/{PHONE_STORE}/classify", json=body)
        answer = httpx.post(
            f"{url}/stores/{PHONE_STORE}/classify",
            json=body,
            headers={"Authorization": "Bearer t0ken"},
            timeout=60,
        )
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)
    windows = load_serving_windows(serving_engine(), PHONE_STORE, started)

    assert anonymous.status_code == 401
    assert answer.status_code == 200
    assert answer.json()["results"][0]["category_path"] == "Mobile Phones"
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal for its exit code.
    assert exit_code in (0, -signal.SIGTERM)
    assert [window.request_count for window in windows] == [1]
