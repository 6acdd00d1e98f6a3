"""The linear head: per-category linear scores that the kNN vote is blended with.

A nearest-neighbour vote weighs each training name as a whole. So it cannot learn that
one n-gram (a brand, a unit, a model number) matters more for a category than the rest
of the name. A one-vs-rest linear model over the title's TF-IDF n-grams and its embedding learns
one weight per n-gram and category. The classifier turns its decision values into a
softmax distribution and blends it with the vote shares, with a weight chosen on
validation names.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np
from scipy import sparse
from sklearn.pipeline import FeatureUnion
from sklearn.svm import LinearSVC

from mkt.features import CHAR_FEATURE_COUNT, WORD_FEATURE_COUNT, ngram_features

logger = logging.getLogger(__name__)

FEATURES_FILE = "linear_head_features.joblib"
WEIGHTS_FILE = "linear_head_weights.npz"
SEED = 42
# NOTE: LinearSVC fits one model per category over a float64 copy of every training
# name, so above these sizes the classifier trains without a head.
MAX_FIT_WORK = 2e9
MAX_FIT_NAMES = 500_000


def fit_size_problem(
    name_count: int, category_count: int, embedding_dimension: int, budget_mb: float
) -> str | None:
    """Return why a head of this size is not fitted, or None when it may be.

    The weights take categories x (n-gram features + embedding columns) float32 values,
    and fitting costs about names x categories.
    """
    if category_count < 2:
        return f"it needs at least 2 categories, got {category_count}"
    feature_count = WORD_FEATURE_COUNT + CHAR_FEATURE_COUNT + embedding_dimension
    weight_mb = category_count * feature_count * 4 / 1e6
    if weight_mb > budget_mb:
        return (
            f"its weights would take {weight_mb:,.0f} MB for {category_count:,} "
            f"categories, over linear_head_budget_mb={budget_mb:,.0f}. Raise the budget "
            f"to fit one"
        )
    if name_count > MAX_FIT_NAMES:
        return f"{name_count:,} training names are over the limit of {MAX_FIT_NAMES:,}"
    if name_count * category_count > MAX_FIT_WORK:
        return (
            f"fitting it on {name_count:,} names x {category_count:,} categories is "
            f"over the limit of {MAX_FIT_WORK:,.0f}"
        )
    return None


class LinearHead:
    """One-vs-rest LinearSVC over TF-IDF n-grams of a title joined with its unit embedding.

    Column j of `decision` scores the category at position `labels[j]` of the classifier.
    """

    def __init__(
        self,
        features: FeatureUnion,
        weights: np.ndarray,
        intercepts: np.ndarray,
        labels: np.ndarray,
        category_count: int,
    ) -> None:
        self.features = features
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.intercepts = np.asarray(intercepts, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.category_count = category_count

    @classmethod
    def fit(
        cls,
        titles: Sequence[str],
        embeddings: np.ndarray,
        labels: np.ndarray,
        category_count: int,
        features: FeatureUnion | None = None,
    ) -> "LinearHead":
        """Fit the vectorisers and the linear model on training names.

        Args:
            titles: The cleaned title of each training name.
            embeddings: Their unit embeddings, one row per title.
            labels: The classifier's category position of each name.
            category_count: Number of categories of the classifier.
            features: Vectorisers already fitted on these titles, such as the lexical
                block's, to share instead of fitting new ones.
        """
        if features is not None:
            return cls.fit_on_features(
                features,
                features.transform(list(titles)),
                embeddings,
                labels,
                category_count,
            )
        features = ngram_features(np.float32)
        counts = features.fit_transform(list(titles))
        return cls.fit_on_features(features, counts, embeddings, labels, category_count)

    @classmethod
    def fit_on_features(
        cls,
        features: FeatureUnion,
        counts: sparse.spmatrix,
        embeddings: np.ndarray,
        labels: np.ndarray,
        category_count: int,
    ) -> "LinearHead":
        """Fit the linear model on the TF-IDF counts of fitted vectorisers."""
        model = LinearSVC(C=1.0, random_state=SEED)
        model.fit(join_features(counts, embeddings), labels)
        weights, intercepts = model.coef_, model.intercept_
        if len(model.classes_) == 2:
            # With two classes LinearSVC keeps one model, positive for classes_[1].
            weights = np.vstack([-weights, weights])
            intercepts = np.concatenate([-intercepts, intercepts])
        return cls(features, weights, intercepts, model.classes_, category_count)

    def estimate_bytes(self) -> int:
        """Estimate the memory of the head: weights and the vectorisers' vocabularies."""
        # About 100 bytes per vocabulary entry: the n-gram string, its dict slot and idf.
        vocabulary_bytes = self.weights.shape[1] * 100
        return int(self.weights.nbytes + self.intercepts.nbytes + vocabulary_bytes)

    def decision(
        self, titles: Sequence[str], embeddings: np.ndarray, counts=None
    ) -> np.ndarray:
        """Return the decision value of every category for each name, shape (n, categories).

        Categories the head was not fitted on get -inf, so a softmax gives them 0.
        `counts`, when given, are the titles' features already computed by `features`.
        """
        if counts is None:
            counts = self.features.transform(list(titles))
        scores = np.asarray(
            join_features(counts, embeddings) @ self.weights.T, dtype=np.float32
        )
        scores += self.intercepts
        full = np.full((len(titles), self.category_count), -np.inf, dtype=np.float32)
        full[:, self.labels] = scores
        return full

    def probabilities(
        self, titles: Sequence[str], embeddings: np.ndarray, scale: float, counts=None
    ) -> np.ndarray:
        """Return softmax(scale x decision) per name: one distribution over the categories."""
        return softmax(self.decision(titles, embeddings, counts), scale)

    def save(self, folder: Path, *, shares_features: bool = False) -> None:
        """Write the weights, and the vectorisers unless another part saves them."""
        if not shares_features:
            # NOTE: joblib pickles scikit-learn objects, so loading needs the same version.
            joblib.dump(self.features, folder / FEATURES_FILE)
        np.savez(
            folder / WEIGHTS_FILE,
            weights=self.weights,
            intercepts=self.intercepts,
            labels=self.labels,
            category_count=np.int64(self.category_count),
        )

    @classmethod
    def load(
        cls, folder: Path, shared_features: FeatureUnion | None = None
    ) -> "LinearHead | None":
        """Read a head written by `save`, or return None when the folder has none.

        A head saved with `shares_features` needs those vectorisers in `shared_features`.
        """
        if not (folder / WEIGHTS_FILE).is_file():
            return None
        features = shared_features
        if features is None:
            features = joblib.load(folder / FEATURES_FILE)
        with np.load(folder / WEIGHTS_FILE) as arrays:
            return cls(
                features,
                arrays["weights"],
                arrays["intercepts"],
                arrays["labels"],
                int(arrays["category_count"]),
            )


def join_features(counts: sparse.spmatrix, embeddings: np.ndarray) -> sparse.csr_matrix:
    """Return the n-gram TF-IDF columns followed by the unit embedding's columns."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, np.finfo(np.float32).tiny)
    return sparse.hstack(
        [counts.astype(np.float32), sparse.csr_matrix(unit)], format="csr"
    )


def softmax(decision: np.ndarray, scale: float) -> np.ndarray:
    """Return the row-wise softmax of scale x decision, where -inf columns get 0."""
    shifted = scale * (decision - decision.max(axis=1, keepdims=True))
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)
