"""Deployment reconciliation against a real Prefect server (the test harness's)."""

import asyncio
import os
import subprocess
import sys
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from typer.testing import CliRunner

from mkt.cli.main import app
from mkt.workers.deployments import MANAGED_TAG, read_managed_deployments
from tests.conftest import write_sample_products, write_store_config

runner = CliRunner()


def managed_deployments() -> dict:
    async def read():
        async with get_client() as client:
            return await read_managed_deployments(client)

    return asyncio.run(read())


def call(coroutine_function):
    async def run():
        async with get_client() as client:
            return await coroutine_function(client)

    return asyncio.run(run())


def add_store(tmp_path, store_id="shop-a", *extra):
    config = write_store_config(tmp_path, tmp_path / "p.csv", store_id=store_id)
    result = runner.invoke(
        app, ["add-store", store_id, "--config", str(config), *extra]
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def clean_server(prefect_harness):
    """Delete every deployment left by an earlier test."""

    async def delete_all(client):
        for deployment in await client.read_deployments():
            await client.delete_deployment(deployment.id)

    call(delete_all)


def test_add_store_creates_scheduled_deployments(mkt_home, tmp_path, clean_server):
    result = add_store(tmp_path)

    deployments = managed_deployments()
    assert sorted(deployments) == [
        "crawl/shop-a",
        "embed/shop-a",
        "evaluate/shop-a",
        "monitor/shop-a",
        "train/shop-a",
    ]
    crawl, _ = deployments["crawl/shop-a"]
    assert crawl.work_pool_name == "mkt-process"
    assert crawl.parameters == {"store_id": "shop-a"}
    assert crawl.schedules[0].schedule.interval.total_seconds() == 6 * 3600
    assert crawl.global_concurrency_limit.limit == 1
    assert crawl.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert {MANAGED_TAG, "store:shop-a"} <= set(crawl.tags)
    monitor, _ = deployments["monitor/shop-a"]
    assert monitor.parameters == {"store_id": "shop-a", "retrain": True}
    assert monitor.schedules[0].schedule.interval.total_seconds() == 3600
    train, _ = deployments["train/shop-a"]
    assert train.schedules[0].schedule.cron == "0 3 * * 0"
    assert train.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert "+ crawl/shop-a" in result.output


def test_sync_is_idempotent(mkt_home, tmp_path, clean_server):
    add_store(tmp_path)
    runner.invoke(app, ["sync"])

    result = runner.invoke(app, ["sync"])

    assert result.exit_code == 0, result.output
    assert "0 created, 0 updated, 0 deleted, 6 unchanged" in result.output


def test_sync_repairs_hand_edits_and_deletions(mkt_home, tmp_path, clean_server):
    add_store(tmp_path)
    deployments = managed_deployments()
    crawl_id = deployments["crawl/shop-a"][0].id
    train_id = deployments["train/shop-a"][0].id

    async def edit_by_hand(client):
        await client.update_deployment(
            crawl_id, DeploymentUpdate(parameters={"store_id": "x"})
        )
        await client.delete_deployment(train_id)

    call(edit_by_hand)
    result = runner.invoke(app, ["sync"])

    assert result.exit_code == 0, result.output
    assert "~ crawl/shop-a (parameters)" in result.output
    assert "+ train/shop-a" in result.output
    repaired = managed_deployments()
    assert repaired["crawl/shop-a"][0].parameters == {"store_id": "shop-a"}
    assert "train/shop-a" in repaired


def test_changed_config_updates_schedule(mkt_home, tmp_path, clean_server):
    add_store(tmp_path)

    result = add_store(tmp_path, "shop-a", "--set", "deployments.crawl.interval_h=12")

    assert "~ crawl/shop-a (schedule)" in result.output
    crawl, _ = managed_deployments()["crawl/shop-a"]
    assert crawl.schedules[0].schedule.interval.total_seconds() == 12 * 3600


def test_remove_store_deletes_only_its_deployments(mkt_home, tmp_path, clean_server):
    add_store(tmp_path, "shop-a")
    add_store(tmp_path, "shop-b")

    async def add_foreign(client):
        flow_id = await client.create_flow_from_name("crawl")
        await client.create_deployment(
            flow_id=flow_id, name="hand-made", entrypoint="x.y"
        )

    call(add_foreign)
    result = runner.invoke(app, ["remove-store", "shop-a", "--yes"])

    assert result.exit_code == 0, result.output
    assert sorted(managed_deployments()) == [
        "crawl/shop-b",
        "embed/shop-b",
        "evaluate/shop-b",
        "monitor/shop-b",
        "train/shop-b",
    ]

    async def names(client):
        return {deployment.name for deployment in await client.read_deployments()}

    assert "hand-made" in call(names)


def test_remove_store_asks_for_confirmation(mkt_home, tmp_path, clean_server):
    add_store(tmp_path)

    result = runner.invoke(app, ["remove-store", "shop-a"], input="n\n")

    assert result.exit_code == 1
    assert "crawl/shop-a" in managed_deployments()


def test_preset_store_uses_docker_pools(mkt_home, clean_server):
    result = runner.invoke(app, ["add-store", "amazon-de"])

    assert result.exit_code == 0, result.output
    deployments = managed_deployments()
    assert deployments["crawl/amazon-de"][0].work_pool_name == "mkt-docker-cpu"
    assert deployments["embed/amazon-de"][0].work_pool_name == "mkt-docker-gpu"

    async def pools(client):
        return {pool.name: pool for pool in await client.read_work_pools()}

    gpu_pool = call(pools)["mkt-docker-gpu"]
    variables = gpu_pool.base_job_template["variables"]["properties"]
    requests = variables["container_create_kwargs"]["default"]["device_requests"]
    assert requests[0]["capabilities"] == [["gpu"]]


def test_unknown_preset_lists_known_ones(mkt_home):
    result = runner.invoke(app, ["add-store", "zalando-de", "--no-deploy"])

    assert result.exit_code == 1
    assert "'zalando-de'" in result.output
    assert "amazon" in result.output
    assert "--config" in result.output


def test_invalid_set_override_is_rejected(mkt_home):
    result = runner.invoke(
        app, ["add-store", "ebay-us", "--no-deploy", "--set", "classifier.k"]
    )

    assert result.exit_code == 1
    assert "'classifier.k'" in result.output
    assert "KEY=VALUE" in result.output


def test_config_history_records_changes(mkt_home, tmp_path):
    add_store(tmp_path, "shop-a", "--no-deploy")
    add_store(tmp_path, "shop-a", "--no-deploy")
    add_store(tmp_path, "shop-a", "--no-deploy", "--set", "classifier.k=3")

    result = runner.invoke(app, ["show-store", "shop-a"])

    assert result.exit_code == 0, result.output
    assert "k: 3" in result.output
    assert "changed: k" in result.output
    assert "first version" in result.output


@pytest.mark.slow
def test_process_worker_runs_crawl_deployment(mkt_home, tmp_path, clean_server):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    products = write_sample_products(tmp_path, per_category=5)
    config = write_store_config(tmp_path, products, store_id="shop-w")
    runner.invoke(app, ["add-store", "shop-w", "--config", str(config)])
    flow_run = run_deployment("crawl/shop-w", timeout=0)

    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            "mkt-process",
            "--run-once",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    async def read_state(client):
        return (await client.read_flow_run(flow_run.id)).state

    state = call(read_state)
    deadline = time.monotonic() + 60
    while not state.is_final() and time.monotonic() < deadline:
        time.sleep(1)
        state = call(read_state)
    assert state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]


def add_stores_concurrently(tmp_path, environment, count=20) -> list[str]:
    """Run `count` add-store commands at once; assert each succeeded; return the ids."""
    store_ids = [f"shop-{i:02d}" for i in range(count)]
    configs = [
        write_store_config(tmp_path, tmp_path / "p.csv", store_id=s) for s in store_ids
    ]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mkt.cli.main",
                "add-store",
                store_id,
                "--config",
                str(path),
            ],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for store_id, path in zip(store_ids, configs)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "database is locked" not in output
    return store_ids


@pytest.mark.slow
def test_concurrent_add_store_leaves_consistent_server(
    mkt_home, tmp_path, clean_server
):
    from prefect.settings import PREFECT_API_URL

    environment = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}

    store_ids = add_stores_concurrently(tmp_path, environment)

    deployments = managed_deployments()
    assert len(deployments) == 20 * 5
    assert {name.split("/")[1] for name in deployments} == set(store_ids)


@pytest.fixture
def postgres_prefect_server(tmp_path):
    """A Prefect server on its own PostgreSQL database, started for one test."""
    import psycopg

    from tests.conftest import connect_postgres, free_port

    connect_postgres().dispose()
    with psycopg.connect(
        "postgresql://mkt:mkt@127.0.0.1:5432/mkt_test", autocommit=True
    ) as db:
        db.execute("DROP DATABASE IF EXISTS mkt_prefect_test WITH (FORCE)")
        db.execute("CREATE DATABASE mkt_prefect_test")
    port = free_port()
    environment = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-pg"),
        "PREFECT_API_DATABASE_CONNECTION_URL": (
            "postgresql+asyncpg://mkt:mkt@127.0.0.1:5432/mkt_prefect_test"
        ),
    }
    log = open(tmp_path / "prefect-pg.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        env=environment,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_health(url, server, tmp_path / "prefect-pg.log")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_for_health(url, server, log_path, timeout_s=180):
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(
        f"Prefect server did not start: {log_path.read_text()[-3000:]}"
    )


@pytest.mark.slow
def test_concurrent_add_store_on_postgres(mkt_home, tmp_path, postgres_prefect_server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.conftest import POSTGRES_URL, connect_postgres

    engine = connect_postgres()
    from sqlmodel import SQLModel

    SQLModel.metadata.drop_all(engine)
    engine.dispose()
    environment = {
        **os.environ,
        "PREFECT_API_URL": postgres_prefect_server,
        "MKT_DATABASE_URL": POSTGRES_URL,
    }

    store_ids = add_stores_concurrently(tmp_path, environment)

    with temporary_settings({PREFECT_API_URL: postgres_prefect_server}):
        deployments = managed_deployments()
    assert len(deployments) == 20 * 5, sorted(deployments)
    assert {name.split("/")[1] for name in deployments} == set(store_ids)
