"""Threads around the server: periodic work beside requests, and a server in a thread."""

import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from mkt.errors import MktError

logger = logging.getLogger(__name__)


class PeriodicWorker:
    """Call an action every `interval_s` seconds in a daemon thread until stopped.

    A failing action is logged and tried again at the next interval.
    """

    def __init__(self, name: str, interval_s: float, action: Callable[[], object]):
        self.name = name
        self.interval_s = interval_s
        self.action = action
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"mkt-{name}", daemon=True
        )

    def start(self) -> None:
        """Start calling the action."""
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the current call, waiting at most `timeout_s` for it to end."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.action()
            except MktError as exc:
                logger.error(
                    "%s failed: %s; next try in %.0f s", self.name, exc, self.interval_s
                )
            except Exception:
                logger.exception(
                    "%s failed; next try in %.0f s", self.name, self.interval_s
                )


class ServerThread:
    """Run an ASGI app with uvicorn in a thread of this process, on a free local port.

    Use it as a context manager: the server is up when the block starts and stopped when
    it ends. Tests and benchmarks use it to talk to a real server over HTTP.
    """

    def __init__(
        self, app, *, host: str = "127.0.0.1", startup_timeout_s: float = 60.0
    ) -> None:
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        # asyncio turns Nagle's algorithm off only on sockets whose protocol is
        # IPPROTO_TCP; with the default 0, a response body waits ~40 ms for the
        # client's delayed ACK of the headers.
        self._socket = socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._socket]},
            name="mkt-server",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. http://127.0.0.1:40123."""
        return f"http://{self.host}:{self._socket.getsockname()[1]}"

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(
                    f"Server at {self.url} did not start within {self.startup_timeout_s} s"
                )
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self._thread.join(self.startup_timeout_s)
        self._socket.close()
