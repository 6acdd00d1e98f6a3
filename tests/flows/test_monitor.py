"""Run the monitor flow on a store with a champion, crafted serving windows and data changes."""

import uuid
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest
from sqlmodel import select

from mkt.baseline import log_baseline
from mkt.catalog import sync_category_tree
from mkt.database import Category, open_session
from mkt.flows.context import open_database
from mkt.monitoring import (
    ABSTAIN_RISE,
    BELOW_TARGET,
    CATEGORY_TREE_CHANGED,
    CENTROID_SHIFT,
    CONFIDENCE_DROP,
    STALE_CRAWL,
    load_open_alerts,
)
from mkt.promotion import promote_classifier
from mkt.registry import configure_mlflow, get_model_version
from mkt.serving_stats import SCORE_BIN_EDGES, ServingWindow, ensure_serving_table
from mkt.settings import Settings
from mkt.stores.connectors import CategoryRecord
from tests.registered import add_store, metrics_of, register_version

TREE = [CategoryRecord("a", "A"), CategoryRecord("b", "B")]
DIMENSION = 8


def direction(position: int) -> np.ndarray:
    vector = np.zeros(DIMENSION)
    vector[position] = 1.0
    return vector


@pytest.fixture
def store(mkt_home, tmp_path, prefect_harness):
    """A store with two full, freshly crawled categories and an evaluated champion."""
    configure_mlflow(Settings())
    engine = open_database(Settings())
    # The Prefect harness lasts the whole session, so a fresh id keeps other tests'
    # deployments and flow runs out of this store's.
    store_id = f"shop-{uuid.uuid4().hex[:8]}"
    config = add_store(tmp_path / "store", store_id, target_products_per_category=10)
    sync_category_tree(engine, config.store_id, TREE)
    with open_session(engine) as session:
        for row in session.exec(select(Category)):
            row.product_count = 10
            session.add(row)
        session.commit()

    version = register_version(
        config, {**metrics_of(0.9), "abstain_rate": 0.05, "mean_top_score": 0.95}
    )
    test_scores = pd.DataFrame(
        {
            "category_id": ["a"] * 50,
            "predicted_id": ["a"] * 50,
            "score": [0.95] * 50,
            "is_abstained": [False] * 50,
        }
    )
    train_embeddings = np.tile(direction(0), (20, 1))
    with mlflow.start_run(run_id=get_model_version(config.store_id, version).run_id):
        log_baseline(test_scores, train_embeddings)
    promote_classifier(engine, config.store_id, version, actor="test")
    return config.store_id


def add_window(store_id, *, names, abstains, score_bin, centroid):
    engine = open_database(Settings())
    ensure_serving_table(engine)
    histogram = [0] * (len(SCORE_BIN_EDGES) - 1)
    histogram[score_bin] = names
    now = datetime.now(UTC)
    with open_session(engine) as session:
        session.add(
            ServingWindow(
                store_id=store_id,
                classifier_version="1",
                window_start=now - timedelta(minutes=5),
                window_end=now,
                request_count=names,
                name_count=names,
                abstain_count=abstains,
                score_histogram=histogram,
                latency_p50_ms=2.0,
                latency_p99_ms=4.0,
                centroid=centroid.tolist(),
            )
        )
        session.commit()


def test_monitor_healthy_store_raises_nothing(store):
    from mkt.flows.monitor import monitor_store

    add_window(store, names=500, abstains=10, score_bin=9, centroid=direction(0))

    result = monitor_store(store)

    assert result["raised"] == []
    assert result["open_alerts"] == []
    assert result["retraining"]["status"] == "not requested"


def test_monitor_raises_serving_alerts_then_resolves(store):
    from mkt.flows.monitor import monitor_store

    add_window(store, names=500, abstains=300, score_bin=3, centroid=direction(1))

    drifted = monitor_store(store)
    add_window(store, names=100000, abstains=0, score_bin=9, centroid=direction(0))
    recovered = monitor_store(store)

    assert sorted(drifted["raised"]) == [ABSTAIN_RISE, CENTROID_SHIFT, CONFIDENCE_DROP]
    assert sorted(recovered["resolved"]) == [
        ABSTAIN_RISE,
        CENTROID_SHIFT,
        CONFIDENCE_DROP,
    ]
    assert recovered["open_alerts"] == []


def test_monitor_raises_data_alerts(store):
    from mkt.flows.monitor import monitor_store

    engine = open_database(Settings())
    sync_category_tree(engine, store, [*TREE, CategoryRecord("c", "C")])
    with open_session(engine) as session:
        for row in session.exec(select(Category)):
            row.last_seen_at = datetime.now(UTC) - timedelta(hours=500)
            session.add(row)
        session.commit()

    result = monitor_store(store)

    assert sorted(result["raised"]) == [
        BELOW_TARGET,
        CATEGORY_TREE_CHANGED,
        STALE_CRAWL,
    ]
    alerts = {alert.kind: alert for alert in load_open_alerts(engine, store)}
    assert "1 added" in alerts[CATEGORY_TREE_CHANGED].message
    assert alerts[STALE_CRAWL].value == pytest.approx(500, abs=1)
    assert alerts[STALE_CRAWL].threshold == 168


def test_monitor_retrain_without_deployment_reports_it(store):
    from mkt.flows.monitor import monitor_store

    add_window(store, names=500, abstains=300, score_bin=3, centroid=direction(1))

    result = monitor_store(store, retrain=True)

    assert result["retraining"]["status"] == "deployment missing"
    assert f"'train/{store}'" in result["retraining"]["message"]
    assert CONFIDENCE_DROP in result["retraining"]["kinds"]


def test_monitor_retrain_starts_train_deployment_once(store):
    from prefect import get_client

    from mkt.flows.monitor import monitor_store
    from mkt.flows.train import train_store

    train_store.to_deployment(name=store, parameters={"store_id": store}).apply()
    add_window(store, names=500, abstains=300, score_bin=3, centroid=direction(1))

    first = monitor_store(store, retrain=True)
    second = monitor_store(store, retrain=True)

    assert first["retraining"]["status"] == "triggered"
    assert second["retraining"]["status"] == "already running"
    assert second["retraining"]["flow_run_id"] == first["retraining"]["flow_run_id"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(first["retraining"]["flow_run_id"])
    assert flow_run.parameters == {"store_id": store}
    assert flow_run.state.is_scheduled()
