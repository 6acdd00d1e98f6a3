"""The work pools mkt creates, with their base job templates."""

import copy
import logging
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

logger = logging.getLogger(__name__)

PROCESS_POOL = "mkt-process"
DOCKER_CPU_POOL = "mkt-docker-cpu"
DOCKER_GPU_POOL = "mkt-docker-gpu"
WORKER_IMAGE = "mkt-worker"
# Docker's API takes this as a DeviceRequest: every GPU of the host, through the NVIDIA
# container runtime. Without that runtime, container creation fails and the run crashes.
GPU_DEVICE_REQUESTS = [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]


def process_job_template() -> dict[str, Any]:
    """Return Prefect's process worker template."""
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def docker_job_template(*, image: str, is_gpu: bool) -> dict[str, Any]:
    """Return the Docker worker template with mkt's image and, for GPUs, the device request."""
    from prefect_docker.worker import DockerWorker

    template = copy.deepcopy(DockerWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    properties["image"]["default"] = image
    properties["image_pull_policy"]["default"] = "Never"
    properties["auto_remove"]["default"] = True
    properties["stream_output"]["default"] = True
    if is_gpu:
        properties["container_create_kwargs"]["default"] = {
            "device_requests": copy.deepcopy(GPU_DEVICE_REQUESTS)
        }
    return template


def work_pool_specs() -> list[WorkPoolCreate]:
    """Return the three pools mkt manages."""
    return [
        WorkPoolCreate(
            name=PROCESS_POOL,
            type="process",
            description="mkt: small stages in a local process.",
            base_job_template=process_job_template(),
        ),
        WorkPoolCreate(
            name=DOCKER_CPU_POOL,
            type="docker",
            description="mkt: crawl and train in the mkt-worker image.",
            base_job_template=docker_job_template(
                image=f"{WORKER_IMAGE}:cpu", is_gpu=False
            ),
        ),
        WorkPoolCreate(
            name=DOCKER_GPU_POOL,
            type="docker",
            description="mkt: embedding on GPUs in the mkt-worker GPU image.",
            base_job_template=docker_job_template(
                image=f"{WORKER_IMAGE}:gpu", is_gpu=True
            ),
        ),
    ]


async def ensure_work_pools(client: PrefectClient) -> list[str]:
    """Create the mkt work pools that are missing; return the names created."""
    existing = {pool.name for pool in await client.read_work_pools()}
    created = []
    for spec in work_pool_specs():
        if spec.name in existing:
            continue
        try:
            await client.create_work_pool(spec)
        except ObjectAlreadyExists:
            continue
        created.append(spec.name)
        logger.info("Work pool %r created (type %s)", spec.name, spec.type)
    return created
