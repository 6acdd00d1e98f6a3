"""Monitor stage: compare served traffic and the store's data with the champion, raise alerts.

Served traffic comes from the server's `servingwindow` rows; the baseline is what the
evaluate stage logged for the champion. With `retrain=True`, an open alert that
retraining can fix starts the store's `train/<store_id>` deployment.
"""

from datetime import UTC, datetime, timedelta

import numpy as np
from prefect import flow, get_run_logger, task

from mkt.baseline import embedding_centroid, load_test_scores, load_train_centroid
from mkt.catalog import load_store
from mkt.errors import ClassifierNotFound
from mkt.flows.context import open_database
from mkt.monitoring import (
    RETRAIN_KINDS,
    WARNING,
    Baseline,
    CheckResult,
    apply_findings,
    as_utc,
    binned_mean,
    check_data,
    check_serving,
    load_open_alerts,
    summarise_serving,
)
from mkt.promotion import version_test_metrics
from mkt.registry import configure_mlflow, get_champion, get_model_version
from mkt.serving_stats import SCORE_BIN_EDGES, load_serving_windows
from mkt.settings import Settings
from mkt.snapshot import load_snapshot

# Final states of Prefect flow runs; any other state means the run is still to finish.
FINAL_STATE_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def from_ms(timestamp_ms: int) -> datetime:
    """Return an MLflow millisecond timestamp as a UTC datetime."""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def load_baseline(settings: Settings, store_id: str, champion) -> Baseline:
    """Read the champion's test scores, abstain rate and training centroid from MLflow.

    The mean top score is taken over the same histogram bins as the served one, so both
    carry the same rounding. Without a logged centroid, the current snapshot's training
    names stand in for the champion's.
    """
    metrics = version_test_metrics(champion)
    scores = load_test_scores(champion.run_id)
    if scores is not None and len(scores):
        clipped = np.clip(scores["score"].to_numpy(dtype=np.float64), 0.0, 1.0)
        counts = np.histogram(clipped, bins=SCORE_BIN_EDGES)[0]
        mean_top_score = binned_mean(counts, SCORE_BIN_EDGES)
    else:
        mean_top_score = metrics.get("mean_top_score")

    centroid = load_train_centroid(champion.run_id)
    if centroid is None and (settings.store_dir(store_id) / "snapshot.json").is_file():
        # NOTE: the snapshot may be newer than the champion, so this centroid is approximate.
        snapshot, embeddings, _ = load_snapshot(settings.store_dir(store_id), store_id)
        centroid = embedding_centroid(
            embeddings[(snapshot["split"] == "train").to_numpy()]
        )
    return Baseline(mean_top_score, metrics.get("abstain_rate"), centroid)


@task(name="check-served-traffic")
def check_served_traffic(store_id: str) -> CheckResult:
    """Compare the champion's served top scores, abstains and names with its test baseline."""
    logger = get_run_logger()
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)
    configure_mlflow(settings)
    champion = get_champion(store_id)
    if champion is None:
        logger.info(
            "Store %r: no @champion, so served traffic is not checked", store_id
        )
        return CheckResult()

    since = datetime.now(UTC) - timedelta(hours=config.monitoring.window_hours)
    windows = load_serving_windows(engine, store_id, since)
    served = summarise_serving(windows, str(champion.version), SCORE_BIN_EDGES)
    baseline = load_baseline(settings, store_id, champion)
    result = check_serving(served, baseline, config.monitoring)
    logger.info(
        "Store %r: version %s served %d names in %d windows since %s "
        "(mean top score %.3f, abstain rate %.3f); %d findings",
        store_id,
        champion.version,
        served.name_count,
        served.window_count,
        since.isoformat(timespec="minutes"),
        served.mean_top_score,
        served.abstain_rate,
        len(result.findings),
    )
    if served.name_count < config.monitoring.min_served_names:
        logger.info(
            "Store %r: fewer than %d served names, so serving alerts are left as they are",
            store_id,
            config.monitoring.min_served_names,
        )
    return result


@task(name="check-store-data")
def check_store_data(store_id: str) -> CheckResult:
    """Check for tree changes since the champion, categories below target and a stale crawl."""
    settings = Settings()
    engine = open_database(settings)
    config = load_store(engine, store_id)
    configure_mlflow(settings)
    champion = get_champion(store_id)
    trained_at = from_ms(champion.creation_timestamp) if champion is not None else None
    return check_data(engine, config, trained_at=trained_at, now=datetime.now(UTC))


@task(name="record-alerts")
def record_alerts(store_id: str, serving: CheckResult, data: CheckResult) -> dict:
    """Open, refresh and resolve the store's alerts from this run's findings."""
    logger = get_run_logger()
    engine = open_database(Settings())
    combined = CheckResult(
        findings=[*serving.findings, *data.findings],
        checked_kinds=serving.checked_kinds | data.checked_kinds,
    )
    changes = apply_findings(engine, store_id, combined, datetime.now(UTC))
    for finding in combined.findings:
        log = logger.warning if finding.severity == WARNING else logger.error
        log("Store %r: %s alert: %s", store_id, finding.kind, finding.message)
    if changes.resolved:
        logger.info("Store %r: resolved %s", store_id, ", ".join(changes.resolved))
    return {
        "raised": changes.raised,
        "updated": changes.updated,
        "resolved": changes.resolved,
    }


def alerts_warranting_retraining(store_id: str) -> list[str]:
    """Return the open alert kinds that retraining can fix, raised after the newest version.

    A training run already followed an alert older than the newest classifier version
    (even if the gate rejected that version), so such an alert does not start another.
    """
    settings = Settings()
    configure_mlflow(settings)
    try:
        newest_at = from_ms(get_model_version(store_id).creation_timestamp)
    except ClassifierNotFound:
        newest_at = None
    return sorted(
        {
            alert.kind
            for alert in load_open_alerts(open_database(settings), store_id)
            if alert.kind in RETRAIN_KINDS
            and (newest_at is None or as_utc(alert.raised_at) > newest_at)
        }
    )


@task(name="trigger-retraining")
def trigger_retraining(store_id: str, kinds: list[str]) -> dict:
    """Start the store's train deployment, unless a run of it is already waiting or running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    logger = get_run_logger()
    name = f"train/{store_id}"
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            message = (
                f"no deployment {name!r}, so retraining was not started; create the "
                f"store's deployments with: mkt add-store {store_id} --config FILE"
            )
            logger.warning("Store %r: %s", store_id, message)
            return {"status": "deployment missing", "message": message}
        unfinished = client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment.id])
            ),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        not_any_=[StateType[state] for state in FINAL_STATE_TYPES]
                    )
                )
            ),
            limit=1,
        )
    if unfinished:
        message = f"flow run {unfinished[0].id} of {name!r} has not finished yet"
        logger.info("Store %r: retraining not started again: %s", store_id, message)
        return {
            "status": "already running",
            "flow_run_id": str(unfinished[0].id),
            "message": message,
        }

    try:
        flow_run = run_deployment(name, timeout=0)
    except PrefectHTTPStatusError as exc:
        message = f"starting {name!r} failed: {exc}"
        logger.error("Store %r: %s; the alerts stay open", store_id, message)
        return {"status": "failed", "message": message}
    message = f"started {name!r} (flow run {flow_run.id}) for {', '.join(kinds)}"
    logger.info("Store %r: %s", store_id, message)
    return {"status": "triggered", "flow_run_id": str(flow_run.id), "message": message}


@flow(name="monitor", flow_run_name="monitor-{store_id}")
def monitor_store(store_id: str, retrain: bool = False) -> dict:
    """Check the store's served traffic and data, update its alerts, and retrain if asked."""
    serving = check_served_traffic(store_id)
    data = check_store_data(store_id)
    changes = record_alerts(store_id, serving, data)

    kinds = alerts_warranting_retraining(store_id)
    if not retrain:
        retraining = {"status": "not requested", "kinds": kinds}
    elif not kinds:
        retraining = {"status": "not needed", "kinds": kinds}
    else:
        retraining = {**trigger_retraining(store_id, kinds), "kinds": kinds}

    open_alerts = load_open_alerts(open_database(Settings()), store_id)
    return {
        **changes,
        "open_alerts": sorted(alert.kind for alert in open_alerts),
        "retraining": retraining,
    }
