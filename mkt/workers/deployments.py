"""Reconcile Prefect deployments with the registered store configs.

Every store gets one deployment per stage, named `<flow>/<store_id>`. mkt marks the
deployments it owns with the `mkt-managed` tag and never touches any other.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    DeploymentScheduleCreate,
    DeploymentScheduleUpdate,
    DeploymentUpdate,
)
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterTags,
    FlowFilter,
    FlowFilterId,
)
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectAlreadyExists

from mkt.stores.config import StoreConfig
from mkt.stores.schedule import STAGES, StageDeployment
from mkt.workers.pools import PROCESS_POOL

logger = logging.getLogger(__name__)

MANAGED_TAG = "mkt-managed"
FLOW_ENTRYPOINTS = {
    "crawl": "mkt.flows.crawl.crawl_store",
    "embed": "mkt.flows.embed.embed_store",
    "train": "mkt.flows.train.train_store",
    "evaluate": "mkt.flows.evaluate.evaluate_store",
    "monitor": "mkt.flows.monitor.monitor_store",
    "sync": "mkt.flows.sync.sync_stores",
}
# A crawl started while one runs is cancelled; trains and evaluations wait their turn.
COLLISION_STRATEGIES = {
    "crawl": ConcurrencyLimitStrategy.CANCEL_NEW,
    "embed": ConcurrencyLimitStrategy.CANCEL_NEW,
    "train": ConcurrencyLimitStrategy.ENQUEUE,
    "evaluate": ConcurrencyLimitStrategy.ENQUEUE,
    "monitor": ConcurrencyLimitStrategy.CANCEL_NEW,
    "sync": ConcurrencyLimitStrategy.CANCEL_NEW,
}
# Few future runs per schedule keep the scheduler's table small with hundreds of stores.
# NOTE: Prefect 3.9's server stores no max_scheduled_runs sent at creation (it reads back
# as None), so `mkt up` also caps runs server-wide with the scheduler settings.
MAX_SCHEDULED_RUNS = 2
SYNC_INTERVAL_H = 0.25
CONFLICT_ATTEMPTS = 4


@dataclass(frozen=True)
class DeploymentSpec:
    """What one deployment should look like, in a form that compares field by field."""

    flow_name: str
    name: str
    entrypoint: str
    work_pool: str
    parameters: tuple[tuple[str, Any], ...]
    tags: tuple[str, ...]
    schedule: tuple[str, str, bool] | None
    collision_strategy: str
    description: str

    @property
    def full_name(self) -> str:
        """The deployment's name as Prefect shows it: `<flow>/<name>`."""
        return f"{self.flow_name}/{self.name}"


def stage_spec(
    config: StoreConfig, stage: str, settings: StageDeployment
) -> DeploymentSpec:
    """Return the deployment spec of one stage of a store."""
    schedule = None
    if settings.interval_h is not None:
        schedule = (
            "interval",
            str(int(settings.interval_h * 3600)),
            settings.is_active,
        )
    elif settings.cron is not None:
        schedule = ("cron", settings.cron, settings.is_active)
    return DeploymentSpec(
        flow_name=stage,
        name=config.store_id,
        entrypoint=FLOW_ENTRYPOINTS[stage],
        work_pool=settings.work_pool,
        parameters=stage_parameters(config, stage),
        tags=tuple(sorted({MANAGED_TAG, f"store:{config.store_id}", f"stage:{stage}"})),
        schedule=schedule,
        collision_strategy=COLLISION_STRATEGIES[stage].value,
        description=f"mkt {stage} stage of store {config.store_id!r}.",
    )


def stage_parameters(config: StoreConfig, stage: str) -> tuple[tuple[str, Any], ...]:
    """Return a stage deployment's flow parameters, sorted by name."""
    if stage == "monitor":
        return (
            ("retrain", config.deployments.retrain_on_alert),
            ("store_id", config.store_id),
        )
    return (("store_id", config.store_id),)


def store_specs(config: StoreConfig) -> list[DeploymentSpec]:
    """Return the deployment specs of a store: its four stages and its monitor."""
    return [
        stage_spec(config, stage, config.deployments.for_stage(stage))
        for stage in STAGES
    ]


def sync_spec() -> DeploymentSpec:
    """Return the spec of the deployment that keeps the server in sync on a schedule."""
    return DeploymentSpec(
        flow_name="sync",
        name="mkt",
        entrypoint=FLOW_ENTRYPOINTS["sync"],
        work_pool=PROCESS_POOL,
        parameters=(),
        tags=(MANAGED_TAG, "stage:sync"),
        schedule=("interval", str(int(SYNC_INTERVAL_H * 3600)), True),
        collision_strategy=COLLISION_STRATEGIES["sync"].value,
        description="mkt: make the deployments match the registered store configs.",
    )


def spec_of_deployment(deployment, flow_name: str) -> DeploymentSpec:
    """Return the spec that an existing deployment matches."""
    schedule = None
    if deployment.schedules:
        item = deployment.schedules[0]
        if isinstance(item.schedule, IntervalSchedule):
            value = ("interval", str(int(item.schedule.interval.total_seconds())))
        else:
            value = ("cron", getattr(item.schedule, "cron", repr(item.schedule)))
        schedule = (*value, bool(item.active))
    options = deployment.concurrency_options
    return DeploymentSpec(
        flow_name=flow_name,
        name=deployment.name,
        entrypoint=deployment.entrypoint or "",
        work_pool=deployment.work_pool_name or "",
        parameters=tuple(sorted((deployment.parameters or {}).items())),
        tags=tuple(sorted(deployment.tags or [])),
        schedule=schedule,
        collision_strategy=options.collision_strategy.value if options else "",
        description=deployment.description or "",
    )


def changed_fields(desired: DeploymentSpec, actual: DeploymentSpec) -> list[str]:
    """Return the names of the fields that differ."""
    return [
        name
        for name in DeploymentSpec.__dataclass_fields__
        if getattr(desired, name) != getattr(actual, name)
    ]


@dataclass
class SyncPlan:
    """What a sync creates, updates and deletes; `unchanged` counts the rest."""

    to_create: list[DeploymentSpec] = field(default_factory=list)
    to_update: list[tuple[DeploymentSpec, Any, list[str]]] = field(default_factory=list)
    to_delete: list[tuple[str, Any]] = field(default_factory=list)
    unchanged: int = 0

    @property
    def is_empty(self) -> bool:
        """Whether the server already matches."""
        return not (self.to_create or self.to_update or self.to_delete)

    def describe(self) -> list[str]:
        """Return one line per change, `+` create, `~` update, `-` delete."""
        lines = [f"+ {spec.full_name}" for spec in self.to_create]
        lines += [
            f"~ {spec.full_name} ({', '.join(fields)})"
            for spec, _, fields in self.to_update
        ]
        lines += [f"- {name}" for name, _ in self.to_delete]
        return sorted(lines, key=lambda line: line[2:])


async def read_managed_deployments(client: PrefectClient) -> dict[str, Any]:
    """Return mkt's deployments by full name, reading every page."""
    deployments, offset = [], 0
    tag_filter = DeploymentFilter(tags=DeploymentFilterTags(all_=[MANAGED_TAG]))
    while True:
        page = await client.read_deployments(
            deployment_filter=tag_filter, limit=200, offset=offset
        )
        deployments.extend(page)
        if len(page) < 200:
            break
        offset += 200
    flow_ids = {deployment.flow_id for deployment in deployments}
    flows = []
    if flow_ids:
        flow_filter = FlowFilter(id=FlowFilterId(any_=sorted(flow_ids)))
        flows = await client.read_flows(flow_filter=flow_filter, limit=len(flow_ids))
    flow_names = {flow.id: flow.name for flow in flows}
    return {
        f"{flow_names.get(d.flow_id, '?')}/{d.name}": (
            d,
            flow_names.get(d.flow_id, "?"),
        )
        for d in deployments
    }


def plan_sync(
    desired: list[DeploymentSpec], existing: dict[str, Any], store_ids: set[str] | None
) -> SyncPlan:
    """Compare desired specs with the server's deployments.

    With `store_ids`, only deployments of those stores are created, changed or deleted.
    """
    plan = SyncPlan()
    wanted = {spec.full_name: spec for spec in desired}
    for full_name, spec in wanted.items():
        found = existing.get(full_name)
        if found is None:
            plan.to_create.append(spec)
            continue
        deployment, flow_name = found
        fields = changed_fields(spec, spec_of_deployment(deployment, flow_name))
        if fields:
            plan.to_update.append((spec, deployment.id, fields))
        else:
            plan.unchanged += 1
    for full_name, (deployment, _) in existing.items():
        in_scope = store_ids is None or any(
            f"store:{store_id}" in (deployment.tags or []) for store_id in store_ids
        )
        if full_name not in wanted and in_scope:
            plan.to_delete.append((full_name, deployment.id))
    return plan


def schedules_of(spec: DeploymentSpec) -> list[DeploymentScheduleCreate]:
    """Return Prefect schedule objects for a spec."""
    if spec.schedule is None:
        return []
    kind, value, is_active = spec.schedule
    if kind == "interval":
        schedule = IntervalSchedule(interval=timedelta(seconds=int(value)))
    else:
        schedule = CronSchedule(cron=value)
    return [
        DeploymentScheduleCreate(
            schedule=schedule, active=is_active, max_scheduled_runs=MAX_SCHEDULED_RUNS
        )
    ]


def deployment_fields(spec: DeploymentSpec) -> dict[str, Any]:
    """Return the keyword arguments shared by creating and updating a deployment."""
    return {
        "entrypoint": spec.entrypoint,
        "work_pool_name": spec.work_pool,
        "parameters": dict(spec.parameters),
        "tags": list(spec.tags),
        "schedules": schedules_of(spec),
        "concurrency_limit": 1,
        "concurrency_options": ConcurrencyOptions(
            collision_strategy=ConcurrencyLimitStrategy(spec.collision_strategy)
        ),
        "description": spec.description,
    }


async def apply_plan(
    client: PrefectClient, plan: SyncPlan, concurrency: int = 1
) -> None:
    """Create, update and delete deployments, `concurrency` requests at a time."""
    limit = asyncio.Semaphore(concurrency)
    flow_ids = {}
    for flow_name in sorted({spec.flow_name for spec in plan.to_create}):
        flow_ids[flow_name] = await client.create_flow_from_name(flow_name)

    async def create(spec: DeploymentSpec) -> None:
        async with limit:
            await client.create_deployment(
                flow_id=flow_ids[spec.flow_name],
                name=spec.name,
                **deployment_fields(spec),
            )

    async def update(spec: DeploymentSpec, deployment_id) -> None:
        async with limit:
            fields = deployment_fields(spec)
            fields["schedules"] = [
                DeploymentScheduleUpdate(**schedule.model_dump(exclude_unset=True))
                for schedule in fields["schedules"]
            ]
            await client.update_deployment(deployment_id, DeploymentUpdate(**fields))

    async def delete(deployment_id) -> None:
        async with limit:
            await client.delete_deployment(deployment_id)

    await asyncio.gather(
        *(create(spec) for spec in plan.to_create),
        *(update(spec, deployment_id) for spec, deployment_id, _ in plan.to_update),
        *(delete(deployment_id) for _, deployment_id in plan.to_delete),
    )


async def sync_deployments(
    client: PrefectClient,
    configs: list[StoreConfig],
    *,
    store_ids: set[str] | None = None,
    is_dry_run: bool = False,
    concurrency: int = 1,
) -> SyncPlan:
    """Make the server's mkt deployments match the configs and return what changed.

    With `store_ids`, only those stores' deployments are touched (the configs given must
    then be theirs); without, deployments of stores missing from `configs` are deleted.
    """
    from mkt.workers.pools import ensure_work_pools

    desired = [spec for config in configs for spec in store_specs(config)]
    if store_ids is None:
        desired.append(sync_spec())
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        existing = await read_managed_deployments(client)
        plan = plan_sync(desired, existing, store_ids)
        if is_dry_run or plan.is_empty:
            break
        try:
            await ensure_work_pools(client)
            await apply_plan(client, plan, concurrency)
            break
        except ObjectAlreadyExists:
            # The server returns 409 when a concurrent writer (another `mkt add-store`)
            # wins a race on a row both need. Reading again and replanning resolves it.
            if attempt == CONFLICT_ATTEMPTS:
                raise
            logger.info("Conflict with a concurrent sync; planning again (%d)", attempt)
            await asyncio.sleep(0.5 * attempt)
    logger.info(
        "Deployments: %d created, %d updated, %d deleted, %d unchanged",
        len(plan.to_create),
        len(plan.to_update),
        len(plan.to_delete),
        plan.unchanged,
    )
    return plan


def run_sync(
    configs: list[StoreConfig],
    *,
    store_ids: set[str] | None = None,
    is_dry_run: bool = False,
) -> SyncPlan:
    """Run `sync_deployments` against the configured Prefect API from synchronous code."""
    from prefect.client.orchestration import get_client

    from mkt.settings import Settings

    concurrency = Settings().sync_concurrency

    async def sync() -> SyncPlan:
        async with get_client() as client:
            return await sync_deployments(
                client,
                configs,
                store_ids=store_ids,
                is_dry_run=is_dry_run,
                concurrency=concurrency,
            )

    return asyncio.run(sync())
