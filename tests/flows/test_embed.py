"""Tests of the embed stage: streaming into the snapshot file, and a small real store."""

import json

import numpy as np
import pandas as pd
import pytest

from mkt.catalog import register_store
from mkt.embeddings import embed_with_cache
from mkt.flows.context import open_database
from mkt.flows.embed import embed_to_file
from mkt.settings import Settings
from mkt.snapshot import EMBEDDINGS_FILE, METADATA_FILE, load_snapshot, save_snapshot
from mkt.stores.config import load_store_config
from tests.conftest import SAMPLE_PRODUCTS, write_sample_products, write_store_config

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def sample_titles() -> list[str]:
    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str, keep_default_na=False)
    return frame["title"].head(10).tolist()


def test_streamed_embeddings_equal_in_memory_ones(mkt_home, tmp_path):
    titles = sample_titles()
    settings = Settings()
    store_dir = tmp_path / "store"

    streamed, new_count = embed_to_file(
        titles, MODEL, settings, store_dir, chunk_rows=3
    )
    in_memory, _ = embed_with_cache(titles, MODEL, tmp_path / "other-cache")

    assert new_count == len(set(titles))
    assert streamed.dtype == np.float16
    # Batches of other sizes pad differently, so equal means equal up to float16 rounding.
    assert np.abs(streamed.astype(np.float32) - in_memory).max() < 1e-3


def test_saved_stream_loads_memory_mapped(mkt_home, tmp_path):
    titles = sample_titles()
    store_dir = tmp_path / "store"
    streamed, _ = embed_to_file(titles, MODEL, Settings(), store_dir, chunk_rows=4)
    snapshot = pd.DataFrame({"title": titles})

    save_snapshot(store_dir, snapshot, streamed, {"embedding_model": MODEL})
    _, embeddings, _ = load_snapshot(store_dir, "store")

    assert isinstance(embeddings, np.memmap)
    assert embeddings.shape == (len(titles), 384)
    assert not list(store_dir.glob("*.partial.npy"))
    assert (store_dir / EMBEDDINGS_FILE).is_file()


@pytest.mark.slow
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
