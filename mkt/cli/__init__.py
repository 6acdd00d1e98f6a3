"""The `mkt` command line."""
