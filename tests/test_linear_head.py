"""Tests of the linear head and its blend with the kNN vote."""

import logging
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from mkt.classifier import KnnClassifier
from mkt.linear_head import FEATURES_FILE, LinearHead, fit_size_problem, softmax
from mkt.tuning import (
    LabelledNames,
    VoteSettings,
    build_classifier,
    fit_linear_head,
    search_blends,
)
from tests.conftest import SAMPLE_PRODUCTS


@pytest.fixture(scope="module")
def sample_split(encoder):
    """Names of the bundled PriceRunner sample: 30 per category to train, 10 to test."""
    from mkt.embeddings import encode_titles

    frame = pd.read_csv(SAMPLE_PRODUCTS, dtype=str).groupby("category_id").head(40)
    embeddings = encode_titles(encoder, frame["title"].tolist())
    is_test = (frame.groupby("category_id").cumcount() >= 30).to_numpy()
    names = LabelledNames(
        embeddings, frame["title"].tolist(), frame["category_id"].tolist()
    )
    paths = dict(zip(frame["category_id"], frame["category_path"]))
    return names.subset(~is_test), names.subset(is_test), paths


def blended_classifier(train, paths, linear_weight) -> KnnClassifier:
    settings = VoteSettings(10, 0.05, 0.0, 0.0, linear_weight, 10.0)
    return build_classifier(train, paths, settings, lexical_dimension=64)


@pytest.mark.slow
def test_blend_weight_zero_and_one(sample_split):
    train, test, paths = sample_split
    knn = blended_classifier(train, paths, 0.0)
    head_only = blended_classifier(train, paths, 1.0)

    plain = knn.predict(test.embeddings, titles=test.titles)
    followed = head_only.predict(test.embeddings, titles=test.titles)

    assert knn.linear_head is None
    decision = head_only.linear_head.decision(test.titles, test.embeddings)
    head_ids = [head_only.categories[i][0] for i in decision.argmax(axis=1)]
    assert [p.category_id for p in followed] == head_ids
    assert [p.score for p in followed] == pytest.approx(
        softmax(decision, 10.0).max(axis=1), rel=1e-5
    )
    votes = KnnClassifier(knn.index, knn.vector_labels, knn.categories, k=10)
    assert [p.category_id for p in plain] == [
        p.category_id for p in votes.predict(test.embeddings)
    ]


@pytest.mark.slow
def test_blend_beats_vote_on_sample(sample_split):
    train, test, paths = sample_split

    accuracies = {}
    for weight in (0.0, 0.5):
        classifier = blended_classifier(train, paths, weight)
        predictions = classifier.predict(test.embeddings, titles=test.titles)
        accuracies[weight] = np.mean(
            [p.category_id == c for p, c in zip(predictions, test.category_ids)]
        )

    assert accuracies[0.5] >= accuracies[0.0]
    assert accuracies[0.5] > 0.9


@pytest.mark.slow
def test_saved_head_predicts_the_same(sample_split, tmp_path):
    train, test, paths = sample_split
    classifier = blended_classifier(train, paths, 0.5)

    classifier.save(tmp_path)
    loaded = KnnClassifier.load(tmp_path)

    assert loaded.linear_weight == 0.5
    assert loaded.linear_head is not None
    before = classifier.predict(test.embeddings, top_k=3, titles=test.titles)
    after = loaded.predict(test.embeddings, top_k=3, titles=test.titles)
    assert before == after


def test_two_categories_score_both_sides():
    titles = ["red apple fruit", "green apple fruit", "steel hammer", "claw hammer"]
    embeddings = np.eye(4, 8, dtype=np.float32)

    head = LinearHead.fit(titles, embeddings, np.array([0, 0, 1, 1]), 3)
    decision = head.decision(["yellow apple", "rubber hammer"], np.eye(2, 8))

    assert decision.shape == (2, 3)
    assert list(decision[:, :2].argmax(axis=1)) == [0, 1]
    # Category 2 had no training names, so the softmax gives it nothing.
    assert np.isneginf(decision[:, 2]).all()
    assert softmax(decision, 10.0)[:, 2].tolist() == [0.0, 0.0]


def test_classifier_with_head_needs_titles(sample_split):
    train, test, paths = sample_split
    head = LinearHead.fit(
        train.titles[:20],
        train.embeddings[:20],
        np.arange(20) % 2,
        2,
    )
    classifier = KnnClassifier.build(
        train.embeddings[:20],
        ["a", "b"] * 10,
        {},
        linear_head=head,
        linear_weight=0.5,
    )

    with pytest.raises(ValueError, match="linear head, so it needs one title"):
        classifier.predict(test.embeddings[:2])


def test_size_problem_names_the_budget_and_the_limits():
    assert fit_size_problem(20_000, 800, 384, 512) is None

    too_wide = fit_size_problem(27_600_000, 13_788, 384, 512)
    assert "linear_head_budget_mb=512" in too_wide
    assert "1,676 MB" in too_wide
    assert "13,788 categories" in too_wide
    assert "over the limit of 500,000" in fit_size_problem(600_000, 10, 384, 512)
    assert "at least 2 categories" in fit_size_problem(100, 1, 384, 512)


def test_oversized_head_is_left_out(sample_split, caplog):
    train, _, paths = sample_split
    settings = VoteSettings(10, 0.05, 0.0, 0.0, 0.5, 10.0)

    with caplog.at_level(logging.WARNING, logger="mkt.tuning"):
        classifier = build_classifier(
            train, paths, settings, lexical_dimension=64, linear_head_budget_mb=1.0
        )

    assert classifier.linear_head is None
    assert classifier.linear_weight == 0.0
    assert "No linear head" in caplog.text
    assert "linear_head_budget_mb=1" in caplog.text


@pytest.mark.slow
def test_blend_search_scores_as_the_classifier_predicts(sample_split):
    train, test, paths = sample_split
    probe = build_classifier(
        train, paths, VoteSettings(1, 1.0, 0.0, 0.0), lexical_dimension=64
    )
    head = fit_linear_head(train, probe, budget_mb=512)
    point = VoteSettings(5, 0.05, 0.5, 0.0)

    results = search_blends({0.0: probe}, head, [point], test, precision_target=0.9)

    for accuracy, _, settings, tops, is_correct in results:
        assert accuracy == pytest.approx(is_correct.mean())
        classifier = KnnClassifier(
            probe.index,
            probe.vector_labels,
            probe.categories,
            **asdict(settings),
            linear_head=head,
        )
        predictions = classifier.predict(test.embeddings, titles=test.titles)
        assert [p.score for p in predictions] == pytest.approx(tops, rel=1e-5)
        assert [
            p.category_id == c for p, c in zip(predictions, test.category_ids)
        ] == is_correct.tolist()
    assert len(results) == 9


@pytest.mark.slow
def test_head_shares_lexical_features(sample_split, tmp_path):
    train, test, paths = sample_split
    settings = VoteSettings(10, 0.05, 0.0, 0.3, 0.5, 10.0)
    classifier = build_classifier(train, paths, settings, lexical_dimension=64)

    classifier.save(tmp_path)
    loaded = KnnClassifier.load(tmp_path)

    assert classifier.shares_features
    assert loaded.shares_features
    assert not (tmp_path / FEATURES_FILE).exists()
    before = classifier.predict(test.embeddings, top_k=3, titles=test.titles)
    after = loaded.predict(test.embeddings, top_k=3, titles=test.titles)
    assert before == after
