"""Benchmarks of mkt against simple baselines; their results go to docs/benchmarks.md."""
