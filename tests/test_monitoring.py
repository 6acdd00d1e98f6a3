"""Tests of the store health checks and of how their findings open and resolve alerts."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlmodel import select

from mkt.catalog import sync_category_tree
from mkt.database import Category, open_session
from mkt.monitoring import (
    ABSTAIN_RISE,
    BELOW_TARGET,
    CATEGORY_TREE_CHANGED,
    CENTROID_SHIFT,
    CONFIDENCE_DROP,
    CRITICAL,
    STALE_CRAWL,
    WARNING,
    Alert,
    Baseline,
    CheckResult,
    Finding,
    apply_findings,
    binned_mean,
    check_data,
    check_serving,
    load_open_alerts,
    summarise_serving,
)
from mkt.serving_stats import SCORE_BIN_EDGES, ServingWindow
from mkt.stores.config import MonitoringSettings, parse_store_config
from mkt.stores.connectors import CategoryRecord

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SETTINGS = MonitoringSettings()


def unit(position: int, dimension: int = 4) -> list[float]:
    vector = [0.0] * dimension
    vector[position] = 1.0
    return vector


def window(
    version="1", names=200, abstains=10, score_bin=9, centroid=None
) -> ServingWindow:
    histogram = [0] * (len(SCORE_BIN_EDGES) - 1)
    histogram[score_bin] = names
    return ServingWindow(
        store_id="shop-test",
        classifier_version=version,
        window_start=NOW - timedelta(hours=1),
        window_end=NOW,
        request_count=names,
        name_count=names,
        abstain_count=abstains,
        score_histogram=histogram,
        latency_p50_ms=2.0,
        latency_p99_ms=5.0,
        centroid=centroid if centroid is not None else unit(0),
    )


BASELINE = Baseline(mean_top_score=0.95, abstain_rate=0.05, centroid=np.array(unit(0)))


def test_binned_mean_uses_bin_middles():
    assert binned_mean(np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1]), SCORE_BIN_EDGES) == 0.5
    assert binned_mean(np.zeros(10), SCORE_BIN_EDGES) == 0.0


def test_summarise_serving_keeps_one_version():
    windows = [window(names=100, abstains=10), window(version="2", names=50)]

    served = summarise_serving(windows, "1", SCORE_BIN_EDGES)

    assert served.window_count == 1
    assert served.name_count == 100
    assert served.abstain_rate == pytest.approx(0.1)
    assert served.mean_top_score == pytest.approx(0.95)


def test_summarise_serving_weights_centroids_by_names():
    windows = [window(names=300, centroid=unit(0)), window(names=100, centroid=unit(1))]

    served = summarise_serving(windows, "1", SCORE_BIN_EDGES)

    assert served.centroid.tolist() == pytest.approx([0.75, 0.25, 0.0, 0.0])


def test_check_serving_healthy_traffic_finds_nothing():
    served = summarise_serving([window()], "1", SCORE_BIN_EDGES)

    result = check_serving(served, BASELINE, SETTINGS)

    assert result.findings == []
    assert result.checked_kinds == {CONFIDENCE_DROP, ABSTAIN_RISE, CENTROID_SHIFT}


def test_check_serving_finds_drift():
    drifted = window(abstains=100, score_bin=3, centroid=unit(1))
    served = summarise_serving([drifted], "1", SCORE_BIN_EDGES)

    result = check_serving(served, BASELINE, SETTINGS)

    found = {finding.kind: finding for finding in result.findings}
    assert set(found) == {CONFIDENCE_DROP, ABSTAIN_RISE, CENTROID_SHIFT}
    assert found[CONFIDENCE_DROP].value == pytest.approx(0.6)
    assert found[CONFIDENCE_DROP].severity == CRITICAL
    assert found[ABSTAIN_RISE].value == pytest.approx(0.45)
    assert found[CENTROID_SHIFT].value == pytest.approx(1.0)
    assert "0.350 is 0.600 below" in found[CONFIDENCE_DROP].message


def test_check_serving_small_drop_is_warning():
    served = summarise_serving([window(score_bin=7)], "1", SCORE_BIN_EDGES)

    result = check_serving(served, BASELINE, SETTINGS)

    assert [(f.kind, f.severity) for f in result.findings] == [
        (CONFIDENCE_DROP, WARNING)
    ]


def test_check_serving_skips_little_traffic():
    served = summarise_serving([window(names=99, score_bin=0)], "1", SCORE_BIN_EDGES)

    result = check_serving(served, BASELINE, SETTINGS)

    assert result.findings == []
    assert result.checked_kinds == set()


@pytest.fixture
def sqlite_engine(tmp_path):
    from mkt.database import create_database_engine

    engine = create_database_engine(f"sqlite:///{tmp_path / 'mkt.db'}")
    yield engine
    engine.dispose()


def store_config(**extra):
    return parse_store_config(
        {
            "store_id": "shop-test",
            "marketplace": "test",
            "connector": {"kind": "file", "options": {"products": "/p.csv"}},
            "target_products_per_category": 10,
            **extra,
        }
    )


def set_categories(engine, product_counts: dict[str, int], seen_at: datetime):
    with open_session(engine) as session:
        for row in session.exec(select(Category)):
            row.product_count = product_counts.get(row.external_id, 0)
            row.last_seen_at = seen_at
            session.add(row)
        session.commit()


def test_check_data_finds_tree_change_after_training(sqlite_engine):
    tree = [CategoryRecord("a", "A"), CategoryRecord("b", "B")]
    sync_category_tree(sqlite_engine, "shop-test", tree)
    trained_at = datetime.now(UTC)
    sync_category_tree(sqlite_engine, "shop-test", [*tree, CategoryRecord("c", "C")])
    set_categories(sqlite_engine, {"a": 10, "b": 10, "c": 10}, datetime.now(UTC))

    result = check_data(
        sqlite_engine, store_config(), trained_at=trained_at, now=datetime.now(UTC)
    )

    assert [finding.kind for finding in result.findings] == [CATEGORY_TREE_CHANGED]
    assert "1 added" in result.findings[0].message
    assert result.checked_kinds == {CATEGORY_TREE_CHANGED, BELOW_TARGET, STALE_CRAWL}


def test_check_data_ignores_changes_before_training(sqlite_engine):
    sync_category_tree(sqlite_engine, "shop-test", [CategoryRecord("a", "A")])
    set_categories(sqlite_engine, {"a": 10}, datetime.now(UTC))

    result = check_data(
        sqlite_engine,
        store_config(),
        trained_at=datetime.now(UTC),
        now=datetime.now(UTC),
    )

    assert result.findings == []


def test_check_data_finds_below_target_and_stale_crawl(sqlite_engine):
    tree = [
        CategoryRecord("a", "A"),
        CategoryRecord("b", "B"),
        CategoryRecord("c", "C"),
    ]
    sync_category_tree(sqlite_engine, "shop-test", tree)
    set_categories(sqlite_engine, {"a": 10, "b": 6, "c": 2}, NOW - timedelta(hours=200))

    result = check_data(sqlite_engine, store_config(), trained_at=None, now=NOW)

    found = {finding.kind: finding for finding in result.findings}
    assert set(found) == {BELOW_TARGET, STALE_CRAWL}
    assert found[BELOW_TARGET].value == 2
    assert found[BELOW_TARGET].severity == CRITICAL
    assert (
        "2 of 3 categories have fewer than 10 products" in found[BELOW_TARGET].message
    )
    assert "1 have fewer than min_products_per_category" in found[BELOW_TARGET].message
    assert found[STALE_CRAWL].value == pytest.approx(200)
    assert found[STALE_CRAWL].severity == WARNING
    assert CATEGORY_TREE_CHANGED not in result.checked_kinds


def test_check_data_never_crawled_is_critical(sqlite_engine):
    result = check_data(sqlite_engine, store_config(), trained_at=None, now=NOW)

    found = {finding.kind: finding for finding in result.findings}
    assert found[STALE_CRAWL].severity == CRITICAL
    assert "never crawled" in found[STALE_CRAWL].message


def finding(kind, value=1.0):
    return Finding(kind, WARNING, f"{kind} is {value}", value, 0.5)


def test_apply_findings_raises_updates_and_resolves(sqlite_engine):
    first = CheckResult(
        [finding(STALE_CRAWL), finding(CONFIDENCE_DROP)], {STALE_CRAWL, CONFIDENCE_DROP}
    )
    second = CheckResult(
        [finding(CONFIDENCE_DROP, 2.0)], {STALE_CRAWL, CONFIDENCE_DROP}
    )

    raised = apply_findings(sqlite_engine, "shop-test", first, NOW)
    later = apply_findings(sqlite_engine, "shop-test", second, NOW + timedelta(hours=1))

    assert sorted(raised.raised) == [CONFIDENCE_DROP, STALE_CRAWL]
    assert later.raised == []
    assert later.updated == [CONFIDENCE_DROP]
    assert later.resolved == [STALE_CRAWL]
    open_alerts = load_open_alerts(sqlite_engine, "shop-test")
    assert [(a.kind, a.value) for a in open_alerts] == [(CONFIDENCE_DROP, 2.0)]
    with open_session(sqlite_engine) as session:
        stale = session.exec(select(Alert).where(Alert.kind == STALE_CRAWL)).one()
    assert stale.resolved_at is not None


def test_apply_findings_keeps_unchecked_kinds_open(sqlite_engine):
    apply_findings(
        sqlite_engine,
        "shop-test",
        CheckResult([finding(ABSTAIN_RISE)], {ABSTAIN_RISE}),
        NOW,
    )

    changes = apply_findings(sqlite_engine, "shop-test", CheckResult([], set()), NOW)

    assert changes.resolved == []
    assert [a.kind for a in load_open_alerts(sqlite_engine, "shop-test")] == [
        ABSTAIN_RISE
    ]
