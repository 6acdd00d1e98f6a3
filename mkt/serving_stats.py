"""Per-store serving statistics in time windows, for the monitor.

The server records each classify request in a `ServingStatsRecorder` and flushes one
`ServingWindow` row per store and classifier version every few seconds. The monitor reads
the rows back with `load_serving_windows` and compares them with the evaluation baseline.
"""

import logging
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import JSON, Column, Engine
from sqlmodel import Field, SQLModel, col, select

from mkt.database import open_session, utc_now

logger = logging.getLogger(__name__)

# Ten bins of width 0.1 over [0, 1]; the last bin includes 1.0.
SCORE_BIN_EDGES: tuple[float, ...] = tuple(i / 10 for i in range(11))
CENTROID_DECIMALS = 6


class ServingWindow(SQLModel, table=True):
    """Statistics of one store's classifier version over one time window."""

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    classifier_version: str
    window_start: datetime = Field(index=True)
    window_end: datetime
    request_count: int
    name_count: int
    abstain_count: int
    score_histogram: list[int] = Field(
        sa_column=Column(JSON, nullable=False),
        description="Names per top-score bin; the bins are SCORE_BIN_EDGES.",
    )
    latency_p50_ms: float
    latency_p99_ms: float
    centroid: list[float] = Field(
        sa_column=Column(JSON, nullable=False),
        description="Mean of the embeddings of the names served in the window.",
    )


@dataclass
class WindowAccumulator:
    """Running totals of one store and classifier version since the window started."""

    started_at: datetime
    request_count: int = 0
    name_count: int = 0
    abstain_count: int = 0
    score_counts: np.ndarray = field(
        default_factory=lambda: np.zeros(len(SCORE_BIN_EDGES) - 1, dtype=np.int64)
    )
    latencies_ms: array = field(default_factory=lambda: array("d"))
    embedding_sum: np.ndarray | None = None
    # Empty names are answered without an embedding, so fewer rows than names are summed.
    embedding_count: int = 0

    def add(
        self,
        *,
        latency_s: float,
        top_scores: Sequence[float],
        abstain_count: int,
        embeddings: np.ndarray,
    ) -> None:
        """Add one classify request."""
        self.request_count += 1
        self.name_count += len(top_scores)
        self.abstain_count += abstain_count
        clipped = np.clip(np.asarray(top_scores, dtype=np.float64), 0.0, 1.0)
        self.score_counts += np.histogram(clipped, bins=SCORE_BIN_EDGES)[0]
        self.latencies_ms.append(latency_s * 1000.0)
        if len(embeddings) == 0:
            return
        self.embedding_count += len(embeddings)
        total = embeddings.sum(axis=0, dtype=np.float64)
        self.embedding_sum = (
            total if self.embedding_sum is None else self.embedding_sum + total
        )

    def merge(self, other: "WindowAccumulator") -> None:
        """Add the totals of another window of the same store and version."""
        self.started_at = min(self.started_at, other.started_at)
        self.request_count += other.request_count
        self.name_count += other.name_count
        self.abstain_count += other.abstain_count
        self.score_counts += other.score_counts
        self.latencies_ms.extend(other.latencies_ms)
        self.embedding_count += other.embedding_count
        if other.embedding_sum is not None:
            self.embedding_sum = (
                other.embedding_sum.copy()
                if self.embedding_sum is None
                else self.embedding_sum + other.embedding_sum
            )

    def to_row(
        self, store_id: str, classifier_version: str, ended_at: datetime
    ) -> ServingWindow:
        """Return the window as a table row."""
        latencies = np.frombuffer(self.latencies_ms, dtype=np.float64)
        centroid = (
            self.embedding_sum / self.embedding_count
            if self.embedding_sum is not None
            else np.zeros(0)
        )
        return ServingWindow(
            store_id=store_id,
            classifier_version=classifier_version,
            window_start=self.started_at,
            window_end=ended_at,
            request_count=self.request_count,
            name_count=self.name_count,
            abstain_count=self.abstain_count,
            score_histogram=[int(count) for count in self.score_counts],
            latency_p50_ms=float(np.percentile(latencies, 50))
            if len(latencies)
            else 0.0,
            latency_p99_ms=float(np.percentile(latencies, 99))
            if len(latencies)
            else 0.0,
            centroid=[round(float(value), CENTROID_DECIMALS) for value in centroid],
        )


class ServingStatsRecorder:
    """Collect per-store serving statistics in memory until they are flushed to the database.

    Many request threads call `record` at once, so every access to the open windows
    holds a lock. `flush` swaps the open windows out and writes them without the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], WindowAccumulator] = {}

    def record(
        self,
        store_id: str,
        classifier_version: str,
        *,
        latency_s: float,
        top_scores: Sequence[float],
        abstain_count: int,
        embeddings: np.ndarray,
    ) -> None:
        """Add one classify request to the store's open window."""
        key = (store_id, classifier_version)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = WindowAccumulator(started_at=utc_now())
            window.add(
                latency_s=latency_s,
                top_scores=top_scores,
                abstain_count=abstain_count,
                embeddings=embeddings,
            )

    def flush(self, engine: Engine) -> int:
        """Write the open windows as `ServingWindow` rows, start new ones; return the row count.

        If the write fails, the windows are kept and merged into the next flush, so no
        request is lost while the database is briefly unavailable.
        """
        with self._lock:
            windows, self._windows = self._windows, {}
        if not windows:
            return 0

        ended_at = utc_now()
        rows = [
            window.to_row(store_id, version, ended_at)
            for (store_id, version), window in windows.items()
        ]
        try:
            ensure_serving_table(engine)
            with open_session(engine) as session:
                session.add_all(rows)
                session.commit()
        except Exception:
            self._restore(windows)
            raise
        logger.debug("Serving statistics: %d windows written", len(rows))
        return len(rows)

    def _restore(self, windows: dict[tuple[str, str], WindowAccumulator]) -> None:
        with self._lock:
            for key, window in windows.items():
                newer = self._windows.get(key)
                if newer is not None:
                    window.merge(newer)
                self._windows[key] = window


def ensure_serving_table(engine: Engine) -> None:
    """Create the `servingwindow` table if the database does not have it yet."""
    ServingWindow.__table__.create(engine, checkfirst=True)


def load_serving_windows(
    engine: Engine, store_id: str, since: datetime
) -> list[ServingWindow]:
    """Return a store's serving windows that started at or after `since`, oldest first.

    A naive `since` is taken as UTC. The returned times are timezone-aware UTC on every
    database, although SQLite stores them without a zone.
    """
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    ensure_serving_table(engine)
    statement = (
        select(ServingWindow)
        .where(ServingWindow.store_id == store_id)
        .where(ServingWindow.window_start >= since.astimezone(UTC))
        .order_by(col(ServingWindow.window_start), col(ServingWindow.id))
    )
    with open_session(engine) as session:
        rows = list(session.exec(statement).all())
    for row in rows:
        row.window_start = as_utc(row.window_start)
        row.window_end = as_utc(row.window_end)
    return rows


def as_utc(moment: datetime) -> datetime:
    """Return a datetime as timezone-aware UTC, taking a naive one as UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
