"""Tests of the lexical block: fitting, unit rows and the save/load round trip."""

import numpy as np
import pandas as pd
import pytest

from mkt.classifier import KnnClassifier
from mkt.features import LexicalBlock, combine_vectors
from tests.conftest import SAMPLE_PRODUCTS


@pytest.fixture(scope="module")
def sample_frame():
    return pd.read_csv(SAMPLE_PRODUCTS).groupby("category_id").head(40)


@pytest.fixture(scope="module")
def lexical_block(sample_frame):
    return LexicalBlock.fit(sample_frame["title"].tolist(), dimension=32)


def test_lexical_block_returns_unit_rows(lexical_block):
    block = lexical_block.transform(["samsung galaxy s9 64gb", "bosch dishwasher"])

    assert block.shape == (2, 32)
    assert np.linalg.norm(block, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_lexical_block_rates_shared_letters_closer(lexical_block):
    phone, phone_variant, dishwasher = lexical_block.transform(
        [
            "apple iphone 8 64gb space grey",
            "apple iphone 8 64 gb spacegrau",
            "bosch serie 4 freestanding dishwasher",
        ]
    )

    assert phone @ phone_variant > phone @ dishwasher


def test_lexical_block_caps_dimension_at_title_count():
    block = LexicalBlock.fit(["red apple", "green pear", "blue plum"], dimension=64)

    assert block.dimension == 2


def test_lexical_block_save_and_load_round_trip(tmp_path, lexical_block):
    titles = ["lg oled55c9 55 inch tv", "intel core i5 9400f"]

    lexical_block.save(tmp_path)
    loaded = LexicalBlock.load(tmp_path)

    assert np.array_equal(loaded.transform(titles), lexical_block.transform(titles))


def test_lexical_block_load_returns_none_without_file(tmp_path):
    assert LexicalBlock.load(tmp_path) is None


def test_combine_vectors_weights_the_cosines():
    embeddings = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    lexical = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)

    combined = combine_vectors(embeddings, lexical, lexical_weight=0.25)

    embedding_cosine = 0.6
    lexical_cosine = 0.0
    assert combined[0] @ combined[1] == pytest.approx(
        0.75 * embedding_cosine + 0.25 * lexical_cosine
    )


def lexical_classifier(frame: pd.DataFrame, block: LexicalBlock) -> KnnClassifier:
    # Random embeddings, so the lexical block alone carries the category.
    embeddings = np.random.default_rng(0).normal(size=(len(frame), 8))
    paths = dict(zip(frame["category_id"].astype(str), frame["category_path"]))
    return KnnClassifier.build(
        embeddings,
        frame["category_id"].astype(str).tolist(),
        paths,
        titles=frame["title"].tolist(),
        lexical_block=block,
        lexical_weight=0.9,
        k=5,
    )


def test_classifier_with_lexical_block_round_trips(
    tmp_path, sample_frame, lexical_block
):
    classifier = lexical_classifier(sample_frame, lexical_block)
    titles = ["apple iphone x 256gb silver", "samsung 55 inch qled tv"]
    embeddings = np.random.default_rng(1).normal(size=(2, 8))

    classifier.save(tmp_path / "classifier")
    loaded = KnnClassifier.load(tmp_path / "classifier")

    expected = classifier.predict(embeddings, top_k=3, titles=titles)
    assert loaded.predict(embeddings, top_k=3, titles=titles) == expected
    assert loaded.lexical_weight == 0.9
    assert loaded.dimension == 8


def test_classifier_with_lexical_block_uses_the_titles(sample_frame, lexical_block):
    classifier = lexical_classifier(sample_frame, lexical_block)
    embeddings = np.random.default_rng(1).normal(size=(1, 8))

    (prediction,) = classifier.predict(
        embeddings, titles=["apple iphone 7 plus 128gb rose gold"]
    )

    assert prediction.category_path == "Mobile Phones"


def test_classifier_with_lexical_block_rejects_missing_titles(
    sample_frame, lexical_block
):
    classifier = lexical_classifier(sample_frame, lexical_block)

    with pytest.raises(ValueError, match="got no titles for 1 rows"):
        classifier.predict(np.ones((1, 8), dtype=np.float32))


def test_lexical_block_estimate_counts_components(lexical_block):
    components = lexical_block.pipeline.named_steps["reduction"].components_

    estimate = lexical_block.estimate_bytes()

    assert estimate > components.nbytes
    assert estimate < 2 * components.nbytes + 10_000_000
