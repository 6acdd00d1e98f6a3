"""Tests of the ONNX Runtime backend against the PyTorch one, and of its export cache."""

import shutil

import numpy as np
import pandas as pd
import pytest

from mkt.classifier import KnnClassifier
from mkt.encoders import EncoderSpec, load_encoder
from mkt.encoders.onnx_backend import (
    MODEL_FILE,
    SPINNING_CONFIG_KEY,
    ensure_export,
    read_export,
)
from tests.conftest import SAMPLE_PRODUCTS

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
POLISH_NAMES = [
    "Pralka automatyczna Bosch WAN28263PL 8 kg",
    "Masło extra 82% 200 g",
    "pączki z różą 6 szt",
]


@pytest.fixture(scope="module")
def onnx_encoder(export_dir):
    return load_encoder(f"onnx:{MODEL_NAME}", export_dir)


@pytest.fixture(scope="module")
def int8_encoder(export_dir):
    return load_encoder(f"onnx-int8:{MODEL_NAME}", export_dir)


@pytest.fixture(scope="module")
def sample_frame():
    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str, keep_default_na=False)
    return frame.groupby("category_id").head(40)


def build_classifier(encoder, frame) -> KnnClassifier:
    embeddings = encoder.encode(frame["title"].tolist(), batch_size=64)
    paths = dict(zip(frame["category_id"], frame["category_path"]))
    return KnnClassifier.build(embeddings, frame["category_id"].tolist(), paths)


def test_onnx_matches_torch_on_real_names(torch_encoder, onnx_encoder, sample_frame):
    names = [*sample_frame["title"].head(200), *POLISH_NAMES, "x"]

    expected = torch_encoder.encode(names, batch_size=64)
    found = onnx_encoder.encode(names, batch_size=16)

    cosines = np.sum(expected * found, axis=1)
    assert found.shape == expected.shape == (len(names), 384)
    assert found.dtype == np.float32
    assert cosines.min() >= 0.999


def test_onnx_single_name_matches_batch(onnx_encoder):
    names = ["bosch sms46 freestanding dishwasher 60cm", "tv"]

    together = onnx_encoder.encode(names, batch_size=2)
    alone = onnx_encoder.encode(names[:1], batch_size=1)

    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


@pytest.mark.slow
def test_int8_keeps_top_category(torch_encoder, int8_encoder, sample_frame):
    titles = [
        "apple iphone 11 pro 256gb midnight green",
        "samsung ue55tu8000 55 inch 4k smart tv",
        "intel core i7-9700k 3.6ghz processor",
        "bosch sms46 freestanding dishwasher 60cm",
        "samsung galaxy s9 64gb black free delivery new",
    ]
    torch_classifier = build_classifier(torch_encoder, sample_frame)
    int8_classifier = build_classifier(int8_encoder, sample_frame)

    expected = torch_classifier.predict(torch_encoder.encode(titles, batch_size=8))
    found = int8_classifier.predict(int8_encoder.encode(titles, batch_size=8))

    assert [p.category_id for p in found] == [p.category_id for p in expected]


def test_int8_export_is_smaller(onnx_encoder, int8_encoder):
    assert int8_encoder.size_bytes < onnx_encoder.size_bytes / 3
    assert int8_encoder.max_seq_length == onnx_encoder.max_seq_length == 256


def test_export_is_reused(export_dir, onnx_encoder):
    spec = EncoderSpec("onnx", MODEL_NAME)
    folder = ensure_export(spec, export_dir)
    written_ns = (folder / MODEL_FILE).stat().st_mtime_ns

    again = ensure_export(spec, export_dir)

    assert again == folder
    assert (again / MODEL_FILE).stat().st_mtime_ns == written_ns
    assert not list(export_dir.glob(".export-*"))


def test_corrupt_export_is_rebuilt(tmp_path, export_dir, onnx_encoder):
    spec = EncoderSpec("onnx", MODEL_NAME)
    source = ensure_export(spec, export_dir)
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    model_bytes = (folder / MODEL_FILE).read_bytes()
    (folder / MODEL_FILE).write_bytes(model_bytes[: len(model_bytes) // 2])
    assert read_export(folder) is None

    rebuilt = ensure_export(spec, tmp_path)

    assert rebuilt == folder
    assert read_export(rebuilt) is not None
    assert (rebuilt / MODEL_FILE).stat().st_size == len(model_bytes)


def test_int8_counts_names_over_max_length(int8_encoder):
    long_name = " ".join(["stainless steel kitchen knife"] * 80)

    over_length_count = int8_encoder.count_over_length([long_name, "tv"])

    assert over_length_count == 1


def test_onnx_padded_batches_match_unpadded(onnx_encoder, sample_frame):
    names = [*sample_frame["title"].head(64), *POLISH_NAMES]

    in_batches = onnx_encoder.encode(names, batch_size=16)
    one_by_one = onnx_encoder.encode(names, batch_size=1)

    np.testing.assert_allclose(in_batches, one_by_one, atol=1e-5)


def test_int8_small_batches_stay_close(int8_encoder, sample_frame):
    names = sample_frame["title"].head(64).tolist()

    one_batch = int8_encoder.encode(names, batch_size=64)
    small_batches = int8_encoder.encode(names, batch_size=16)

    # Dynamic quantization scales each batch's activations by that batch's own range,
    # so the vectors move a little with the names that share a batch, but not far.
    cosines = np.sum(small_batches * one_batch, axis=1)
    assert cosines.min() >= 0.95
    assert cosines.mean() >= 0.98


def test_onnx_session_does_not_spin(int8_encoder):
    options = int8_encoder.session.get_session_options()

    assert options.get_session_config_entry(SPINNING_CONFIG_KEY) == "0"
