"""mkt: one product-category classifier per marketplace store, kept alive by Prefect and MLflow."""

__version__ = "0.1.0"
