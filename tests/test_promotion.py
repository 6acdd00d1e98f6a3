"""Tests of the promotion gate, promotions, rollbacks and their history."""

import pytest
from mlflow import MlflowClient

from mkt.flows.context import open_database
from mkt.promotion import (
    PROMOTE,
    REASON_TAG,
    REJECTED,
    ROLLBACK,
    STATUS_TAG,
    PromotionError,
    PromotionEvent,
    champion_chain,
    check_gate,
    load_promotion_history,
    promote_classifier,
    rollback_champion,
)
from mkt.registry import configure_mlflow, get_champion, registered_model_name
from mkt.settings import Settings
from mkt.stores.config import PromotionSettings
from tests.registered import add_store, metrics_of, register_version

GATE = PromotionSettings()


def test_gate_rejects_worse_challenger():
    decision = check_gate(
        GATE, metrics_of(0.80), metrics_of(0.85), champion_version="1"
    )

    assert not decision.is_passed
    assert [check.name for check in decision.failures] == ["metric"]
    assert "does not beat version 1" in decision.reason
    assert "0.8000 vs 0.8500" in decision.reason


def test_gate_rejects_equal_challenger():
    decision = check_gate(GATE, metrics_of(0.85), metrics_of(0.85))

    assert not decision.is_passed


def test_gate_passes_better_challenger():
    decision = check_gate(GATE, metrics_of(0.86), metrics_of(0.85))

    assert decision.is_passed
    assert "beats" in decision.reason


def test_gate_min_gain_blocks_small_gain():
    gate = PromotionSettings(min_gain=0.02)

    small = check_gate(gate, metrics_of(0.86), metrics_of(0.85))
    large = check_gate(gate, metrics_of(0.88), metrics_of(0.85))

    assert not small.is_passed
    assert "by more than 0.0200" in small.reason
    assert large.is_passed


def test_gate_level_drop_beyond_margin_blocks():
    champion = metrics_of(0.85, level_1_accuracy=0.95, level_2_accuracy=0.85)
    challenger = metrics_of(0.90, level_1_accuracy=0.90, level_2_accuracy=0.90)

    decision = check_gate(GATE, challenger, champion, champion_version="4")

    assert not decision.is_passed
    assert [check.name for check in decision.failures] == ["level_1"]
    assert "level 1 accuracy 0.9000 is 0.0500 below version 4" in decision.reason


def test_gate_level_drop_within_margin_passes():
    champion = metrics_of(0.85, level_1_accuracy=0.95)
    challenger = metrics_of(0.90, level_1_accuracy=0.94)

    assert check_gate(GATE, challenger, champion).is_passed


def test_gate_skips_level_missing_on_one_side():
    champion = metrics_of(0.85, level_1_accuracy=0.95, level_3_accuracy=0.9)
    challenger = metrics_of(0.90, level_1_accuracy=0.95)

    assert check_gate(GATE, challenger, champion).is_passed


def test_gate_min_coverage_blocks():
    gate = PromotionSettings(min_coverage=0.9)

    decision = check_gate(gate, metrics_of(0.95), metrics_of(0.85))

    assert not decision.is_passed
    assert [check.name for check in decision.failures] == ["coverage"]
    assert "coverage at precision 0.8000 is below the minimum 0.9000" in decision.reason


def test_gate_min_coverage_applies_without_champion():
    gate = PromotionSettings(min_coverage=0.9)

    decision = check_gate(gate, metrics_of(0.95), None)

    assert not decision.is_passed
    assert check_gate(GATE, metrics_of(0.95), None).is_passed


def test_gate_uses_configured_metric():
    gate = PromotionSettings(metric="macro_f1")
    challenger = {**metrics_of(0.90), "macro_f1": 0.70}

    decision = check_gate(gate, challenger, metrics_of(0.85))

    assert not decision.is_passed
    assert "macro_f1 0.7000" in decision.reason


def event(action, from_version, to_version):
    return PromotionEvent(
        store_id="s",
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason="",
        actor="test",
    )


def test_champion_chain_replays_promotions_and_rollbacks():
    events = [
        event(PROMOTE, None, "1"),
        event(REJECTED, "1", "2"),
        event(PROMOTE, "1", "3"),
        event(PROMOTE, "3", "4"),
        event(ROLLBACK, "4", "3"),
    ]

    assert champion_chain(events) == ["1", "3"]


def test_champion_chain_keeps_champion_set_outside_history():
    assert champion_chain([event(PROMOTE, "7", "8")]) == ["7", "8"]


@pytest.fixture
def store(mkt_home, tmp_path):
    configure_mlflow(Settings())
    return add_store(tmp_path / "store")


def champion_version(store_id):
    return str(get_champion(store_id).version)


def version_tags(store_id, version):
    client = MlflowClient()
    return client.get_model_version(registered_model_name(store_id), version).tags


def test_promote_first_then_rejects_worse_and_keeps_it(store):
    engine = open_database(Settings())
    first = register_version(store, metrics_of(0.85))
    worse = register_version(store, metrics_of(0.80))

    promoted = promote_classifier(engine, store.store_id, first, actor="test")
    rejected = promote_classifier(engine, store.store_id, worse, actor="test")

    assert promoted.is_champion
    assert not rejected.is_champion
    assert rejected.action == REJECTED
    assert champion_version(store.store_id) == first
    assert version_tags(store.store_id, worse)[STATUS_TAG] == "rejected"
    assert "does not beat" in version_tags(store.store_id, worse)[REASON_TAG]
    history = load_promotion_history(engine, store.store_id)
    assert [(e.action, e.from_version, e.to_version) for e in history] == [
        (PROMOTE, None, first),
        (REJECTED, first, worse),
    ]
    assert "does not beat" in history[1].reason


def test_promote_better_version_retires_champion(store):
    engine = open_database(Settings())
    first = register_version(store, metrics_of(0.85))
    better = register_version(store, metrics_of(0.90))
    promote_classifier(engine, store.store_id, first, actor="test")

    result = promote_classifier(engine, store.store_id, actor="test")

    assert result.action == PROMOTE
    assert result.version == better
    assert result.previous_version == first
    assert champion_version(store.store_id) == better
    assert version_tags(store.store_id, first)[STATUS_TAG] == "retired"
    assert version_tags(store.store_id, better)[STATUS_TAG] == "champion"


def test_promote_force_records_gate_failure(store):
    engine = open_database(Settings())
    first = register_version(store, metrics_of(0.85))
    worse = register_version(store, metrics_of(0.80))
    promote_classifier(engine, store.store_id, first, actor="test")

    result = promote_classifier(engine, store.store_id, worse, force=True, actor="me")

    assert result.is_champion
    assert champion_version(store.store_id) == worse
    last = load_promotion_history(engine, store.store_id)[-1]
    assert last.action == PROMOTE
    assert last.actor == "me"
    assert last.reason.startswith("forced past the gate: weighted_f1 0.8000")


def test_promote_unevaluated_version_says_to_evaluate(store):
    version = register_version(store, None)

    with pytest.raises(PromotionError, match="no test metrics") as caught:
        promote_classifier(open_database(Settings()), store.store_id, actor="test")

    assert f"version {version}" in str(caught.value)
    assert "--stage evaluate" in str(caught.value)


def test_rollback_restores_previous_champion(store):
    engine = open_database(Settings())
    versions = [register_version(store, metrics_of(f1)) for f1 in (0.8, 0.85, 0.9)]
    for version in versions:
        promote_classifier(engine, store.store_id, version, actor="test")

    first = rollback_champion(engine, store.store_id, actor="test")
    second = rollback_champion(engine, store.store_id, actor="test")

    assert (first.previous_version, first.version) == (versions[2], versions[1])
    assert (second.previous_version, second.version) == (versions[1], versions[0])
    assert champion_version(store.store_id) == versions[0]
    assert version_tags(store.store_id, versions[2])[STATUS_TAG] == "rolled_back"
    actions = [e.action for e in load_promotion_history(engine, store.store_id)]
    assert actions == [PROMOTE, PROMOTE, PROMOTE, ROLLBACK, ROLLBACK]


def test_rollback_without_earlier_champion_fails(store):
    engine = open_database(Settings())
    only = register_version(store, metrics_of(0.8))
    promote_classifier(engine, store.store_id, only, actor="test")

    with pytest.raises(PromotionError, match="no earlier champion"):
        rollback_champion(engine, store.store_id, actor="test")

    assert champion_version(store.store_id) == only


def test_rollback_without_champion_says_to_run(store):
    with pytest.raises(PromotionError, match="no @champion") as caught:
        rollback_champion(open_database(Settings()), store.store_id, actor="test")

    assert "mkt run shop-test" in str(caught.value)
