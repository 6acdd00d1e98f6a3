"""Fixtures shared by the encoder backend tests."""

import pytest


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A fresh folder of exports and distilled tables for each test module."""
    return tmp_path_factory.mktemp("encoders")
