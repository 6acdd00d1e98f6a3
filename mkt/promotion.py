"""Champion promotion: the gate a challenger must pass, rollbacks, and their history.

Every decision is a `PromotionEvent` row and a set of `mkt.promotion.*` tags on the MLflow
model versions involved, so both the database and the MLflow UI show why a version is, or
is not, the store's `@champion`.
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from sqlalchemy import Column, Engine, Text
from sqlmodel import Field, SQLModel, select

from mkt.catalog import load_store
from mkt.database import open_session, utc_now
from mkt.errors import MktError
from mkt.registry import (
    METRIC_TAG_PREFIX,
    get_champion,
    get_model_version,
    registered_model_name,
    set_champion,
)
from mkt.stores.config import PromotionSettings

logger = logging.getLogger(__name__)

PROMOTE = "promote"
ROLLBACK = "rollback"
REJECTED = "rejected"
STATUS_TAG = "mkt.promotion.status"
REASON_TAG = "mkt.promotion.reason"
DECIDED_AT_TAG = "mkt.promotion.decided_at"
LEVEL_METRIC = re.compile(r"^level_(\d+)_accuracy$")
# Test metrics are stored as tags with six decimals, so equal values may differ by rounding.
TOLERANCE = 1e-9


class PromotionError(MktError):
    """A promotion or rollback cannot be done as requested."""


class PromotionEvent(SQLModel, table=True):
    """One change of a store's champion, or one challenger the gate rejected."""

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    action: str = Field(description="promote, rollback or rejected")
    from_version: str | None = Field(
        default=None, description="Champion version before the event, if any."
    )
    to_version: str = Field(
        description="Version promoted, restored, or rejected by the gate."
    )
    reason: str = Field(sa_column=Column(Text, nullable=False))
    actor: str = Field(description="Who acted: 'pipeline' or 'cli:<user>'.")
    at: datetime = Field(default_factory=utc_now)


@dataclass(frozen=True)
class GateCheck:
    """The outcome of one rule of the promotion gate."""

    name: str
    is_passed: bool
    message: str


@dataclass(frozen=True)
class GateDecision:
    """The outcome of every gate rule for one challenger."""

    checks: list[GateCheck]

    @property
    def is_passed(self) -> bool:
        """Whether every rule passed."""
        return all(check.is_passed for check in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        """The rules that failed."""
        return [check for check in self.checks if not check.is_passed]

    @property
    def reason(self) -> str:
        """The failed rules' messages, or every rule's message when all passed."""
        shown = self.failures or self.checks
        return "; ".join(check.message for check in shown)


@dataclass
class PromotionResult:
    """The outcome of a promotion or rollback of a store's champion."""

    store_id: str
    action: str | None
    version: str
    previous_version: str | None
    reason: str
    is_champion: bool
    decision: GateDecision | None = field(default=None)


def check_gate(
    gate: PromotionSettings,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    *,
    champion_version: str | None = None,
) -> GateDecision:
    """Judge a challenger's test metrics against the champion's with the store's gate.

    Without a champion (or one never evaluated) only the coverage rule applies.
    """
    checks = []
    if not champion:
        missing = "no champion" if champion is None else "a champion with no metrics"
        checks.append(GateCheck("metric", True, f"{missing} to compare with"))
    else:
        name = f"version {champion_version}" if champion_version else "the champion"
        checks.append(check_metric_gain(gate, challenger, champion, name))
        checks.extend(check_level_drops(gate, challenger, champion, name))
    checks.append(check_coverage(gate, challenger))
    return GateDecision(checks)


def check_metric_gain(
    gate: PromotionSettings,
    challenger: dict[str, float],
    champion: dict[str, float],
    champion_name: str,
) -> GateCheck:
    """Pass if the challenger beats the champion on the gate metric by more than the margin."""
    metric = gate.metric
    if metric not in challenger or metric not in champion:
        side = "challenger" if metric not in challenger else champion_name
        return GateCheck("metric", False, f"{metric} not measured for {side}")
    gain = challenger[metric] - champion[metric]
    margin = f" by more than {gate.min_gain:.4f}" if gate.min_gain else ""
    values = f"{metric} {challenger[metric]:.4f} vs {champion[metric]:.4f}"
    if gain > gate.min_gain + TOLERANCE:
        return GateCheck("metric", True, f"{values}: beats {champion_name}{margin}")
    return GateCheck(
        "metric", False, f"{values}: does not beat {champion_name}{margin}"
    )


def check_level_drops(
    gate: PromotionSettings,
    challenger: dict[str, float],
    champion: dict[str, float],
    champion_name: str,
) -> list[GateCheck]:
    """Fail each category path level whose accuracy fell more than the allowed drop.

    Levels measured for only one of the two versions (the tree changed depth) are skipped.
    """
    checks = []
    for level in sorted(level_numbers(champion) & level_numbers(challenger)):
        key = f"level_{level}_accuracy"
        drop = champion[key] - challenger[key]
        if drop > gate.max_level_drop + TOLERANCE:
            message = (
                f"level {level} accuracy {challenger[key]:.4f} is {drop:.4f} below "
                f"{champion_name} ({champion[key]:.4f}); at most "
                f"{gate.max_level_drop:.4f} allowed"
            )
            checks.append(GateCheck(f"level_{level}", False, message))
    if not checks:
        message = f"no level accuracy more than {gate.max_level_drop:.4f} below {champion_name}"
        checks.append(GateCheck("levels", True, message))
    return checks


def check_coverage(gate: PromotionSettings, challenger: dict[str, float]) -> GateCheck:
    """Pass if the challenger covers enough test names at the precision target."""
    coverage = challenger.get("coverage_at_precision")
    if coverage is None:
        is_passed = gate.min_coverage == 0
        return GateCheck("coverage", is_passed, "coverage at precision not measured")
    values = f"coverage at precision {coverage:.4f}"
    if coverage + TOLERANCE >= gate.min_coverage:
        return GateCheck(
            "coverage", True, f"{values} (minimum {gate.min_coverage:.4f})"
        )
    return GateCheck(
        "coverage", False, f"{values} is below the minimum {gate.min_coverage:.4f}"
    )


def level_numbers(metrics: dict[str, float]) -> set[int]:
    """Return the category path levels that have an accuracy in the metrics."""
    return {
        int(match.group(1))
        for key in metrics
        if (match := LEVEL_METRIC.match(key)) is not None
    }


def version_test_metrics(version: ModelVersion) -> dict[str, float]:
    """Return every test metric recorded as a tag on a model version."""
    metrics = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(METRIC_TAG_PREFIX):
            metrics[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
    return metrics


def promote_classifier(
    engine: Engine,
    store_id: str,
    version: str | None = None,
    *,
    force: bool = False,
    actor: str,
) -> PromotionResult:
    """Make a classifier version (the latest by default) the champion if it passes the gate.

    A version that fails is kept and recorded as rejected, unless `force` promotes it anyway.
    MLflow must already point at the store's registry.

    Raises:
        PromotionError: if the version was never evaluated.
        ClassifierNotFound: if the store has no such version.
    """
    config = load_store(engine, store_id)
    challenger = get_model_version(store_id, version)
    challenger_version = str(challenger.version)
    metrics = version_test_metrics(challenger)
    if not metrics:
        raise PromotionError(
            f"Store {store_id!r}: classifier version {challenger_version} has no test "
            f"metrics, so the gate cannot judge it. Evaluate it first: "
            f"mkt run {store_id} --stage evaluate"
        )

    # NOTE: nothing locks the alias between this read and the move, so two promotions of
    # one store at the same moment can both pass against the same champion.
    champion = get_champion(store_id)
    champion_version = str(champion.version) if champion is not None else None
    if champion_version == challenger_version:
        return PromotionResult(
            store_id,
            None,
            challenger_version,
            champion_version,
            "already the champion",
            True,
        )

    champion_metrics = version_test_metrics(champion) if champion is not None else None
    decision = check_gate(
        config.promotion,
        metrics,
        champion_metrics,
        champion_version=champion_version,
    )
    if decision.is_passed or force:
        reason = decision.reason
        if not decision.is_passed:
            reason = f"forced past the gate: {reason}"
        move_champion(
            engine,
            store_id,
            PROMOTE,
            champion_version,
            challenger_version,
            reason=reason,
            actor=actor,
        )
        return PromotionResult(
            store_id,
            PROMOTE,
            challenger_version,
            champion_version,
            reason,
            True,
            decision,
        )

    record_event(
        engine,
        store_id,
        REJECTED,
        champion_version,
        challenger_version,
        reason=decision.reason,
        actor=actor,
    )
    tag_version(store_id, challenger_version, REJECTED, decision.reason)
    logger.info(
        "Store %r: classifier version %s rejected by the gate: %s",
        store_id,
        challenger_version,
        decision.reason,
    )
    return PromotionResult(
        store_id,
        REJECTED,
        challenger_version,
        champion_version,
        decision.reason,
        False,
        decision,
    )


def rollback_champion(engine: Engine, store_id: str, *, actor: str) -> PromotionResult:
    """Give `@champion` back to the version that held it before the current one.

    Raises:
        PromotionError: if the store has no champion, or the history has no earlier one.
    """
    load_store(engine, store_id)
    champion = get_champion(store_id)
    if champion is None:
        raise PromotionError(
            f"Store {store_id!r} has no @champion to roll back. "
            f"Train and evaluate one: mkt run {store_id}"
        )
    current = str(champion.version)
    chain = champion_chain(load_promotion_history(engine, store_id))
    if not chain or chain[-1] != current:
        recorded = chain[-1] if chain else "none"
        raise PromotionError(
            f"Store {store_id!r}: champion version {current} was not set by mkt (last "
            f"recorded champion: {recorded}), so there is no earlier one to restore. "
            f"Promote a version explicitly: mkt promote {store_id} --version N --force"
        )
    if len(chain) < 2:
        raise PromotionError(
            f"Store {store_id!r}: champion version {current} has no earlier champion in "
            f"the promotion history to roll back to. Promote another version instead: "
            f"mkt promote {store_id} --version N"
        )

    previous = chain[-2]
    get_model_version(store_id, previous)
    reason = f"rolled back from version {current} to version {previous}"
    move_champion(
        engine, store_id, ROLLBACK, current, previous, reason=reason, actor=actor
    )
    return PromotionResult(store_id, ROLLBACK, previous, current, reason, True)


def champion_chain(events: list[PromotionEvent]) -> list[str]:
    """Replay a store's history, oldest first, into its stack of champions (current last).

    A promotion pushes its version and a rollback pops the current one, so repeated
    rollbacks walk further back.
    """
    chain: list[str] = []
    for event in events:
        if event.action == PROMOTE:
            if event.from_version is not None and (
                not chain or chain[-1] != event.from_version
            ):
                chain.append(event.from_version)
            chain.append(event.to_version)
        elif event.action == ROLLBACK:
            while chain and chain[-1] != event.to_version:
                chain.pop()
            if not chain:
                chain.append(event.to_version)
    return chain


def move_champion(
    engine: Engine,
    store_id: str,
    action: str,
    from_version: str | None,
    to_version: str,
    *,
    reason: str,
    actor: str,
) -> None:
    """Point `@champion` at a version, then record the event and tag both versions."""
    set_champion(store_id, to_version)
    record_event(
        engine, store_id, action, from_version, to_version, reason=reason, actor=actor
    )
    tag_version(store_id, to_version, "champion", reason)
    if from_version is not None:
        status = "rolled_back" if action == ROLLBACK else "retired"
        tag_version(
            store_id,
            from_version,
            status,
            f"replaced by version {to_version}: {reason}",
        )
    logger.info(
        "Store %r: @champion moved from version %s to %s (%s by %s): %s",
        store_id,
        from_version or "none",
        to_version,
        action,
        actor,
        reason,
    )


def tag_version(store_id: str, version: str, status: str, reason: str) -> None:
    """Write the promotion status and reason on a model version."""
    client = MlflowClient()
    name = registered_model_name(store_id)
    tags = {
        STATUS_TAG: status,
        REASON_TAG: reason[:5000],
        DECIDED_AT_TAG: utc_now().isoformat(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def create_promotion_table(engine: Engine) -> None:
    """Create the promotion history table if the database lacks it."""
    SQLModel.metadata.create_all(engine, tables=[PromotionEvent.__table__])


def record_event(
    engine: Engine,
    store_id: str,
    action: str,
    from_version: str | None,
    to_version: str,
    *,
    reason: str,
    actor: str,
) -> PromotionEvent:
    """Append one event to the promotion history."""
    create_promotion_table(engine)
    event = PromotionEvent(
        store_id=store_id,
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        actor=actor,
    )
    with open_session(engine) as session:
        session.add(event)
        session.commit()
    return event


def load_promotion_history(engine: Engine, store_id: str) -> list[PromotionEvent]:
    """Return a store's promotion events, oldest first."""
    create_promotion_table(engine)
    with open_session(engine) as session:
        query = (
            select(PromotionEvent)
            .where(PromotionEvent.store_id == store_id)
            .order_by(PromotionEvent.id)
        )
        return list(session.exec(query).all())
