"""Tests of the embed stage on a small real store."""

import json

import pandas as pd
import pytest

from mkt.catalog import register_store
from mkt.flows.context import open_database
from mkt.settings import Settings
from mkt.snapshot import METADATA_FILE
from mkt.stores.config import load_store_config
from tests.conftest import write_sample_products, write_store_config

pytestmark = pytest.mark.slow


def test_embed_counts_names_over_max_length(mkt_home, tmp_path, prefect_harness):
    from mkt.flows.crawl import crawl_store
    from mkt.flows.embed import embed_store

    products = write_sample_products(tmp_path, per_category=6)
    frame = pd.read_csv(products, dtype=str, keep_default_na=False)
    # Every letter and hyphen is a token of its own, so these names pass 256 tokens.
    frame.loc[:1, "title"] = [
        f"usb cable {i} " + "-".join("abcdefghij" * 20) for i in range(2)
    ]
    frame.to_csv(products, index=False)
    config = load_store_config(write_store_config(tmp_path, products))
    register_store(open_database(Settings()), config)

    crawl_store(config.store_id)
    result = embed_store(config.store_id)

    assert result["over_length_count"] == 2
    metadata_path = Settings().store_dir(config.store_id) / METADATA_FILE
    stats = json.loads(metadata_path.read_text())["stats"]
    assert stats["over_length_count"] == 2
