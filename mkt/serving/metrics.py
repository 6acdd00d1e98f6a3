"""Prometheus metrics of one server app, in a registry of its own.

Each app gets its own `CollectorRegistry`, so several apps in one process (tests, or a
server embedded in another program) never register the same metric twice.
"""

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mkt.serving_stats import SCORE_BIN_EDGES

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    """Counters, histograms and gauges of classify requests and loaded classifiers."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._add_request_metrics()
        self._add_classifier_metrics()

    def _add_request_metrics(self) -> None:
        store = ["store_id"]
        self.requests = Counter(
            "mkt_classify_requests",
            "Classify requests served with a result.",
            store,
            registry=self.registry,
        )
        self.names = Counter(
            "mkt_classify_names", "Names classified.", store, registry=self.registry
        )
        self.abstained = Counter(
            "mkt_classify_abstained_names",
            "Names whose top score was under the store's abstain threshold.",
            store,
            registry=self.registry,
        )
        self.rejected = Counter(
            "mkt_classify_rejected_requests",
            "Requests that got an error response, by reason.",
            ["reason"],
            registry=self.registry,
        )

        self.latency = Histogram(
            "mkt_classify_latency_seconds",
            "Time from a classify request's arrival to its response, without the network.",
            store,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.top_score = Histogram(
            "mkt_classify_top_score",
            "Top candidate's score per classified name.",
            store,
            buckets=SCORE_BIN_EDGES[1:],
            registry=self.registry,
        )
        self.embedding_cache = Counter(
            "mkt_embedding_cache_lookups",
            "Names looked up in the embedding cache, by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )

    def _add_classifier_metrics(self) -> None:
        store = ["store_id"]
        self.served_version = Gauge(
            "mkt_classifier_served_version",
            "Classifier version a loaded store classifies with; absent when not loaded.",
            store,
            registry=self.registry,
        )
        self.load_failures = Counter(
            "mkt_classifier_load_failures",
            "Classifier versions that failed to load.",
            store,
            registry=self.registry,
        )
        self.has_load_error = Gauge(
            "mkt_classifier_load_error",
            "1 while the store's current @champion version failed to load, else 0.",
            store,
            registry=self.registry,
        )

        self.unloads = Counter(
            "mkt_classifier_unloads",
            "Classifiers unloaded to stay within the memory budget.",
            store,
            registry=self.registry,
        )
        self.memory_bytes = Gauge(
            "mkt_classifier_memory_bytes",
            "Estimated bytes of the loaded classifiers and their embedding models.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)
