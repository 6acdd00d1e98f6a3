"""Store health checks and their alerts: served traffic against the baseline, and the data.

The monitor flow runs the checks. Each condition found opens an `Alert` row, or refreshes
the open one of its kind. A condition that was checked and is no longer found resolves it.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import Column, Engine, Text
from sqlmodel import Field, SQLModel, col, select

from mkt.baseline import centroid_shift
from mkt.database import Category, CategoryChange, open_session
from mkt.stores.config import MonitoringSettings, StoreConfig

logger = logging.getLogger(__name__)

WARNING = "warning"
CRITICAL = "critical"


class Alert(SQLModel, table=True):
    """One condition the monitor found on a store; open until `resolved_at` is set."""

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    kind: str = Field(
        index=True,
        description=(
            "confidence_drop, abstain_rise, centroid_shift, category_tree_changed, "
            "below_target or stale_crawl"
        ),
    )
    severity: str = Field(description="warning or critical")
    message: str = Field(sa_column=Column(Text, nullable=False))
    value: float | None = Field(default=None, description="The measured value.")
    threshold: float | None = Field(
        default=None, description="The configured limit the value crossed."
    )
    raised_at: datetime
    resolved_at: datetime | None = None


def create_alert_table(engine: Engine) -> None:
    """Create the alert table if the database lacks it."""
    SQLModel.metadata.create_all(engine, tables=[Alert.__table__])


def load_open_alerts(engine: Engine, store_id: str | None = None) -> list[Alert]:
    """Return the unresolved alerts of one store, or of every store, oldest first."""
    create_alert_table(engine)
    query = select(Alert).where(col(Alert.resolved_at).is_(None))
    if store_id is not None:
        query = query.where(Alert.store_id == store_id)
    with open_session(engine) as session:
        return list(session.exec(query.order_by(Alert.id)).all())


CONFIDENCE_DROP = "confidence_drop"
ABSTAIN_RISE = "abstain_rise"
CENTROID_SHIFT = "centroid_shift"
CATEGORY_TREE_CHANGED = "category_tree_changed"
BELOW_TARGET = "below_target"
STALE_CRAWL = "stale_crawl"
SERVING_KINDS = (CONFIDENCE_DROP, ABSTAIN_RISE, CENTROID_SHIFT)
# Retraining can fix these; it cannot fix missing products or a crawl that stopped.
RETRAIN_KINDS = frozenset({*SERVING_KINDS, CATEGORY_TREE_CHANGED})
# A value more than this many times its threshold makes an alert critical.
CRITICAL_FACTOR = 2.0


@dataclass(frozen=True)
class Finding:
    """One alert condition the monitor found in this check."""

    kind: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None


@dataclass
class CheckResult:
    """The findings of a set of checks, and which alert kinds they could judge."""

    findings: list[Finding] = field(default_factory=list)
    checked_kinds: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ServedSummary:
    """Totals of one classifier version's served traffic over the monitored windows."""

    window_count: int
    name_count: int
    abstain_rate: float
    mean_top_score: float
    centroid: np.ndarray | None


@dataclass(frozen=True)
class Baseline:
    """The champion's behaviour on its test split and training names."""

    mean_top_score: float | None
    abstain_rate: float | None
    centroid: np.ndarray | None


def binned_mean(counts: np.ndarray, edges: tuple[float, ...]) -> float:
    """Return the mean of values known only by histogram, taking each at its bin's middle."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    middles = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    return float((counts * middles).sum() / total)


def summarise_serving(
    windows: list, classifier_version: str, edges: tuple[float, ...]
) -> ServedSummary:
    """Add up the serving windows of one classifier version.

    The mean top score is estimated from the windows' score histograms, so it is exact
    only to half a bin width.
    """
    own = [w for w in windows if str(w.classifier_version) == str(classifier_version)]
    name_count = sum(window.name_count for window in own)
    counts = np.zeros(len(edges) - 1)
    centroid_sum = None
    for window in own:
        counts += np.asarray(window.score_histogram, dtype=np.float64)
        if window.centroid and window.name_count:
            weighted = np.asarray(window.centroid, dtype=np.float64) * window.name_count
            centroid_sum = weighted if centroid_sum is None else centroid_sum + weighted
    return ServedSummary(
        window_count=len(own),
        name_count=name_count,
        abstain_rate=sum(w.abstain_count for w in own) / name_count
        if name_count
        else 0.0,
        mean_top_score=binned_mean(counts, edges),
        centroid=centroid_sum / name_count if centroid_sum is not None else None,
    )


def severity_of(value: float, threshold: float) -> str:
    """Return critical when a value is more than the critical factor times its threshold."""
    return CRITICAL if value > threshold * CRITICAL_FACTOR else WARNING


def check_serving(
    served: ServedSummary, baseline: Baseline, settings: MonitoringSettings
) -> CheckResult:
    """Compare served traffic with the champion's baseline.

    With fewer served names than `min_served_names` nothing is judged, so open serving
    alerts stay as they are.
    """
    result = CheckResult()
    if served.name_count < settings.min_served_names:
        return result
    suffix = f"over {served.name_count} served names"

    if baseline.mean_top_score is not None:
        result.checked_kinds.add(CONFIDENCE_DROP)
        drop = baseline.mean_top_score - served.mean_top_score
        if drop > settings.max_confidence_drop:
            message = (
                f"mean top score {served.mean_top_score:.3f} is {drop:.3f} below the "
                f"test split's {baseline.mean_top_score:.3f} {suffix}"
            )
            result.findings.append(
                Finding(
                    CONFIDENCE_DROP,
                    severity_of(drop, settings.max_confidence_drop),
                    message,
                    drop,
                    settings.max_confidence_drop,
                )
            )
    if baseline.abstain_rate is not None:
        result.checked_kinds.add(ABSTAIN_RISE)
        rise = served.abstain_rate - baseline.abstain_rate
        if rise > settings.max_abstain_rise:
            message = (
                f"abstain rate {served.abstain_rate:.3f} is {rise:.3f} above the test "
                f"split's {baseline.abstain_rate:.3f} {suffix}"
            )
            result.findings.append(
                Finding(
                    ABSTAIN_RISE,
                    severity_of(rise, settings.max_abstain_rise),
                    message,
                    rise,
                    settings.max_abstain_rise,
                )
            )
    if baseline.centroid is not None and served.centroid is not None:
        result.checked_kinds.add(CENTROID_SHIFT)
        if len(baseline.centroid) != len(served.centroid):
            shift = 1.0
        else:
            shift = centroid_shift(baseline.centroid, served.centroid)
        if shift > settings.max_centroid_shift:
            message = (
                f"served names' embedding centroid is {shift:.3f} (cosine distance) "
                f"from the training names' centroid {suffix}"
            )
            result.findings.append(
                Finding(
                    CENTROID_SHIFT,
                    severity_of(shift, settings.max_centroid_shift),
                    message,
                    shift,
                    settings.max_centroid_shift,
                )
            )
    return result


def check_data(
    engine: Engine,
    config: StoreConfig,
    *,
    trained_at: datetime | None,
    now: datetime,
) -> CheckResult:
    """Check the store's data: tree changes since training, coverage and crawl age."""
    store_id = config.store_id
    result = CheckResult(checked_kinds={BELOW_TARGET, STALE_CRAWL})
    with open_session(engine) as session:
        categories = session.exec(
            select(Category).where(
                Category.store_id == store_id, col(Category.removed_at).is_(None)
            )
        ).all()
        changes = []
        if trained_at is not None:
            result.checked_kinds.add(CATEGORY_TREE_CHANGED)
            changes = session.exec(
                select(CategoryChange).where(
                    CategoryChange.store_id == store_id,
                    CategoryChange.changed_at > as_utc(trained_at),
                )
            ).all()

    if changes:
        result.findings.append(tree_change_finding(changes))
    result.findings.extend(coverage_findings(categories, config))
    stale = stale_crawl_finding(categories, config.monitoring.stale_crawl_hours, now)
    if stale is not None:
        result.findings.append(stale)
    return result


def tree_change_finding(changes: list[CategoryChange]) -> Finding:
    """Describe the category tree changes made since the champion was trained."""
    counts = Counter(change.change for change in changes)
    listed = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    message = (
        f"category tree changed since the champion was trained ({listed}); "
        "the champion cannot predict added categories"
    )
    return Finding(CATEGORY_TREE_CHANGED, WARNING, message, float(len(changes)), 0.0)


def coverage_findings(categories: list[Category], config: StoreConfig) -> list[Finding]:
    """Find leaf categories with fewer products than the store's target."""
    target = config.target_products_per_category
    leaves = [row for row in categories if row.is_leaf or row.product_count > 0]
    below = [row for row in leaves if row.product_count < target]
    if not below:
        return []
    untrainable = sum(
        row.product_count < config.min_products_per_category for row in below
    )
    message = (
        f"{len(below)} of {len(leaves)} categories have fewer than {target:,} products; "
        f"{untrainable} have fewer than min_products_per_category "
        f"({config.min_products_per_category}) and are left out of training"
    )
    severity = CRITICAL if untrainable else WARNING
    return [Finding(BELOW_TARGET, severity, message, float(len(below)), float(target))]


def stale_crawl_finding(
    categories: list[Category], stale_crawl_hours: float, now: datetime
) -> Finding | None:
    """Find a crawl that has not synced the tree for longer than the allowed hours."""
    if not categories:
        return Finding(
            STALE_CRAWL,
            CRITICAL,
            "the store was never crawled",
            None,
            stale_crawl_hours,
        )
    last = max(as_utc(row.last_seen_at) for row in categories)
    age_hours = (now - last).total_seconds() / 3600
    if age_hours <= stale_crawl_hours:
        return None
    message = f"last crawl {age_hours:.0f} hours ago, more than {stale_crawl_hours:.0f}"
    severity = severity_of(age_hours, stale_crawl_hours)
    return Finding(STALE_CRAWL, severity, message, age_hours, stale_crawl_hours)


@dataclass
class AlertChanges:
    """The alert kinds one monitor run raised, updated and resolved for a store."""

    raised: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)


def apply_findings(
    engine: Engine, store_id: str, result: CheckResult, now: datetime
) -> AlertChanges:
    """Raise new alerts, refresh open ones, and resolve checked kinds no longer found.

    An alert kind that was not checked this time (for example no served traffic) stays
    as it is.
    """
    create_alert_table(engine)
    changes = AlertChanges()
    found = {finding.kind: finding for finding in result.findings}
    with open_session(engine) as session:
        open_alerts = {
            alert.kind: alert
            for alert in session.exec(
                select(Alert).where(
                    Alert.store_id == store_id, col(Alert.resolved_at).is_(None)
                )
            )
        }
        for kind, finding in found.items():
            alert = open_alerts.get(kind)
            if alert is None:
                alert = Alert(
                    store_id=store_id, kind=kind, raised_at=now, severity="", message=""
                )
                changes.raised.append(kind)
            else:
                changes.updated.append(kind)
            alert.severity, alert.message = finding.severity, finding.message
            alert.value, alert.threshold = finding.value, finding.threshold
            session.add(alert)
        for kind, alert in open_alerts.items():
            if kind in result.checked_kinds and kind not in found:
                alert.resolved_at = now
                session.add(alert)
                changes.resolved.append(kind)
        session.commit()
    return changes


def as_utc(moment: datetime) -> datetime:
    """Return a datetime as timezone-aware UTC; SQLite returns them without a zone."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
