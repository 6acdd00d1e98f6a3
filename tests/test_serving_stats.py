"""Tests of the per-store serving windows that the server writes and the monitor reads."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from mkt.serving_stats import ServingStatsRecorder, load_serving_windows


def record(recorder, store_id="shop", version="1", scores=(0.95,), latency_s=0.01):
    """Record one request with a unit embedding per score."""
    embeddings = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(scores), 1))
    recorder.record(
        store_id,
        version,
        latency_s=latency_s,
        top_scores=list(scores),
        abstain_count=sum(score < 0.5 for score in scores),
        embeddings=embeddings,
    )


def test_flush_writes_one_window_per_store_and_version(engine):
    recorder = ServingStatsRecorder()
    since = datetime.now(UTC) - timedelta(seconds=1)
    record(recorder, scores=(0.95, 0.05), latency_s=0.010)
    record(recorder, scores=(1.0,), latency_s=0.030)
    record(recorder, version="2")
    record(recorder, store_id="other")

    written = recorder.flush(engine)
    windows = load_serving_windows(engine, "shop", since)

    assert written == 3
    assert [window.classifier_version for window in windows] == ["1", "2"]
    first = windows[0]
    assert first.request_count == 2
    assert first.name_count == 3
    assert first.abstain_count == 1
    assert first.score_histogram == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert first.latency_p50_ms == pytest.approx(20.0)
    assert first.latency_p99_ms == pytest.approx(29.8)
    assert first.centroid == [1.0, 0.0]
    assert first.window_end >= first.window_start >= since


def test_flush_without_requests_writes_nothing(engine):
    recorder = ServingStatsRecorder()

    assert recorder.flush(engine) == 0
    assert load_serving_windows(engine, "shop", datetime(2000, 1, 1)) == []


def test_flush_starts_a_new_window(engine):
    recorder = ServingStatsRecorder()
    record(recorder)
    recorder.flush(engine)
    record(recorder)
    record(recorder)

    recorder.flush(engine)
    windows = load_serving_windows(engine, "shop", datetime(2000, 1, 1))

    assert [window.request_count for window in windows] == [1, 2]


def test_failed_flush_keeps_windows_for_next_one(engine, tmp_path):
    recorder = ServingStatsRecorder()
    # SQLite cannot create a database file in a folder that does not exist.
    unreachable = create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    record(recorder)

    with pytest.raises(OperationalError):
        recorder.flush(unreachable)
    record(recorder)
    recorder.flush(engine)
    windows = load_serving_windows(engine, "shop", datetime(2000, 1, 1))

    assert len(windows) == 1
    assert windows[0].request_count == 2


def test_load_takes_naive_since_as_utc(engine):
    recorder = ServingStatsRecorder()
    record(recorder)
    recorder.flush(engine)
    later = datetime.now(UTC) + timedelta(hours=1)

    windows = load_serving_windows(engine, "shop", later.replace(tzinfo=None))

    assert windows == []


def test_scores_outside_unit_interval_land_in_edge_bins(engine):
    recorder = ServingStatsRecorder()
    record(recorder, scores=(-0.1, 1.2))

    recorder.flush(engine)
    window = load_serving_windows(engine, "shop", datetime(2000, 1, 1))[0]

    assert window.score_histogram[0] == 1
    assert window.score_histogram[-1] == 1


def test_centroid_averages_only_embedded_names(engine):
    recorder = ServingStatsRecorder()
    record(recorder, scores=(0.9,))
    recorder.record(
        "shop",
        "1",
        latency_s=0.01,
        top_scores=[0.0],
        abstain_count=1,
        embeddings=np.zeros((0, 2), dtype=np.float32),
    )

    recorder.flush(engine)
    window = load_serving_windows(engine, "shop", datetime(2000, 1, 1))[0]

    assert window.name_count == 2
    assert window.abstain_count == 1
    assert window.centroid == [1.0, 0.0]
