"""Tests of the vote weighting, the class-prior correction and per-store tuning."""

import numpy as np
import pandas as pd
import pytest

from mkt.classifier import KnnClassifier
from mkt.stores.config import ClassifierSettings
from mkt.tuning import (
    LabelledNames,
    fit_classifier,
    score_votes,
    split_validation,
    tuning_sample,
)
from tests.conftest import SAMPLE_PRODUCTS


def unit_rows(*rows):
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def crowded_classifier(**settings) -> KnnClassifier:
    """One close 'small' neighbour, then four 'large' ones a little farther away."""
    embeddings = unit_rows(
        [1, 0.10, 0], [1, 0.30, 0], [1, 0.32, 0], [1, 0.34, 0], [1, 0.36, 0]
    )
    labels = ["small", "large", "large", "large", "large"]
    return KnnClassifier.build(embeddings, labels, {}, k=5, **settings)


def test_cold_vote_follows_the_nearest_neighbour():
    query = unit_rows([1, 0.1, 0])

    (warm,) = crowded_classifier(vote_temperature=1.0).predict(query)
    (cold,) = crowded_classifier(vote_temperature=0.005).predict(query)

    assert warm.category_id == "large"
    assert cold.category_id == "small"


def test_class_prior_exponent_lets_small_category_win():
    query = unit_rows([1, 0.1, 0])

    (plain,) = crowded_classifier(vote_temperature=1.0).predict(query)
    (corrected,) = crowded_classifier(
        vote_temperature=1.0, class_prior_exponent=1.0
    ).predict(query)

    assert plain.category_id == "large"
    assert corrected.category_id == "small"
    assert corrected.score > 0.5


def test_score_votes_matches_the_classifier():
    classifier = crowded_classifier(vote_temperature=0.05, class_prior_exponent=0.5)
    queries = unit_rows([1, 0.1, 0], [1, 0.3, 0], [1, 0.2, 0])

    similarities, positions = classifier.search_neighbours(queries, None, 5)
    winners, shares = score_votes(
        similarities,
        classifier.vector_labels[positions],
        classifier.vote_scales,
        k=5,
        vote_temperature=0.05,
    )

    predictions = classifier.predict(queries)
    assert [classifier.categories[w][0] for w in winners] == [
        p.category_id for p in predictions
    ]
    assert shares == pytest.approx([p.score for p in predictions])


def test_split_validation_keeps_copies_of_a_name_together():
    titles = ["Apple iPhone 8", "apple iphone 8", "Bosch SMS46", "LG OLED55"] * 5

    is_validation = split_validation(titles, fraction=0.34, seed=42)

    for key in ("apple iphone 8", "bosch sms46", "lg oled55"):
        sides = {v for t, v in zip(titles, is_validation) if t.lower() == key}
        assert len(sides) == 1
    assert 0 < is_validation.sum() < len(titles)


@pytest.fixture(scope="module")
def sample_names(encoder):
    from mkt.embeddings import encode_titles

    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str).groupby("category_id").head(40)
    embeddings = encode_titles(encoder, frame["title"].tolist())
    paths = dict(zip(frame["category_id"], frame["category_path"]))
    names = LabelledNames(
        embeddings, frame["title"].tolist(), frame["category_id"].tolist()
    )
    return names, paths


@pytest.mark.slow
def test_fit_classifier_tunes_and_calibrates_on_validation(sample_names):
    names, paths = sample_names

    classifier, tuning = fit_classifier(
        names, paths, ClassifierSettings(), precision_target=0.9, seed=42
    )

    assert tuning.validation_count == pytest.approx(0.15 * len(names.titles), abs=5)
    assert tuning.validation_accuracy > 0.8
    assert classifier.k == tuning.settings.k
    assert classifier.lexical_weight == tuning.settings.lexical_weight
    assert classifier.linear_weight == tuning.settings.linear_weight
    assert (classifier.linear_head is not None) == (tuning.settings.linear_weight > 0)
    assert classifier.calibration == tuning.calibration
    assert classifier.abstain_threshold == tuning.abstain_threshold
    assert 0.0 < classifier.abstain_threshold <= 1.0
    assert classifier.backoff_share == tuning.backoff_share


@pytest.mark.slow
def test_fit_classifier_keeps_configured_settings_without_tuning(sample_names):
    names, paths = sample_names
    config = ClassifierSettings(
        tune_on_validation=False, k=7, lexical_weight=0.3, abstain_threshold=0.4
    )

    classifier, tuning = fit_classifier(
        names, paths, config, precision_target=0.9, seed=42
    )

    assert tuning is None
    assert classifier.k == 7
    assert classifier.linear_head is None
    assert classifier.lexical_block is not None
    assert classifier.calibration is None
    assert classifier.abstain_threshold == 0.4


def names_on_file(names: LabelledNames, folder) -> LabelledNames:
    """Return the names with their embeddings at odd rows of a float16 file of noise."""
    path = folder / "embeddings.npy"
    dimension = names.embeddings.shape[1]
    noise = np.random.default_rng(0).standard_normal((2 * len(names.titles), dimension))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    noise[1::2] = names.embeddings
    np.save(path, noise.astype(np.float16))
    return LabelledNames(
        np.load(path, mmap_mode="r"),
        names.titles,
        names.category_ids,
        rows=np.arange(1, 2 * len(names.titles), 2),
    )


def test_tuning_sample_keeps_names_and_embeddings_together(sample_names, tmp_path):
    names, _ = sample_names
    on_file = names_on_file(names, tmp_path)

    sample = tuning_sample(on_file, limit=50, seed=3)

    assert len(sample.titles) == 50
    assert sample.rows is None
    assert not isinstance(sample.embeddings, np.memmap)
    for title, vector in zip(sample.titles, sample.embeddings):
        original = names.embeddings[names.titles.index(title)]
        assert np.allclose(vector, original, atol=2e-3)


@pytest.mark.slow
def test_fit_classifier_reads_file_rows_like_memory(sample_names, tmp_path):
    names, paths = sample_names
    on_file = names_on_file(names, tmp_path)
    in_memory = LabelledNames(on_file.vectors(), names.titles, names.category_ids)

    from_file, file_tuning = fit_classifier(
        on_file, paths, ClassifierSettings(), precision_target=0.9, seed=42
    )
    from_memory, memory_tuning = fit_classifier(
        in_memory, paths, ClassifierSettings(), precision_target=0.9, seed=42
    )

    assert file_tuning.settings == memory_tuning.settings
    queries = in_memory.embeddings[::7]
    titles = names.titles[::7]
    assert [p.category_id for p in from_file.predict(queries, titles=titles)] == [
        p.category_id for p in from_memory.predict(queries, titles=titles)
    ]
