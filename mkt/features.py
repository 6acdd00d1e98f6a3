"""The lexical block: character and word n-grams of a title, reduced to a dense vector.

Sentence embeddings of an English encoder blur brands, units and model numbers, and
they split non-English words into short pieces. A TF-IDF of character n-grams keeps
those letters, so the classifier searches the embedding and this block side by side.
"""

from collections.abc import Sequence
from pathlib import Path

import joblib
import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline

LEXICAL_FILE = "lexical_block.joblib"
WORD_FEATURE_COUNT = 10_000
CHAR_FEATURE_COUNT = 20_000
SEED = 42


class LexicalBlock:
    """TF-IDF of word 1-2 grams and char_wb 2-5 grams, reduced by TruncatedSVD.

    The rows it returns are L2-normalised, so their inner product is a cosine.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        # TruncatedSVD.transform multiplies the float64 features by components_.T, so
        # scipy copies the float32 components to float64 on every call. Multiplying
        # float32 features by this kept contiguous copy avoids that copy.
        components = pipeline.named_steps["reduction"].components_
        self._projection = np.ascontiguousarray(components.T, dtype=np.float32)

    @classmethod
    def fit(cls, titles: Sequence[str], dimension: int) -> "LexicalBlock":
        """Fit the vectorisers and the reduction on a store's training titles.

        The block has at most `dimension` columns, and fewer when the titles have
        fewer distinct n-grams than that.
        """
        if len(titles) < 2:
            raise ValueError(f"need at least 2 titles to fit, got {len(titles)}")
        # The feature caps bound the saved SVD components to about
        # 30,000 x dimension floats, whatever the size of the store.
        features = ngram_features(np.float64)
        matrix = features.fit_transform(list(titles))

        # TruncatedSVD needs fewer components than features and than rows.
        component_count = max(1, min(dimension, matrix.shape[1] - 1, len(titles) - 1))
        reduction = TruncatedSVD(component_count, n_iter=4, random_state=SEED)
        reduction.fit(matrix)
        reduction.components_ = reduction.components_.astype(np.float32)
        return cls(Pipeline([("features", features), ("reduction", reduction)]))

    @property
    def dimension(self) -> int:
        """Number of columns of the block."""
        return int(self.pipeline.named_steps["reduction"].components_.shape[0])

    def estimate_bytes(self) -> int:
        """Estimate the memory of the fitted block: SVD components and vocabularies."""
        components = self.pipeline.named_steps["reduction"].components_
        feature_count = components.shape[1]
        # About 100 bytes per vocabulary entry: the n-gram string, its dict slot and idf.
        return int(components.nbytes + feature_count * 100)

    @property
    def features(self):
        """The fitted TF-IDF vectorisers, which a linear head may share."""
        return self.pipeline.named_steps["features"]

    def transform(self, titles: Sequence[str], counts=None) -> np.ndarray:
        """Return the L2-normalised block of each title, one float32 row per title.

        `counts`, when given, are the titles' TF-IDF features already computed by
        `features`, so the classifier computes them once for the block and the head.
        """
        if len(titles) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if counts is None:
            counts = self.features.transform(list(titles))
        block = np.asarray(counts.astype(np.float32) @ self._projection)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        # A title with no known n-gram gets a zero row, which matches nothing lexically.
        return block / np.maximum(norms, np.finfo(np.float32).tiny)

    def save(self, folder: Path) -> None:
        """Write the fitted vectorisers and reduction to a folder."""
        # NOTE: joblib pickles scikit-learn objects, so loading needs the same version.
        joblib.dump(self.pipeline, folder / LEXICAL_FILE)

    @classmethod
    def load(cls, folder: Path) -> "LexicalBlock | None":
        """Read a block written by `save`, or return None when the folder has none."""
        path = folder / LEXICAL_FILE
        if not path.is_file():
            return None
        return cls(joblib.load(path))


def ngram_features(dtype) -> FeatureUnion:
    """Return unfitted TF-IDF vectorisers of word 1-2 grams and char_wb 2-5 grams.

    They keep at most 10,000 word and 20,000 character n-grams, with sublinear TF.
    """
    word = TfidfVectorizer(
        analyzer="word",
        ngram_range=(1, 2),
        sublinear_tf=True,
        max_features=WORD_FEATURE_COUNT,
        dtype=dtype,
    )
    char = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(2, 5),
        sublinear_tf=True,
        max_features=CHAR_FEATURE_COUNT,
        dtype=dtype,
    )
    return FeatureUnion([("word", word), ("char", char)])


def combine_vectors(
    embeddings: np.ndarray, lexical: np.ndarray | None, lexical_weight: float
) -> np.ndarray:
    """Join unit embeddings and the unit lexical block into one unit row per name.

    The parts are scaled by sqrt(1 - w) and sqrt(w), so the inner product of two rows is
    (1 - w) * embedding cosine + w * lexical cosine.
    """
    embeddings = np.array(embeddings, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings /= np.maximum(norms, np.finfo(np.float32).tiny)
    if lexical is None:
        return embeddings
    if len(lexical) != len(embeddings):
        raise ValueError(
            f"got {len(embeddings)} embeddings but {len(lexical)} lexical rows"
        )
    return np.hstack(
        [
            np.sqrt(1.0 - lexical_weight) * embeddings,
            np.sqrt(lexical_weight) * lexical,
        ]
    ).astype(np.float32)
