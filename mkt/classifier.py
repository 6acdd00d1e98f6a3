"""The FAISS nearest-neighbour classifier: top-k categories with scores, or an abstain."""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from mkt.index import (
    IndexKind,
    build_index,
    check_memory_budget,
    plan_index,
    tune_nprobe,
)

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
        *,
        rows: np.ndarray | None = None,
        index: IndexKind = "auto",
        memory_budget_gb: float = 16.0,
        recall_target: float = 0.95,
        **settings,
    ) -> "KnnClassifier":
        """Build an inner-product index over the training embeddings, chosen by their count.

        Args:
            embeddings: Training embeddings, in memory or memory-mapped, never modified.
            category_ids: The category of each indexed row.
            category_paths: The path of each category id.
            rows: Positions of the rows of `embeddings` to index; all rows when None.
            index: Index kind; `auto` chooses it from the number of rows.
            memory_budget_gb: Largest estimated index memory to build.
            recall_target: Recall@k against exact search that sets IVF's nprobe.
            settings: The voting settings passed to the constructor.

        Raises:
            IndexTooLarge: if the index would not fit the memory budget.
        """
        if not isinstance(embeddings, np.ndarray):
            embeddings = np.asarray(embeddings, dtype=np.float32)
        row_count = len(embeddings) if rows is None else len(rows)
        if embeddings.ndim != 2 or row_count != len(category_ids):
            raise ValueError(
                f"expected one embedding row per label, got {row_count} rows of shape "
                f"{embeddings.shape} for {len(category_ids)} labels"
            )
        plan = plan_index(
            row_count,
            embeddings.shape[1],
            kind=index,
            memory_budget_gb=memory_budget_gb,
        )
        check_memory_budget(plan, memory_budget_gb)
        faiss_index = build_index(embeddings, plan, rows=rows)
        if plan.kind != "flat":
            tune_nprobe(
                faiss_index,
                embeddings,
                rows=rows,
                k=settings.get("k", 10),
                recall_target=recall_target,
            )

        ordered_ids = sorted(set(category_ids))
        position_of = {category_id: i for i, category_id in enumerate(ordered_ids)}
        categories = [(c, category_paths.get(c, c)) for c in ordered_ids]
        vector_labels = np.array([position_of[c] for c in category_ids], dtype=np.int64)
        return cls(faiss_index, vector_labels, categories, **settings)

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
