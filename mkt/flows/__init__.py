"""Prefect flows, one module per pipeline stage: crawl, embed, train, evaluate."""
