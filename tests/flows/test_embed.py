"""Tests of the embed stage's streaming of embeddings into the snapshot file."""

import numpy as np
import pandas as pd

from mkt.embeddings import embed_with_cache
from mkt.flows.embed import embed_to_file
from mkt.settings import Settings
from mkt.snapshot import EMBEDDINGS_FILE, load_snapshot, save_snapshot
from tests.conftest import SAMPLE_PRODUCTS

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
