"""A local marketplace API for connector and crawl tests, served on 127.0.0.1.

It lists a small category tree and pages of products per category, by cursor, page
number or offset, and injects the faults real APIs show: 429s with Retry-After, 500s,
slow responses and malformed pages. Faults are drawn from a seeded generator, and no
request fails more than `max_consecutive_faults` times in a row, so retries always win.
"""

import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TREE = [
    {"id": "1", "name": "Electronics", "parent_id": None},
    {"id": "11", "name": "Phones", "parent_id": "1"},
    {"id": "12", "name": "Laptops", "parent_id": "1"},
    {"id": "13", "name": "Cameras", "parent_id": "1"},
    {"id": "2", "name": "Home", "parent_id": None},
    {"id": "21", "name": "Lamps", "parent_id": "2"},
    {"id": "22", "name": "Kettles", "parent_id": "2"},
    {"id": "23", "name": "Chairs", "parent_id": "2"},
]


def build_catalogue(per_category: int) -> dict[str, list[dict]]:
    """Return products per leaf category with stable ids and distinct titles."""
    leaves = [item for item in TREE if item["parent_id"] is not None]
    return {
        leaf["id"]: [
            {"id": f"p{leaf['id']}-{i:04d}", "title": f"{leaf['name']} model {i}"}
            for i in range(per_category)
        ]
        for leaf in leaves
    }


@dataclass
class Faults:
    """Shares of requests that get each fault, and how they behave."""

    too_many_requests: float = 0.0
    server_error: float = 0.0
    slow: float = 0.0
    malformed: float = 0.0
    slow_s: float = 0.05
    delay_s: float = 0.0
    max_consecutive_faults: int = 2
    seed: int = 7


@dataclass
class MarketplaceServer:
    """The server, its catalogue and counts of the responses it sent by kind."""

    catalogue: dict[str, list[dict]]
    faults: Faults = field(default_factory=Faults)
    token: str | None = None
    tree: list[dict] = field(default_factory=lambda: list(TREE))
    redirects: dict[str, str] = field(default_factory=dict)
    responses: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._random = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._fault_streaks: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the API."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "MarketplaceServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, kind: str) -> None:
        with self._lock:
            self.responses[kind] = self.responses.get(kind, 0) + 1

    def draw_fault(self, key: str) -> str | None:
        """Pick the fault of one request, or None; never more than the streak allows."""
        faults = self.faults
        with self._lock:
            if self._fault_streaks.get(key, 0) >= faults.max_consecutive_faults:
                self._fault_streaks[key] = 0
                return None
            draw = self._random.random()
            kind = None
            for name, share in (
                ("429", faults.too_many_requests),
                ("500", faults.server_error),
                ("slow", faults.slow),
                ("malformed", faults.malformed),
            ):
                if draw < share:
                    kind = name
                    break
                draw -= share
            self._fault_streaks[key] = (
                self._fault_streaks.get(key, 0) + 1 if kind else 0
            )
            return kind

    def products_page(self, category_id: str, query: dict[str, str]) -> dict:
        """Return the page of a category that the query asks for."""
        items = self.catalogue[category_id]
        limit = int(query.get("limit", "10"))
        if "page" in query:
            start = (int(query["page"]) - 1) * limit
        elif "offset" in query:
            start = int(query["offset"])
        else:
            start = int(query.get("cursor", "c0").removeprefix("c"))
        end = start + limit
        next_cursor = f"c{end}" if end < len(items) else None
        return {"products": items[start:end], "next_cursor": next_cursor}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {
                    key: values[0] for key, values in parse_qs(parts.query).items()
                }
                if (
                    server.token
                    and self.headers.get("Authorization") != f"Bearer {server.token}"
                ):
                    server.count("401")
                    return self._send(401, b'{"error": "unauthorized"}')
                time.sleep(server.faults.delay_s)
                fault = server.draw_fault(self.path)
                if fault == "429":
                    server.count("429")
                    return self._send(429, b"{}", {"Retry-After": "0"})
                if fault == "500":
                    server.count("500")
                    return self._send(500, b"internal error")
                if fault == "slow":
                    server.count("slow")
                    time.sleep(server.faults.slow_s)
                if fault == "malformed":
                    server.count("malformed")
                    return self._send(200, b'{"products": [{"id": "x", "ti')
                body = self._route(parts.path, query)
                if body is None:
                    server.count("404")
                    return self._send(404, b'{"error": "not found"}')
                server.count("200")
                self._send(200, json.dumps(body).encode())

            def _route(self, path: str, query: dict[str, str]) -> dict | None:
                segments = path.strip("/").split("/")
                if segments == ["categories"]:
                    return {"categories": server.tree}
                if segments == ["redirects"]:
                    return {
                        "redirects": [
                            {"id": source, "redirect_to": target}
                            for source, target in server.redirects.items()
                        ]
                    }
                if segments == ["tree"]:
                    return {"root": nested_tree()}
                if (
                    len(segments) == 3
                    and segments[0] == "categories"
                    and segments[2] == "products"
                    and segments[1] in server.catalogue
                ):
                    return server.products_page(segments[1], query)
                return None

            def _send(
                self, status: int, body: bytes, headers: dict | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        return Handler


def nested_tree() -> list[dict]:
    """Return the tree as nested nodes with `children` lists."""
    nodes = {
        item["id"]: {"id": item["id"], "name": item["name"], "children": []}
        for item in TREE
    }
    roots = []
    for item in TREE:
        if item["parent_id"] is None:
            roots.append(nodes[item["id"]])
        else:
            nodes[item["parent_id"]]["children"].append(nodes[item["id"]])
    return roots


def http_options(server: MarketplaceServer, **overrides) -> dict:
    """Return http connector options for the server, fast to retry."""
    return {
        "base_url": server.url,
        "page_size": 7,
        "timeout_s": 5.0,
        "max_retries": 6,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "requests_per_s": 1000.0,
        **overrides,
    }
