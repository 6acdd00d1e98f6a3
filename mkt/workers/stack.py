"""The local stack behind `mkt up`: a Prefect server, a process worker and the MLflow UI.

The children run in their own sessions, so a Ctrl-C reaches only mkt, which then stops
each of them with SIGTERM (SIGKILL after a grace period). Started from Python this way, a
Prefect worker also receives the signal, which it ignores as a background job of a
non-interactive shell.
"""

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mkt.errors import MktError
from mkt.settings import Settings

logger = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
HEALTH_POLL_S = 0.5


@dataclass
class StackPorts:
    """Loopback ports of the stack's services."""

    prefect: int = 4200
    mlflow: int = 5000


@dataclass
class Stack:
    """The running children of `mkt up`, in start order."""

    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop every child: SIGTERM, then SIGKILL after the grace period."""
        for name, process in reversed(self.processes.items()):
            if process.poll() is None:
                logger.info("Stopping %s (PID %d)", name, process.pid)
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (PID %d) ignored SIGTERM; killing it", name, process.pid
                )
                process.kill()
                process.wait()

    def first_exited(self) -> str | None:
        """Return the name of a child that has exited, or None while all run."""
        return next(
            (n for n, p in self.processes.items() if p.poll() is not None), None
        )


def stack_environment(settings: Settings, ports: StackPorts) -> dict[str, str]:
    """Return the environment shared by the children, pointing them at each other."""
    environment = dict(os.environ)
    environment.setdefault("PREFECT_HOME", str(settings.home_dir / "prefect"))
    environment["PREFECT_API_URL"] = f"http://127.0.0.1:{ports.prefect}/api"
    environment["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # Few future runs per deployment keep the scheduler light with hundreds of stores.
    environment.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS", "1")
    environment.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS", "2")
    environment["MKT_HOME"] = str(settings.home_dir)
    return environment


def start_child(
    stack: Stack, name: str, command: list[str], environment, log_dir: Path
):
    """Start one child in its own session, logging to a file in the data directory."""
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - the child keeps it open while it runs
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.processes[name] = process
    logger.info("Started %s (PID %d), log: %s", name, process.pid, log_path)
    return process


def wait_until_healthy(url: str, stack: Stack, timeout_s: float) -> None:
    """Poll a URL until it answers 200.

    Raises:
        MktError: if a child exits or the URL does not answer within the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exited = stack.first_exited()
        if exited is not None:
            raise MktError(
                f"{exited} exited during start-up; see its log in MKT_HOME/logs."
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(HEALTH_POLL_S)
    raise MktError(
        f"{url} did not answer within {timeout_s:.0f} s; see the logs in MKT_HOME/logs."
    )


def start_stack(
    settings: Settings, ports: StackPorts, *, startup_timeout_s: float = 180.0
) -> Stack:
    """Start the Prefect server, sync deployments, then start the worker and the MLflow UI."""
    from mkt.workers.pools import PROCESS_POOL

    settings.ensure_home()
    log_dir = settings.home_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    environment = stack_environment(settings, ports)
    prefect = [sys.executable, "-m", "prefect"]
    stack = Stack()
    try:
        start_child(
            stack,
            "prefect-server",
            [
                *prefect,
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports.prefect),
            ],
            environment,
            log_dir,
        )
        wait_until_healthy(
            f"http://127.0.0.1:{ports.prefect}/api/health", stack, startup_timeout_s
        )
        sync_all_stores(environment)

        worker = [
            *prefect,
            "worker",
            "start",
            "--pool",
            PROCESS_POOL,
            "--type",
            "process",
        ]
        start_child(stack, "prefect-worker", worker, environment, log_dir)
        mlflow = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        mlflow += ["--port", str(ports.mlflow)]
        mlflow += ["--backend-store-uri", settings.resolved_mlflow_tracking_uri]
        start_child(stack, "mlflow-ui", mlflow, environment, log_dir)
        wait_until_healthy(
            f"http://127.0.0.1:{ports.mlflow}/health", stack, startup_timeout_s
        )
    except BaseException:
        stack.stop()
        raise
    return stack


def sync_all_stores(environment: dict[str, str]) -> None:
    """Create the work pools and sync every store's deployments on the new server."""
    subprocess.run(
        [sys.executable, "-m", "mkt.cli.main", "sync"],
        env=environment,
        check=True,
        timeout=300,
    )


def run_until_signal(stack: Stack) -> str:
    """Block until SIGINT or SIGTERM arrives or a child exits; return why it stopped."""
    reason = []

    def on_signal(signum, _frame) -> None:
        reason.append(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not reason:
            exited = stack.first_exited()
            if exited is not None:
                reason.append(f"{exited} exited")
                break
            time.sleep(HEALTH_POLL_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return reason[0]
