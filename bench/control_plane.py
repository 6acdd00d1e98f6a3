"""Benchmark the control plane: register N stores and sync their deployments.

Starts a real Prefect server (SQLite, loopback, temporary folder) and measures, in one run:

- mkt's add-store path per store, for the first `--timed` stores: register the config in
  the database, record its version in MLflow and create the store's five deployments;
- the remaining stores registered in bulk, then one `mkt sync` creating all their
  deployments at once (what `mkt sync` does after configs were registered elsewhere);
- an idle `mkt sync` over all stores (nothing to change);
- Prefect's own Python deploy API (`flow.to_deployment(...).apply()`) creating the same
  deployments one by one, for `--timed` other store names.

Usage: python -m bench.control_plane [--stores 500] [--timed 50] [--output results.md]
"""

import argparse
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_prefect_server(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start a Prefect server on a free port and return it with its API URL."""
    port = free_port()
    environment = {**os.environ, "PREFECT_HOME": str(folder / "prefect")}
    environment["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
    ]
    log = open(folder / "prefect-server.log", "wb")  # noqa: SIM115 - open while it runs
    server = subprocess.Popen(
        [*command, "--port", str(port)], env=environment, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError(
        f"Prefect server did not start; see {folder / 'prefect-server.log'}"
    )


def store_config(store_id: str, products: Path):
    """Return a small file-connector store config."""
    from mkt.stores.config import parse_store_config

    return parse_store_config(
        {
            "store_id": store_id,
            "marketplace": "bench",
            "connector": {"kind": "file", "options": {"products": str(products)}},
        }
    )


def add_stores_with_mkt(configs) -> list[float]:
    """Run mkt's add-store steps for each store; return seconds per store."""
    from mkt.catalog import register_store
    from mkt.config_registry import record_config_version
    from mkt.flows.context import open_database
    from mkt.registry import configure_mlflow
    from mkt.settings import Settings
    from mkt.workers.deployments import run_sync

    settings = Settings()
    engine = open_database(settings)
    configure_mlflow(settings)
    durations = []
    for config in configs:
        started = time.perf_counter()
        register_store(engine, config)
        record_config_version(settings, config)
        run_sync([config], store_ids={config.store_id})
        durations.append(time.perf_counter() - started)
        if len(durations) % 50 == 0:
            logger.info("mkt: %d stores added", len(durations))
    return durations


def add_stores_in_bulk(configs) -> tuple[float, float]:
    """Register configs, then create all their deployments with one sync.

    Returns the seconds spent registering (database and MLflow) and syncing.
    """
    from mkt.catalog import register_store
    from mkt.config_registry import record_config_version
    from mkt.flows.context import open_database
    from mkt.settings import Settings
    from mkt.workers.deployments import run_sync

    settings = Settings()
    engine = open_database(settings)
    started = time.perf_counter()
    for count, config in enumerate(configs, start=1):
        register_store(engine, config)
        record_config_version(settings, config)
        if count % 50 == 0:
            logger.info("bulk: %d stores registered", count)
    registered = time.perf_counter()
    run_sync(configs, store_ids={config.store_id for config in configs})
    return registered - started, time.perf_counter() - registered


def idle_sync_seconds(configs) -> tuple[float, int]:
    """Time one full sync that finds nothing to change; return seconds and unchanged count."""
    from mkt.workers.deployments import run_sync

    run_sync(configs)  # creates the scheduled sync deployment itself, once
    started = time.perf_counter()
    plan = run_sync(configs)
    elapsed = time.perf_counter() - started
    if not plan.is_empty:
        raise RuntimeError(f"idle sync was not idle: {plan.describe()[:5]}")
    return elapsed, plan.unchanged


def deploy_with_prefect_api(store_ids: list[str]) -> list[float]:
    """Create the same five deployments per store with Prefect's deploy API, one by one."""
    from mkt.flows.crawl import crawl_store
    from mkt.flows.embed import embed_store
    from mkt.flows.evaluate import evaluate_store
    from mkt.flows.monitor import monitor_store
    from mkt.flows.train import train_store

    durations = []
    for store_id in store_ids:
        started = time.perf_counter()
        for flow, schedule, extra in (
            (crawl_store, {"interval": 6 * 3600}, {}),
            (embed_store, {}, {}),
            (train_store, {"cron": "0 3 * * 0"}, {}),
            (evaluate_store, {}, {}),
            (monitor_store, {"interval": 3600}, {"retrain": True}),
        ):
            deployment = flow.to_deployment(
                name=f"{store_id}",
                parameters={"store_id": store_id, **extra},
                work_pool_name="mkt-process",
                tags=[f"store:{store_id}"],
                concurrency_limit=1,
                entrypoint_type="module_path",
                **schedule,
            )
            deployment.apply()
        durations.append(time.perf_counter() - started)
    return durations


def percentile(values: list[float], fraction: float) -> float:
    """Return a percentile of a list by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine_line() -> str:
    """Describe the CPU, cores, memory and Python of this machine."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1]) for line in open("/proc/meminfo") if "MemTotal" in line
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory_kb / 2**20:.0f} GiB RAM, "
        f"Python {platform.python_version()}"
    )


def report(store_count: int, mkt_times, prefect_times, bulk, idle_s, unchanged) -> str:
    """Render the results as a markdown section."""
    import prefect

    timed = len(mkt_times)
    mkt_total, prefect_total = sum(mkt_times), sum(prefect_times)
    bulk_count = store_count - timed
    register_s, sync_s = bulk
    lines = [
        f"Machine: {machine_line()}; Prefect {prefect.__version__} server on SQLite.",
        "",
        "| measure | mkt | Prefect deploy API | ratio |",
        "|---|---|---|---|",
        f"| add {timed} stores one by one, total s | {mkt_total:.1f} | "
        f"{prefect_total:.1f} | {prefect_total / mkt_total:.2f}x |",
        f"| per store, median s | {percentile(mkt_times, 0.5):.3f} | "
        f"{percentile(prefect_times, 0.5):.3f} | |",
        f"| per store, p95 s | {percentile(mkt_times, 0.95):.3f} | "
        f"{percentile(prefect_times, 0.95):.3f} | |",
    ]
    if bulk_count:
        lines += [
            f"| register {bulk_count} more configs (database + MLflow), s | "
            f"{register_s:.1f} | - | |",
            f"| one sync creating their {bulk_count * 5} deployments, s | {sync_s:.1f} "
            f"| - | |",
        ]
    lines += [
        f"| idle sync of all {unchanged} deployments ({store_count} stores), s "
        f"| {idle_s:.2f} | - | |",
        "",
        "mkt's per-store time includes writing the config to the database and recording "
        "its version in MLflow; the Prefect column only creates deployments.",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print (or write) the markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=500, help="Stores to register.")
    parser.add_argument(
        "--timed", type=int, default=50, help="Stores added one by one and timed each."
    )
    parser.add_argument(
        "--output", type=Path, help="Also write the results to this file."
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mkt").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # SIGTERM ends the run through the finally blocks, so the Prefect server stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="mkt-bench-") as scratch:
        folder = Path(scratch)
        server, api_url = start_prefect_server(folder)
        os.environ.update(PREFECT_API_URL=api_url, MKT_HOME=str(folder / "home"))
        try:
            products = folder / "products.csv"
            products.write_text("title,category_id\nx,1\n")
            configs = [
                store_config(f"bench-{i:04d}", products)
                for i in range(arguments.stores)
            ]
            timed = min(arguments.timed, arguments.stores)
            logger.info("Adding %d stores one by one with mkt", timed)
            mkt_times = add_stores_with_mkt(configs[:timed])
            logger.info("Adding %d stores in bulk", arguments.stores - timed)
            bulk = (
                add_stores_in_bulk(configs[timed:]) if timed < len(configs) else (0, 0)
            )
            idle_s, unchanged = idle_sync_seconds(configs)
            logger.info(
                "Creating %d stores' deployments with Prefect's deploy API", timed
            )
            prefect_ids = [f"prefect-{i:04d}" for i in range(timed)]
            prefect_times = deploy_with_prefect_api(prefect_ids)
        finally:
            server.terminate()
            server.wait(timeout=30)

    text = report(arguments.stores, mkt_times, prefect_times, bulk, idle_s, unchanged)
    sys.stdout.write(text + "\n")
    if arguments.output:
        arguments.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
