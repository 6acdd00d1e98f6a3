"""The FAISS nearest-neighbour classifier: top-k categories with scores, or an abstain."""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
LABELS_FILE = "vector_labels.npy"
CATEGORIES_FILE = "categories.json"


@dataclass(frozen=True)
class Candidate:
    """One category proposed for a name, with its share of the neighbours' vote."""

    category_id: str
    category_path: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """The classifier's answer for one name; `category_id` is None when it abstains."""

    category_id: str | None
    category_path: str | None
    score: float
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def is_abstained(self) -> bool:
        """Whether the top score was under the abstain threshold (or no neighbour was found)."""
        return self.category_id is None


class KnnClassifier:
    """Classify L2-normalised embeddings by a similarity-weighted vote of their neighbours.

    Each of the k nearest training names votes for its category with weight
    exp((similarity - best similarity) / vote_temperature); a category's score is its share
    of the votes, so scores of the candidates sum to 1.
    """

    def __init__(
        self,
        index: faiss.Index,
        vector_labels: np.ndarray,
        categories: list[tuple[str, str]],
        *,
        k: int = 10,
        vote_temperature: float = 0.05,
        abstain_threshold: float = 0.0,
    ) -> None:
        if index.ntotal != len(vector_labels):
            raise ValueError(
                f"index holds {index.ntotal} vectors but {len(vector_labels)} labels were given"
            )
        self.index = index
        self.vector_labels = np.asarray(vector_labels, dtype=np.int64)
        self.categories = categories
        self.k = k
        self.vote_temperature = vote_temperature
        self.abstain_threshold = abstain_threshold

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        category_ids: Sequence[str],
        category_paths: dict[str, str],
        **settings,
    ) -> "KnnClassifier":
        """Build an exact inner-product index over the training embeddings."""
        # A copy, because normalising in place would change the caller's array.
        embeddings = np.array(embeddings, dtype=np.float32, order="C", copy=True)
        if embeddings.ndim != 2 or len(embeddings) != len(category_ids):
            raise ValueError(
                f"expected one embedding row per label, got shape {embeddings.shape} "
                f"for {len(category_ids)} labels"
            )
        # Inner product equals cosine similarity only because the rows are L2-normalised.
        faiss.normalize_L2(embeddings)
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings)

        ordered_ids = sorted(set(category_ids))
        position_of = {category_id: i for i, category_id in enumerate(ordered_ids)}
        categories = [(c, category_paths.get(c, c)) for c in ordered_ids]
        vector_labels = np.array([position_of[c] for c in category_ids], dtype=np.int64)
        return cls(index, vector_labels, categories, **settings)

    @property
    def dimension(self) -> int:
        """Length of the embeddings the index expects."""
        return self.index.d

    def predict(self, embeddings: np.ndarray, top_k: int = 1) -> list[Prediction]:
        """Return one prediction per embedding row, with up to `top_k` candidates each."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dimension:
            raise ValueError(
                f"expected embeddings of shape (n, {self.dimension}), got {embeddings.shape}"
            )
        if len(embeddings) == 0:
            return []
        neighbour_count = min(self.k, self.index.ntotal)
        if neighbour_count == 0:
            return [Prediction(None, None, 0.0) for _ in range(len(embeddings))]

        embeddings = embeddings.copy()
        faiss.normalize_L2(embeddings)
        similarities, positions = self.index.search(embeddings, neighbour_count)
        return [
            self._vote(row_similarities, row_positions, top_k)
            for row_similarities, row_positions in zip(similarities, positions)
        ]

    def _vote(
        self, similarities: np.ndarray, positions: np.ndarray, top_k: int
    ) -> Prediction:
        # FAISS pads with position -1 when it finds fewer neighbours than asked; drop
        # those before the label lookup, since -1 would silently pick the last label.
        found = positions >= 0
        similarities, positions = similarities[found], positions[found]
        if len(positions) == 0:
            return Prediction(None, None, 0.0)

        weights = np.exp((similarities - similarities.max()) / self.vote_temperature)
        votes: dict[int, float] = {}
        for label, weight in zip(self.vector_labels[positions], weights):
            votes[int(label)] = votes.get(int(label), 0.0) + float(weight)
        total = sum(votes.values())
        ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))[
            : max(1, top_k)
        ]
        candidates = [
            Candidate(
                self.categories[label][0], self.categories[label][1], vote / total
            )
            for label, vote in ranked
        ]

        best = candidates[0]
        if best.score < self.abstain_threshold or not math.isfinite(best.score):
            return Prediction(None, None, best.score, candidates)
        return Prediction(best.category_id, best.category_path, best.score, candidates)

    def save(self, folder: Path) -> None:
        """Write the index, the label of each vector and the settings to a folder."""
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.save(folder / LABELS_FILE, self.vector_labels)
        document = {
            "categories": self.categories,
            "k": self.k,
            "vote_temperature": self.vote_temperature,
            "abstain_threshold": self.abstain_threshold,
        }
        (folder / CATEGORIES_FILE).write_text(json.dumps(document, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> "KnnClassifier":
        """Read a classifier written by `save`."""
        document = json.loads((folder / CATEGORIES_FILE).read_text())
        return cls(
            faiss.read_index(str(folder / INDEX_FILE)),
            np.load(folder / LABELS_FILE),
            [tuple(item) for item in document["categories"]],
            k=document["k"],
            vote_temperature=document["vote_temperature"],
            abstain_threshold=document["abstain_threshold"],
        )
