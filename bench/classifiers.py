"""The classifiers the accuracy benchmark compares, each fitted and timed the same way."""

import time
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from bench.splits import SEED, Split
from mkt.classifier import KnnClassifier
from mkt.stores.config import ClassifierSettings
from mkt.tuning import LabelledNames, TuningResult, fit_classifier

VOTE_TEMPERATURE = 0.05


@dataclass(frozen=True)
class MethodResult:
    """Top category and its score per test name, with the seconds one method took."""

    method: str
    predicted_ids: np.ndarray
    scores: np.ndarray
    train_s: float
    predict_s: float
    uses_embeddings: bool
    # The ancestor path each abstaining name backs off to, or None; None for methods
    # without back-off.
    ancestor_paths: list[str | None] | None = None


def run_knn(
    train_embeddings: np.ndarray,
    split: Split,
    test_embeddings: np.ndarray,
    *,
    k: int,
) -> MethodResult:
    """Build mkt's KnnClassifier on the training embeddings and classify the test ones."""
    paths = dict(zip(split.train["category_id"], split.train["category_path"]))
    started = time.perf_counter()
    # build() normalises its input in place, so it gets a copy of the shared embeddings.
    classifier = KnnClassifier.build(
        train_embeddings.copy(),
        split.train["category_id"].tolist(),
        paths,
        k=k,
        vote_temperature=VOTE_TEMPERATURE,
        abstain_threshold=0.0,
    )
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    predictions = classifier.predict(test_embeddings, top_k=1)
    predict_s = time.perf_counter() - started

    top = [prediction.candidates[0] for prediction in predictions]
    predicted_ids = np.array([candidate.category_id for candidate in top])
    scores = np.array([candidate.score for candidate in top])
    return MethodResult(
        f"mkt kNN (k={k})", predicted_ids, scores, train_s, predict_s, True
    )


def run_tuned_knn(
    train_embeddings: np.ndarray,
    split: Split,
    test_embeddings: np.ndarray,
    *,
    precision_target: float,
) -> tuple[MethodResult, TuningResult | None]:
    """Train mkt's classifier as the train stage does, with its default settings.

    The vote settings, lexical block and calibration are chosen on a validation split
    of the training names only; the test names are classified once, at the end.
    """
    paths = dict(zip(split.train["category_id"], split.train["category_path"]))
    names = LabelledNames(
        train_embeddings,
        split.train["title"].tolist(),
        split.train["category_id"].tolist(),
    )
    started = time.perf_counter()
    classifier, tuning = fit_classifier(
        names,
        paths,
        ClassifierSettings(),
        precision_target=precision_target,
        seed=SEED,
    )
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    predictions = classifier.predict(
        test_embeddings, top_k=1, titles=split.test["title"].tolist()
    )
    predict_s = time.perf_counter() - started

    top = [prediction.candidates[0] for prediction in predictions]
    predicted_ids = np.array([candidate.category_id for candidate in top])
    scores = np.array([candidate.score for candidate in top])
    ancestor_paths = [p.category_path if p.is_abstained else None for p in predictions]
    result = MethodResult(
        "mkt kNN (tuned)",
        predicted_ids,
        scores,
        train_s,
        predict_s,
        True,
        ancestor_paths,
    )
    return result, tuning


def run_nearest_centroid(
    train_embeddings: np.ndarray, split: Split, test_embeddings: np.ndarray
) -> MethodResult:
    """Classify each test embedding by its cosine to the closest category centroid."""
    started = time.perf_counter()
    labels, positions = np.unique(
        split.train["category_id"].to_numpy(), return_inverse=True
    )
    # Summing instead of averaging changes only the length, which the division removes.
    centroids = np.zeros((len(labels), train_embeddings.shape[1]), dtype=np.float32)
    np.add.at(centroids, positions, train_embeddings)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids /= np.maximum(norms, np.finfo(np.float32).tiny)
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    similarities = test_embeddings @ centroids.T
    best = similarities.argmax(axis=1)
    scores = similarities[np.arange(len(best)), best]
    predict_s = time.perf_counter() - started
    return MethodResult(
        "Nearest centroid", labels[best], scores, train_s, predict_s, True
    )


def build_tfidf_svm() -> Pipeline:
    """Return TF-IDF word 1-2 grams plus char_wb 2-5 grams feeding a LinearSVC (C=1)."""
    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    features = FeatureUnion([("word", word), ("char", char)])
    svm = LinearSVC(C=1.0, random_state=SEED)
    return Pipeline([("features", features), ("svm", svm)])


def run_tfidf_svm(split: Split) -> MethodResult:
    """Fit TF-IDF + LinearSVC on the training titles and classify the test titles.

    The score of a name is its largest decision value, which is what coverage ranks by.
    """
    pipeline = build_tfidf_svm()
    started = time.perf_counter()
    pipeline.fit(split.train["title"].tolist(), split.train["category_id"].tolist())
    train_s = time.perf_counter() - started

    started = time.perf_counter()
    decision = pipeline.decision_function(split.test["title"].tolist())
    predict_s = time.perf_counter() - started

    if decision.ndim == 1:
        # With two categories LinearSVC returns one column, positive for classes_[1].
        decision = np.column_stack([-decision, decision])
    best = decision.argmax(axis=1)
    scores = decision[np.arange(len(best)), best]
    predicted_ids = pipeline.classes_[best]
    return MethodResult(
        "TF-IDF + LinearSVC", predicted_ids, scores, train_s, predict_s, False
    )
