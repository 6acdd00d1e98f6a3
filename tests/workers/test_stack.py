"""`mkt up` starts the local stack for real and stops all of it on one signal."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_line(process, pattern: str, timeout_s: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if pattern in line:
            return lines
    raise AssertionError(
        f"{pattern!r} not printed; output so far: {''.join(lines)[-2000:]}"
    )


def test_up_serves_and_stops_on_sigterm(tmp_path):
    prefect_port, mlflow_port = free_port(), free_port()
    environment = {
        **os.environ,
        "MKT_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    environment.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "mkt.cli.main", "up"]
    command += ["--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)]
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "up.err", "w"),
        text=True,
    )

    try:
        wait_for_line(process, "MLflow UI", timeout_s=240)
        prefect_health = urllib.request.urlopen(
            f"http://127.0.0.1:{prefect_port}/api/health", timeout=10
        )
        mlflow_health = urllib.request.urlopen(
            f"http://127.0.0.1:{mlflow_port}/health", timeout=10
        )
        assert prefect_health.status == 200
        assert mlflow_health.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)

    assert exit_code == 0
    assert not is_listening(prefect_port)
    assert not is_listening(mlflow_port)
    logged = (tmp_path / "up.err").read_text()
    child_pids = [int(pid) for pid in re.findall(r"\(PID (\d+)\)", logged)]
    assert len(set(child_pids)) == 3, logged
    for pid in child_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
