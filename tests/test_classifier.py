"""Tests of the FAISS nearest-neighbour classifier on small arrays and on real embeddings."""

import numpy as np
import pandas as pd
import pytest

from mkt.classifier import KnnClassifier
from tests.conftest import SAMPLE_PRODUCTS


def unit_rows(*rows):
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def two_cluster_classifier(**settings):
    embeddings = unit_rows([1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1])
    labels = ["a", "a", "b", "b"]
    return KnnClassifier.build(
        embeddings, labels, {"a": "Root > A", "b": "Root > B"}, **settings
    )


def test_predicts_nearest_cluster_with_path():
    classifier = two_cluster_classifier(k=3)

    (prediction,) = classifier.predict(unit_rows([1, 0.05, 0]))

    assert prediction.category_id == "a"
    assert prediction.category_path == "Root > A"
    assert 0.5 < prediction.score <= 1.0


def test_k_larger_than_index_never_yields_missing_labels():
    classifier = two_cluster_classifier(k=50)

    (prediction,) = classifier.predict(unit_rows([0, 1, 0]), top_k=10)

    assert [c.category_id for c in prediction.candidates] == ["b", "a"]
    assert sum(c.score for c in prediction.candidates) == pytest.approx(1.0)


def test_empty_index_abstains():
    classifier = KnnClassifier.build(np.empty((0, 3), dtype=np.float32), [], {})

    (prediction,) = classifier.predict(unit_rows([1, 0, 0]))

    assert prediction.is_abstained
    assert prediction.candidates == []


def test_abstains_below_threshold_but_keeps_candidates():
    embeddings = unit_rows([1, 0, 0], [1, 0.01, 0])
    classifier = KnnClassifier.build(
        embeddings, ["a", "b"], {}, k=2, vote_temperature=10.0, abstain_threshold=0.9
    )

    (prediction,) = classifier.predict(unit_rows([1, 0.005, 0]))

    assert prediction.is_abstained
    assert prediction.category_id is None
    assert len(prediction.candidates) == 1
    assert prediction.score < 0.9


def test_rejects_embeddings_of_wrong_dimension():
    classifier = two_cluster_classifier()

    with pytest.raises(ValueError, match="shape"):
        classifier.predict(np.ones((1, 5), dtype=np.float32))


def test_save_and_load_round_trip(tmp_path):
    classifier = two_cluster_classifier(k=2, abstain_threshold=0.3)
    query = unit_rows([0.2, 1, 0], [1, 0.1, 0.2])

    classifier.save(tmp_path / "clf")
    loaded = KnnClassifier.load(tmp_path / "clf")

    assert loaded.predict(query, top_k=2) == classifier.predict(query, top_k=2)
    assert loaded.abstain_threshold == 0.3


@pytest.fixture(scope="module")
def sample_classifier(encoder):
    from mkt.embeddings import encode_titles

    frame = pd.read_csv(SAMPLE_PRODUCTS).groupby("category_id").head(60)
    embeddings = encode_titles(encoder, frame["title"].tolist())
    paths = dict(zip(frame["category_id"].astype(str), frame["category_path"]))
    return KnnClassifier.build(
        embeddings, frame["category_id"].astype(str).tolist(), paths
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("title", "expected_path"),
    [
        ("apple iphone 11 pro 256gb midnight green", "Mobile Phones"),
        ("samsung ue55tu8000 55 inch 4k smart tv", "TVs"),
        ("intel core i7-9700k 3.6ghz processor", "CPUs"),
        ("bosch sms46 freestanding dishwasher 60cm", "Dishwashers"),
    ],
)
def test_clear_titles_land_in_expected_category(
    encoder, sample_classifier, title, expected_path
):
    from mkt.embeddings import encode_titles

    (prediction,) = sample_classifier.predict(encode_titles(encoder, [title]))

    assert prediction.category_path == expected_path


@pytest.mark.slow
def test_noise_words_leave_category_unchanged(encoder, sample_classifier):
    from mkt.embeddings import encode_titles

    titles = [
        "samsung galaxy s9 64gb black",
        "samsung galaxy s9 64gb black free delivery new",
    ]

    plain, noisy = sample_classifier.predict(encode_titles(encoder, titles))

    assert plain.category_path == noisy.category_path == "Mobile Phones"


def sibling_classifier(**settings):
    """Two leaves under 'Food > Fruit' that split the vote, and one under 'Food > Bread'."""
    embeddings = unit_rows([1, 0.1, 0], [1, -0.1, 0], [0, 1, 0])
    paths = {
        "apple": "Food > Fruit > Apples",
        "pear": "Food > Fruit > Pears",
        "rye": "Food > Bread > Rye",
    }
    return KnnClassifier.build(
        embeddings,
        ["apple", "pear", "rye"],
        paths,
        k=3,
        vote_temperature=1.0,
        abstain_threshold=0.6,
        **settings,
    )


def test_abstaining_name_backs_off_to_confident_ancestor():
    classifier = sibling_classifier(backoff_share=0.6)

    (prediction,) = classifier.predict(unit_rows([1, 0.01, 0]))

    assert prediction.is_abstained
    assert prediction.category_path == "Food > Fruit"
    assert prediction.candidates[0].category_path == "Food > Fruit > Apples"


def test_back_off_needs_the_ancestor_share():
    classifier = sibling_classifier(backoff_share=0.99)

    (prediction,) = classifier.predict(unit_rows([1, 0.01, 0]))

    assert prediction.is_abstained
    assert prediction.category_path == "Food"


def test_back_off_is_off_without_a_share():
    classifier = sibling_classifier()

    (prediction,) = classifier.predict(unit_rows([1, 0.01, 0]))

    assert prediction.is_abstained
    assert prediction.category_path is None


def test_back_off_share_survives_save_and_load(tmp_path):
    classifier = sibling_classifier(backoff_share=0.6)

    classifier.save(tmp_path / "clf")
    loaded = KnnClassifier.load(tmp_path / "clf")

    assert loaded.backoff_share == 0.6
    query = unit_rows([1, 0.01, 0])
    assert loaded.predict(query) == classifier.predict(query)
