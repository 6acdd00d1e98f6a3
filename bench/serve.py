"""Measure the latency and throughput of `mkt serve` on the PriceRunner sample store.

Trains the sample store in a temporary data directory (or reuses `--home`) and starts
`mkt serve` as a separate process on a free 127.0.0.1 port. One client with a keep-alive
connection then sends a bounded load: a fixed number of requests per scenario, and each
scenario stops early at a time cap. Every request is sent only after the previous
response arrived, so latencies are not inflated by queueing. The report (machine,
scenarios, targets) goes to stdout as markdown, logs go to stderr. From the repository
root:

    .venv/bin/python -m bench.serve --output /tmp/serve.md
    .venv/bin/python -m bench.serve --home /tmp/bench-home --single-requests 100

`--embedding-model`, given once or more, replaces the sample store's encoder. Each value
is measured in turn, one server at a time, in its own subfolder of the data directory,
and the report ends with a table that compares them:

    .venv/bin/python -m bench.serve --home /tmp/bench-home \
        --embedding-model onnx-int8:sentence-transformers/all-MiniLM-L6-v2 \
        --embedding-model static:sentence-transformers/all-MiniLM-L6-v2
"""

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import yaml

from bench.report import Column, describe_machine, render_table

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE_ID = "pricerunner-sample"
STORE_CONFIG = REPO_ROOT / "examples" / "pricerunner" / "store.yaml"
PRODUCTS = REPO_ROOT / "examples" / "pricerunner" / "products.csv"
SERVER_START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 120.0
REPEATED_NAME_COUNT = 16
SINGLE_P50_TARGET_MS = 10.0
BATCH_TARGET_NAMES_PER_S = 1000.0

RESULT_COLUMNS: list[Column] = [
    ("Scenario", "scenario", ""),
    ("Names per request", "batch_size", ""),
    ("Requests", "request_count", ","),
    ("Names", "name_count", ","),
    ("Errors", "error_count", ","),
    ("p50 latency (ms)", "p50_ms", ".1f"),
    ("p99 latency (ms)", "p99_ms", ".1f"),
    ("Names/s", "names_per_s", ",.0f"),
]
ENCODER_COLUMNS: list[Column] = [
    ("Embedding model", "embedding_model", ""),
    ("Single-name p50, new names (ms)", "single_p50_ms", ".1f"),
    ("Batch names/s, new names", "batch_names_per_s", ",.0f"),
    ("Server RSS (MB)", "rss_mb", ",.0f"),
]


@dataclass
class Scenario:
    """One bounded load: how many requests of how many names, new or repeated ones."""

    name: str
    batch_size: int
    request_count: int
    is_repeated: bool


@dataclass
class LoadResult:
    """Client-side measurements of one scenario."""

    scenario: str
    batch_size: int
    request_count: int
    name_count: int
    error_count: int
    p50_ms: float
    p99_ms: float
    names_per_s: float
    is_time_capped: bool


def run_cli(home: Path, *args: str) -> None:
    """Run one `mkt` command with the data directory at `home`, failing on errors."""
    command = [sys.executable, "-m", "mkt.cli.main", *args]
    logger.info("Running: mkt %s", " ".join(args))
    subprocess.run(command, env=environment(home), check=True, cwd=REPO_ROOT)


def environment(home: Path) -> dict[str, str]:
    """Return this process's environment with every mkt setting pointed at `home`."""
    variables = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MKT_DATABASE_URL", "MKT_MLFLOW_TRACKING_URI", "MKT_API_TOKEN")
    }
    return {**variables, "MKT_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def train_sample_store(home: Path, embedding_model: str | None) -> float:
    """Register and train the sample store unless `home` has its classifier; return seconds.

    Args:
        home: The data directory.
        embedding_model: Replaces the store file's `embedding_model`; None keeps it.
    """
    started = time.perf_counter()
    if (home / "mlflow.db").exists():
        logger.info("Reusing the trained store in %s", home)
        return 0.0
    config_path = STORE_CONFIG
    if embedding_model is not None:
        config_path = write_store_config(home, embedding_model)
    run_cli(home, "add-store", STORE_ID, "--config", str(config_path))
    run_cli(home, "run", STORE_ID)
    return time.perf_counter() - started


def write_store_config(home: Path, embedding_model: str) -> Path:
    """Write a copy of the sample store file with another `embedding_model`; return it."""
    document = yaml.safe_load(STORE_CONFIG.read_text())
    document["embedding_model"] = embedding_model
    # The copy lives elsewhere, so its products path must not depend on its folder.
    document["connector"]["options"]["products"] = str(PRODUCTS)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "store.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def store_embedding_model() -> str:
    """Return the `embedding_model` of the sample store file."""
    return yaml.safe_load(STORE_CONFIG.read_text())["embedding_model"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home: Path, port: int) -> subprocess.Popen:
    """Start `mkt serve` on a port and wait until /health responds."""
    command = [sys.executable, "-m", "mkt.cli.main", "serve", "--port", str(port)]
    command += ["--no-access-log"]
    process = subprocess.Popen(
        command, env=environment(home), cwd=REPO_ROOT, start_new_session=True
    )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mkt serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(process)
    raise RuntimeError(f"mkt serve did not start within {SERVER_START_TIMEOUT_S} s")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server's process group, waiting for a clean shutdown first."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def server_rss_mb(process: subprocess.Popen) -> float | None:
    """Return the resident memory of the server process in MB, if /proc has it."""
    try:
        lines = Path(f"/proc/{process.pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def machine_cpu_s() -> tuple[float, float]:
    """Return the busy and total CPU seconds of all cores since boot, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    idle = fields[3] + fields[4]
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks_per_s, sum(fields) / ticks_per_s


def process_cpu_s(pid: int) -> float:
    """Return the user and system CPU seconds a process has used, from /proc."""
    # Fields 14 and 15 of /proc/PID/stat; the command name before them may hold spaces.
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s(server_pid: int) -> float:
    """Return the CPU seconds used so far by this benchmark and its server."""
    times = os.times()
    return times.user + times.system + process_cpu_s(server_pid)


def load_names(seed: int) -> list[str]:
    """Return the sample's distinct product names in a seeded random order."""
    frame = pd.read_csv(PRODUCTS, dtype=str, keep_default_na=False)
    names = list(dict.fromkeys(frame["title"].str.strip()))
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order]


def run_scenario(
    client: httpx.Client,
    scenario: Scenario,
    names: list[str],
    *,
    time_cap_s: float,
) -> LoadResult:
    """Send the scenario's requests one after another and measure them.

    A new-names scenario takes its names from `names`, after the repeated ones, and
    removes them, so no later scenario sends them again and every name misses the
    server's cache.
    """
    latencies_ms: list[float] = []
    error_count = name_count = 0
    url = f"/stores/{STORE_ID}/classify"
    repeated = names[:REPEATED_NAME_COUNT]
    if scenario.is_repeated:
        # Untimed, so every timed request finds its names in the server's cache.
        client.post(url, json={"names": repeated}).raise_for_status()
    started = time.perf_counter()
    for i in range(scenario.request_count):
        if time.perf_counter() - started > time_cap_s:
            break
        batch = pick_batch(scenario, names, repeated, i)
        sent = time.perf_counter()
        try:
            response = client.post(url, json={"names": batch, "top_k": 3})
            is_ok = response.status_code == 200
        except httpx.HTTPError as exc:
            logger.warning("Request %d of %r failed: %s", i, scenario.name, exc)
            is_ok = False
        latencies_ms.append((time.perf_counter() - sent) * 1000)
        error_count += not is_ok
        name_count += len(batch)
    elapsed_s = time.perf_counter() - started

    return LoadResult(
        scenario=scenario.name,
        batch_size=scenario.batch_size,
        request_count=len(latencies_ms),
        name_count=name_count,
        error_count=error_count,
        p50_ms=float(np.percentile(latencies_ms, 50)),
        p99_ms=float(np.percentile(latencies_ms, 99)),
        names_per_s=name_count / elapsed_s,
        is_time_capped=len(latencies_ms) < scenario.request_count,
    )


def pick_batch(
    scenario: Scenario, names: list[str], repeated: list[str], position: int
) -> list[str]:
    """Return the next request's names: fresh ones taken off `names`, or repeated ones."""
    if scenario.is_repeated:
        start = (position * scenario.batch_size) % len(repeated)
        return [
            repeated[(start + i) % len(repeated)] for i in range(scenario.batch_size)
        ]
    if len(names) < scenario.batch_size + REPEATED_NAME_COUNT:
        raise RuntimeError("the sample ran out of new names; lower the request counts")
    batch = names[REPEATED_NAME_COUNT : REPEATED_NAME_COUNT + scenario.batch_size]
    del names[REPEATED_NAME_COUNT : REPEATED_NAME_COUNT + scenario.batch_size]
    return batch


def connect(port: int) -> httpx.Client:
    """Return a keep-alive client with Nagle's algorithm off, as latency tests need."""
    transport = httpx.HTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    )
    return httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        transport=transport,
        timeout=REQUEST_TIMEOUT_S,
    )


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    """Return the four scenarios: single names and batches, new and repeated names."""
    single, batch = args.single_requests, args.batch_requests
    return [
        Scenario("single name, new names", 1, single, is_repeated=False),
        Scenario("single name, repeated names", 1, single, is_repeated=True),
        Scenario("batch, new names", args.batch_size, batch, is_repeated=False),
        Scenario("batch, repeated names", args.batch_size, batch, is_repeated=True),
    ]


def measure(args: argparse.Namespace, home: Path, embedding_model: str | None) -> dict:
    """Train the store if needed, serve it and run every scenario; return the figures."""
    train_s = train_sample_store(home, embedding_model)
    names = load_names(args.seed)
    port = free_port()
    process = start_server(home, port)
    try:
        with connect(port) as client:
            started = time.perf_counter()
            first = client.post(
                f"/stores/{STORE_ID}/classify", json={"names": [names.pop()]}
            )
            first.raise_for_status()
            first_request_s = time.perf_counter() - started
            busy_before, total_before = machine_cpu_s()
            own_before = own_cpu_s(process.pid)
            results = [
                run_scenario(client, scenario, names, time_cap_s=args.time_cap_s)
                for scenario in scenarios_of(args)
            ]
            busy_after, total_after = machine_cpu_s()
            own_s = own_cpu_s(process.pid) - own_before
        rss_mb = server_rss_mb(process)
    finally:
        stop_server(process)
    return {
        "embedding_model": embedding_model or store_embedding_model(),
        "train_s": train_s,
        "first_request_s": first_request_s,
        "rss_mb": rss_mb,
        "results": results,
        # Timings are wall-clock on shared cores, so the share of the machine that
        # other processes used during the scenarios says how far to trust them.
        "others_cpu_share": max(busy_after - busy_before - own_s, 0.0)
        / (total_after - total_before),
    }


def target_line(label: str, value: float, target: float, *, is_upper: bool) -> str:
    """Return a markdown line saying whether a figure meets its target, and by how much."""
    is_met = value <= target if is_upper else value >= target
    factor = value / target if is_upper else target / value
    verdict = "met" if is_met else f"missed: {factor:.1f}x off"
    sign = "≤" if is_upper else "≥"
    return f"- {label}: {value:,.1f} against {sign} {target:,.0f} ({verdict})"


def render_report(args: argparse.Namespace, all_figures: list[dict]) -> str:
    """Return the markdown section: the machine, each encoder's results, a comparison."""
    sections = ["### Machine\n\n" + "\n".join(describe_machine()) + "\n"]
    for figures in all_figures:
        heading = "### Results"
        if len(all_figures) > 1:
            heading += f": {figures['embedding_model']}"
        sections.append(f"{heading}\n\n{render_results(args, figures)}")
    if len(all_figures) > 1:
        rows = [compare_encoder(figures) for figures in all_figures]
        table = render_table(ENCODER_COLUMNS, rows, 1)
        sections.append(f"### Embedding models compared\n\n{table}\n")
    return "\n".join(sections)


def compare_encoder(figures: dict) -> dict:
    """Return one row of the embedding model comparison."""
    by_name = {result.scenario: result for result in figures["results"]}
    return {
        "embedding_model": figures["embedding_model"],
        "single_p50_ms": by_name["single name, new names"].p50_ms,
        "batch_names_per_s": by_name["batch, new names"].names_per_s,
        "rss_mb": figures["rss_mb"],
    }


def render_results(args: argparse.Namespace, figures: dict) -> str:
    """Return the results table of one encoder, with its notes and targets."""
    results = figures["results"]
    by_name = {result.scenario: result for result in results}
    single = by_name["single name, new names"]
    batch = by_name["batch, new names"]
    capped = [result.scenario for result in results if result.is_time_capped]
    rss = figures["rss_mb"]
    lines = [
        f"- Embedding model: {figures['embedding_model']}",
        "",
        render_table(RESULT_COLUMNS, [vars(result) for result in results], 2),
        "",
        f"- Training the store with mkt add-store and mkt run: {figures['train_s']:.0f} s"
        if figures["train_s"]
        else None,
        f"- First request, which loads the classifier and the embedding model: "
        f"{figures['first_request_s']:.1f} s",
        f"- Server memory after the run (RSS): {rss:,.0f} MB" if rss else None,
        f"- CPU capacity used by other processes during the scenarios: "
        f"{figures['others_cpu_share']:.0%}",
        f"- Scenarios stopped by the {args.time_cap_s:.0f} s time cap: "
        f"{', '.join(capped) if capped else 'none'}",
        target_line(
            "Single-name p50 latency, new names (ms)",
            single.p50_ms,
            SINGLE_P50_TARGET_MS,
            is_upper=True,
        ),
        target_line(
            f"Batch throughput, {args.batch_size} new names per request (names/s)",
            batch.names_per_s,
            BATCH_TARGET_NAMES_PER_S,
            is_upper=False,
        ),
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"


def home_folder_name(embedding_model: str) -> str:
    """Return a folder name for an embedding model's data directory."""
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in embedding_model)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home", type=Path, help="Data directory to train in or reuse."
    )
    parser.add_argument("--single-requests", type=int, default=300)
    parser.add_argument("--batch-requests", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--time-cap-s", type=float, default=120.0, help="Maximum seconds per scenario."
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--embedding-model",
        action="append",
        help="Replace the sample store's embedding_model with this value. Give it "
        "more than once to measure several encoders in turn, each in its own "
        "subfolder of the data directory (default: the store file's value).",
    )
    parser.add_argument("--output", type=Path, help="Also write the report here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_arguments(argv)
    with tempfile.TemporaryDirectory(prefix="mkt-bench-serve-") as scratch:
        home = args.home or Path(scratch) / "mkt-home"
        if args.embedding_model is None:
            all_figures = [measure(args, home, None)]
        else:
            all_figures = [
                measure(args, home / home_folder_name(model), model)
                for model in args.embedding_model
            ]
    report = render_report(args, all_figures)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
