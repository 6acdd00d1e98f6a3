"""Work pools, deployments and worker start-up: how the pipeline reaches Prefect."""
