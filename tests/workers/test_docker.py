"""The worker image and Prefect's Docker worker, against the test harness's server.

These tests need a Docker engine: without one they skip, unless MKT_REQUIRE_DOCKER=1
makes that a failure. They build mkt-worker:cpu and mkt-worker:gpu with
docker/build-image.sh, which keeps an image whose source-hash label matches the
current Dockerfile, pyproject.toml and mkt sources.
"""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from mkt.cli.main import app
from tests.conftest import REPO_ROOT, write_sample_products, write_store_config

pytestmark = pytest.mark.slow

runner = CliRunner()
BUILD_TIMEOUT_S = 3600
WORKER_TIMEOUT_S = 900
# Seconds the worker's Docker client waits for one API call. Docker's vfs storage driver
# copies the whole 2 GB image to create a container, which can take longer than the
# client's default of 60 s.
DOCKER_CLIENT_TIMEOUT_S = 600
FINAL_STATE_TIMEOUT_S = 120


def require_docker() -> None:
    """Skip (or fail, with MKT_REQUIRE_DOCKER=1) when `docker info` cannot reach an engine."""
    try:
        result = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=60
        )
        reason = result.stderr.strip()[-500:] if result.returncode else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason is None:
        return
    message = f"No Docker engine reachable ('docker info' failed: {reason})"
    if os.environ.get("MKT_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{message}; MKT_REQUIRE_DOCKER=1 requires one")
    pytest.skip(message)


def build_image(variant: str) -> str:
    """Build mkt-worker:<variant> unless it is up to date; return its name."""
    result = subprocess.run(
        [
            str(REPO_ROOT / "docker" / "build-image.sh"),
            "--variant",
            variant,
            "--if-changed",
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return f"mkt-worker:{variant}"


@pytest.fixture(scope="module")
def cpu_image() -> str:
    require_docker()
    return build_image("cpu")


@pytest.fixture(scope="module")
def gpu_image() -> str:
    require_docker()
    runtimes = subprocess.run(
        ["docker", "info", "--format", "{{json .Runtimes}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    if "nvidia" in runtimes:
        pytest.skip("This Docker engine has the NVIDIA runtime, so GPU runs can start")
    return build_image("gpu")


def call(coroutine_function):
    async def run():
        async with get_client() as client:
            return await coroutine_function(client)

    return asyncio.run(run())


def open_to_image_user(folder: Path) -> None:
    """Let the image's user (uid 1000, not the test's) write under `folder`."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


def add_store_on_pool(tmp_path: Path, store_id: str, work_pool: str) -> None:
    """Register a small store whose crawl deployment runs on `work_pool`, unscheduled."""
    products = write_sample_products(tmp_path, per_category=5)
    crawl = {"work_pool": work_pool, "interval_h": 6, "is_active": False}
    config = write_store_config(
        tmp_path,
        products,
        store_id=store_id,
        deployments={
            "crawl": {**crawl, "after_previous_stage": False},
            "embed": {"after_previous_stage": False},
        },
    )
    result = runner.invoke(app, ["add-store", store_id, "--config", str(config)])
    assert result.exit_code == 0, result.output


def mount_job_variables(tmp_path: Path, mkt_home: Path) -> dict:
    """Job variables that show the container the test's data at the same paths."""
    return {
        "network_mode": "host",
        "volumes": [f"{tmp_path}:{tmp_path}"],
        "env": {
            "MKT_HOME": str(mkt_home),
            "MKT_DATABASE_URL": f"sqlite:///{mkt_home / 'mkt.db'}",
            "MKT_MLFLOW_TRACKING_URI": os.environ["MKT_MLFLOW_TRACKING_URI"],
        },
    }


def run_docker_worker(work_pool: str) -> subprocess.CompletedProcess:
    """Run a Docker worker on `work_pool` until the flow runs it picked up are done."""
    from prefect.settings import PREFECT_API_URL

    environment = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "DOCKER_CLIENT_TIMEOUT": str(DOCKER_CLIENT_TIMEOUT_S),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            work_pool,
            "--type",
            "docker",
            "--run-once",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )


def read_final_flow_run(flow_run_id):
    """Return the flow run once its state is final, or as it is after the timeout."""

    async def read(client):
        return await client.read_flow_run(flow_run_id)

    flow_run = call(read)
    deadline = time.monotonic() + FINAL_STATE_TIMEOUT_S
    while not flow_run.state.is_final() and time.monotonic() < deadline:
        time.sleep(1)
        flow_run = call(read)
    return flow_run


@pytest.fixture
def remove_stores(prefect_harness):
    """Remove the stores a test names, with their deployments, when it ends."""
    store_ids = []
    yield store_ids
    for store_id in store_ids:
        runner.invoke(app, ["remove-store", store_id, "--yes"])


def test_docker_worker_runs_crawl(mkt_home, tmp_path, cpu_image, remove_stores):
    from prefect.deployments import run_deployment

    from mkt.catalog import load_category_progress
    from mkt.flows.context import open_database
    from mkt.settings import Settings

    remove_stores.append("shop-docker")
    add_store_on_pool(tmp_path, "shop-docker", "mkt-docker-cpu")
    open_to_image_user(tmp_path)
    flow_run = run_deployment(
        "crawl/shop-docker",
        job_variables=mount_job_variables(tmp_path, mkt_home),
        timeout=0,
    )

    worker = run_docker_worker("mkt-docker-cpu")

    output = worker.stdout[-4000:] + worker.stderr[-4000:]
    flow_run = read_final_flow_run(flow_run.id)
    assert flow_run.state.is_completed(), output
    assert "Docker container" in output
    assert "docker" in flow_run.infrastructure_pid
    progress = load_category_progress(open_database(Settings()), "shop-docker", 5)
    assert sum(item.product_count for item in progress) == 20
    assert {item.path for item in progress} == {
        "CPUs",
        "Dishwashers",
        "Mobile Phones",
        "TVs",
    }


def test_docker_gpu_pool_reports_missing_gpu(
    mkt_home, tmp_path, gpu_image, remove_stores
):
    from prefect.deployments import run_deployment

    remove_stores.append("shop-gpu")
    add_store_on_pool(tmp_path, "shop-gpu", "mkt-docker-gpu")
    open_to_image_user(tmp_path)
    flow_run = run_deployment(
        "crawl/shop-gpu",
        job_variables=mount_job_variables(tmp_path, mkt_home),
        timeout=0,
    )

    worker = run_docker_worker("mkt-docker-gpu")

    flow_run = read_final_flow_run(flow_run.id)
    output = worker.stdout + worker.stderr
    assert flow_run.state.is_crashed(), output[-4000:]
    assert 'could not select device driver "nvidia"' in flow_run.state.message
    assert "capabilities: [[gpu]]" in flow_run.state.message
    assert 'could not select device driver "nvidia"' in output, output[-4000:]
