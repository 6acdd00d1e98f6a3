"""Fixtures of the server tests."""

from tests.serving.stores import trained_stores  # noqa: F401
