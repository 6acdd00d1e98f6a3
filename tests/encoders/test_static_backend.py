"""Tests of the static backend: distilling the shipped model into a token table."""

import json
import logging

import numpy as np
import pytest

from mkt.encoders import EncoderSpec, load_encoder
from mkt.encoders.static_backend import (
    METADATA_FILE,
    TABLE_FILE,
    StaticEncoder,
    read_table,
)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SPEC = EncoderSpec("static", MODEL_NAME)
# Enough for the ids of the special tokens, which BERT's vocabulary lists first.
TEST_VOCABULARY_LIMIT = 600


@pytest.fixture(scope="module")
def static_encoder(export_dir):
    """The whole vocabulary, distilled once for this module."""
    return load_encoder(f"static:{MODEL_NAME}", export_dir)


def cosine(left: np.ndarray, right: np.ndarray) -> float:
    return float(np.dot(left, right))


def test_static_table_has_one_row_per_token(static_encoder):
    table = np.load(static_encoder.folder / TABLE_FILE)
    metadata = json.loads((static_encoder.folder / METADATA_FILE).read_text())

    assert table.shape == (len(static_encoder.tokenizer), 384)
    assert len(static_encoder.tokenizer) == 30522
    assert metadata["distilled_token_count"] == 30522
    assert np.allclose(np.linalg.norm(table, axis=1), 1.0, atol=1e-4)


def test_static_table_reused_from_disk(static_encoder, export_dir, caplog):
    modified_ns = (static_encoder.folder / TABLE_FILE).stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="mkt.encoders.static_backend"):
        second = StaticEncoder(SPEC, export_dir)

    assert second.folder == static_encoder.folder
    assert (second.folder / TABLE_FILE).stat().st_mtime_ns == modified_ns
    assert "distilled" not in caplog.text
    assert np.array_equal(second.table, static_encoder.table)


def test_static_table_rebuilt_when_corrupt(tmp_path):
    first = StaticEncoder(SPEC, tmp_path, vocabulary_limit=TEST_VOCABULARY_LIMIT)
    (first.folder / TABLE_FILE).write_bytes(b"truncated")
    assert read_table(first.folder) is None

    second = StaticEncoder(SPEC, tmp_path, vocabulary_limit=TEST_VOCABULARY_LIMIT)

    assert read_table(second.folder) is not None
    assert np.array_equal(second.table, first.table)
    assert not list(tmp_path.glob(".export-*"))


def test_static_table_limit_leaves_later_tokens_zero(tmp_path):
    encoder = StaticEncoder(SPEC, tmp_path, vocabulary_limit=TEST_VOCABULARY_LIMIT)

    assert np.abs(encoder.table[:TEST_VOCABULARY_LIMIT]).sum(axis=1).min() > 0
    assert not encoder.table[TEST_VOCABULARY_LIMIT:].any()


def test_static_encoder_returns_unit_rows(static_encoder):
    names = ["Bosch dishwasher SMS2ITW08G", "", "Masło extra 82% 200 g", "x"]

    embeddings = static_encoder.encode(names, batch_size=2)

    assert embeddings.shape == (4, 384)
    assert embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert static_encoder.identity == f"static:{MODEL_NAME}"
    assert static_encoder.dimension == 384


def test_static_encoder_ranks_similar_names_closer(static_encoder):
    fridge, freezer, phone = static_encoder.encode(
        [
            "Samsung fridge freezer 300 litres stainless steel",
            "Bosch fridge freezer 250 litres white",
            "Apple iPhone 8 64GB space grey mobile phone",
        ],
        batch_size=64,
    )

    assert cosine(fridge, freezer) > cosine(fridge, phone)
    assert cosine(fridge, freezer) > cosine(freezer, phone)


def test_static_encoder_matches_model_on_single_token_names(
    static_encoder, torch_encoder
):
    names = ["camera", "television", "fridge"]

    expected = torch_encoder.encode(names, batch_size=64)
    found = static_encoder.encode(names, batch_size=64)

    for name, expected_row, found_row in zip(names, expected, found):
        assert cosine(expected_row, found_row) > 0.999, name


def test_static_encoder_counts_names_over_max_length(static_encoder):
    long_name = " ".join(["stainless steel kitchen knife"] * 80)

    over_length_count = static_encoder.count_over_length(
        ["bosch dishwasher", long_name, "apple iphone 8 64gb"]
    )
    long_row, cut_row = static_encoder.encode([long_name, long_name + " camera"])

    assert static_encoder.max_seq_length == 256
    assert over_length_count == 1
    assert np.allclose(long_row, cut_row)
