"""The FAISS nearest-neighbour classifier: top-k categories with scores, or an abstain."""

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from mkt.calibration import ScoreCalibration
from mkt.features import LexicalBlock, combine_vectors
from mkt.index import (
    IndexKind,
    build_index,
    check_memory_budget,
    format_gb,
    open_rerank_file,
    plan_index,
    search_index,
    tune_nprobe,
)
from mkt.linear_head import LinearHead

INDEX_FILE = "index.faiss"
LABELS_FILE = "vector_labels.npy"
CATEGORIES_FILE = "categories.json"
RERANK_FILE = "rerank_vectors.npy"
PATH_SEPARATOR = " > "

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One category proposed for a name, with its calibrated share of the vote."""

    category_id: str
    category_path: str
    score: float


@dataclass(frozen=True)
class Prediction:
    """Prediction of the classifier for one name. `category_id` is None when it abstains.

    An abstaining prediction's `category_path` names the deepest ancestor of the top
    category that reached the back-off share, or is None.
    """

    category_id: str | None
    category_path: str | None
    score: float
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def is_abstained(self) -> bool:
        """Whether the top score was under the abstain threshold (or no neighbour was found)."""
        return self.category_id is None


class KnnClassifier:
    """Classify names by a similarity-weighted vote of their nearest training names.

    The index searches the L2-normalised embedding, joined with the lexical block when
    the classifier has one (see `combine_vectors`). Each of the k nearest training names
    votes for its category with weight exp((similarity - best similarity) /
    vote_temperature) / (training names of its category) ** class_prior_exponent. A
    category's raw score is its share of the votes. With a linear head and a
    linear_weight w above 0, the raw score is (1 - w) x vote share + w x the head's
    softmax probability. The calibration, when the classifier has one, maps the raw score
    of the top category to the score it reports. With `rerank_vectors` (the indexed
    vectors, one row per position), a search takes `rerank_factor` times k candidates
    from the index and keeps the k most similar by those vectors.
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
        class_prior_exponent: float = 0.0,
        lexical_weight: float = 0.0,
        lexical_block: LexicalBlock | None = None,
        calibration: ScoreCalibration | None = None,
        backoff_share: float | None = None,
        linear_head: LinearHead | None = None,
        linear_weight: float = 0.0,
        linear_scale: float = 10.0,
        rerank_vectors: np.ndarray | None = None,
        rerank_factor: int = 0,
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
        self.class_prior_exponent = class_prior_exponent
        self.lexical_weight = lexical_weight
        self.lexical_block = lexical_block
        self.calibration = calibration
        self.backoff_share = backoff_share
        self.linear_head = linear_head
        self.linear_weight = linear_weight
        self.linear_scale = linear_scale
        self.rerank_vectors = rerank_vectors
        self.rerank_factor = rerank_factor if rerank_vectors is not None else 0
        # The folder of a re-rank file written by `build`; removed with the classifier.
        self._rerank_folder: tempfile.TemporaryDirectory | None = None
        label_counts = np.bincount(self.vector_labels, minlength=len(categories))
        self.vote_scales = np.maximum(label_counts, 1.0) ** -class_prior_exponent

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        category_ids: Sequence[str],
        category_paths: dict[str, str],
        *,
        rows: np.ndarray | None = None,
        titles: Sequence[str] | None = None,
        index: IndexKind = "auto",
        memory_budget_gb: float = 16.0,
        recall_target: float = 0.95,
        rerank_factor: int = 0,
        work_dir: Path | None = None,
        **settings,
    ) -> "KnnClassifier":
        """Build an inner-product index over the training embeddings, chosen by their count.

        Args:
            embeddings: Training embeddings, in memory or memory-mapped, never modified.
            category_ids: The category of each indexed row.
            category_paths: The path of each category id.
            rows: Positions of the rows of `embeddings` to index; all rows when None.
            titles: The name of each indexed row; required with a `lexical_block`, whose
                block of each title then joins its embedding.
            index: Index kind; `auto` chooses it from the number of rows.
            memory_budget_gb: Largest estimated index memory to build.
            recall_target: Recall@k against exact search that sets IVF's nprobe.
            rerank_factor: With an IVF+PQ index and a factor above 1, keep the indexed
                vectors in a float16 file and re-rank this many times k candidates.
            work_dir: Folder for the re-rank file until `save` copies it; default: the
                system's temporary folder.
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
        if settings.get("lexical_block") is not None:
            # NOTE: the lexical block joins each row in memory, so a store that uses it
            # holds its training vectors in RAM while the index is built.
            selected = embeddings if rows is None else embeddings[rows]
            # Inner product equals cosine similarity only because both parts are unit rows.
            embeddings = join_lexical_block(
                np.asarray(selected, dtype=np.float32),
                titles,
                settings["lexical_block"],
                settings.get("lexical_weight", 0.0),
            )
            rows = None
        ordered_ids = sorted(set(category_ids))
        position_of = {category_id: i for i, category_id in enumerate(ordered_ids)}
        categories = [(c, category_paths.get(c, c)) for c in ordered_ids]
        vector_labels = np.array([position_of[c] for c in category_ids], dtype=np.int64)
        plan = plan_index(
            row_count,
            embeddings.shape[1],
            kind=index,
            memory_budget_gb=memory_budget_gb,
            category_count=len(categories),
        )
        check_memory_budget(plan, memory_budget_gb)
        rerank_folder = rerank_vectors = None
        if plan.kind == "ivfpq" and rerank_factor > 1:
            rerank_folder = tempfile.TemporaryDirectory(
                prefix="mkt-rerank-", dir=work_dir
            )
            rerank_vectors = open_rerank_file(
                Path(rerank_folder.name) / RERANK_FILE, row_count, embeddings.shape[1]
            )
            logger.info(
                "Index: keeping %s of float16 vectors on disk to re-rank %d x k "
                "candidates per search",
                format_gb(rerank_vectors.nbytes),
                rerank_factor,
            )
        elif plan.kind == "ivfpq":
            logger.info(
                "Index: re-ranking is off (classifier.rerank_factor %d), so searches "
                "rank by the compressed codes alone",
                rerank_factor,
            )
        faiss_index = build_index(
            embeddings,
            plan,
            rows=rows,
            rerank_vectors=rerank_vectors,
            labels=vector_labels,
        )
        if plan.kind != "flat":
            tune_nprobe(
                faiss_index,
                embeddings,
                rows=rows,
                k=settings.get("k", 10),
                recall_target=recall_target,
                rerank_vectors=rerank_vectors,
                rerank_factor=rerank_factor,
            )

        classifier = cls(
            faiss_index,
            vector_labels,
            categories,
            rerank_vectors=rerank_vectors,
            rerank_factor=rerank_factor,
            **settings,
        )
        classifier._rerank_folder = rerank_folder
        return classifier

    @property
    def dimension(self) -> int:
        """Length of the embeddings the classifier expects, without the lexical block."""
        if self.lexical_block is None:
            return self.index.d
        return self.index.d - self.lexical_block.dimension

    @property
    def shares_features(self) -> bool:
        """Whether the linear head uses the lexical block's TF-IDF vectorisers."""
        return (
            self.linear_head is not None
            and self.lexical_block is not None
            and self.linear_head.features is self.lexical_block.features
        )

    def search_neighbours(
        self,
        embeddings: np.ndarray,
        titles: Sequence[str] | None,
        neighbour_count: int,
        counts=None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the similarities and vector positions of each name's nearest neighbours.

        FAISS pads with position -1 when it finds fewer neighbours than asked. `counts`
        are the titles' TF-IDF features when the caller computed them already.
        """
        vectors = join_lexical_block(
            self._check_shape(embeddings),
            titles,
            self.lexical_block,
            self.lexical_weight,
            counts,
        )
        return search_index(
            self.index,
            vectors,
            neighbour_count,
            rerank_vectors=self.rerank_vectors,
            rerank_factor=self.rerank_factor,
        )

    def _check_shape(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dimension:
            raise ValueError(
                f"expected embeddings of shape (n, {self.dimension}), got {embeddings.shape}"
            )
        return embeddings

    def predict(
        self,
        embeddings: np.ndarray,
        top_k: int = 1,
        *,
        titles: Sequence[str] | None = None,
    ) -> list[Prediction]:
        """Return one prediction per embedding row, with up to `top_k` candidates each.

        Raises:
            ValueError: if the classifier has a lexical block and `titles` is missing,
                or the titles do not match the embedding rows one to one.
        """
        embeddings = self._check_shape(embeddings)
        if len(embeddings) == 0:
            return []
        neighbour_count = min(self.k, self.index.ntotal)
        if neighbour_count == 0:
            return [Prediction(None, None, 0.0) for _ in range(len(embeddings))]

        counts = None
        if self.shares_features and titles is not None:
            # One TF-IDF pass serves both the lexical block and the head.
            counts = self.lexical_block.features.transform(list(titles))
        similarities, positions = self.search_neighbours(
            embeddings, titles, neighbour_count, counts
        )
        linear = self.linear_probabilities(embeddings, titles, counts)
        return [
            self._vote(
                row_similarities,
                row_positions,
                top_k,
                None if linear is None else linear[row],
            )
            for row, (row_similarities, row_positions) in enumerate(
                zip(similarities, positions)
            )
        ]

    def linear_probabilities(
        self, embeddings: np.ndarray, titles: Sequence[str] | None, counts=None
    ) -> np.ndarray | None:
        """Return the linear head's probabilities per name, or None when it is not used.

        Raises:
            ValueError: if the head is used and the titles are missing or do not match.
        """
        if self.linear_head is None or self.linear_weight <= 0:
            return None
        if titles is None or len(titles) != len(embeddings):
            title_count = "no" if titles is None else len(titles)
            raise ValueError(
                f"this classifier has a linear head, so it needs one title per "
                f"embedding row: got {title_count} titles for {len(embeddings)} rows"
            )
        return self.linear_head.probabilities(
            titles, embeddings, self.linear_scale, counts
        )

    def _vote(
        self,
        similarities: np.ndarray,
        positions: np.ndarray,
        top_k: int,
        linear: np.ndarray | None = None,
    ) -> Prediction:
        # Drop FAISS's -1 padding before the label lookup, since -1 would silently pick
        # the last label.
        found = positions >= 0
        similarities, positions = similarities[found], positions[found]
        if len(positions) == 0:
            return Prediction(None, None, 0.0)

        labels = self.vector_labels[positions]
        weights = np.exp((similarities - similarities.max()) / self.vote_temperature)
        weights = weights * self.vote_scales[labels]
        votes: dict[int, float] = {}
        for label, weight in zip(labels, weights):
            votes[int(label)] = votes.get(int(label), 0.0) + float(weight)
        total = sum(votes.values())
        if linear is None:
            ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))[
                : max(1, top_k)
            ]
            shares = np.array([vote / total for _, vote in ranked])
        else:
            ranked, shares = self._blend(votes, total, linear, top_k)
        if self.calibration is not None:
            shares = share_out_calibrated(shares, self.calibration)
        candidates = [
            Candidate(
                self.categories[label][0], self.categories[label][1], float(share)
            )
            for (label, _), share in zip(ranked, shares)
        ]

        best = candidates[0]
        if best.score < self.abstain_threshold or not math.isfinite(best.score):
            ancestor_path = self._back_off(votes, total, ranked[0][0])
            return Prediction(None, ancestor_path, best.score, candidates)
        return Prediction(best.category_id, best.category_path, best.score, candidates)

    def _blend(
        self, votes: dict[int, float], total: float, linear: np.ndarray, top_k: int
    ) -> tuple[list[tuple[int, float]], np.ndarray]:
        """Return the top labels of the blended score with their scores."""
        blended = self.linear_weight * linear.astype(np.float64)
        for label, vote in votes.items():
            blended[label] += (1.0 - self.linear_weight) * vote / total
        count = min(max(1, top_k), len(blended))
        top = np.argpartition(-blended, count - 1)[:count]
        top = top[np.lexsort((top, -blended[top]))]
        return [(int(label), float(blended[label])) for label in top], blended[top]

    def _back_off(
        self, votes: dict[int, float], total: float, best_label: int
    ) -> str | None:
        """Return the deepest ancestor path whose raw vote share reaches the back-off share.

        Only ancestors of the best category count; returns None when none reaches it.
        """
        if self.backoff_share is None:
            return None
        levels = self.categories[best_label][1].split(PATH_SEPARATOR)
        label_levels = {
            label: self.categories[label][1].split(PATH_SEPARATOR) for label in votes
        }
        for depth in range(len(levels) - 1, 0, -1):
            prefix = levels[:depth]
            share = sum(
                vote
                for label, vote in votes.items()
                if label_levels[label][:depth] == prefix
            )
            if share / total >= self.backoff_share:
                return PATH_SEPARATOR.join(prefix)
        return None

    def save(self, folder: Path) -> None:
        """Write the index, the label of each vector and the settings to a folder."""
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.save(folder / LABELS_FILE, self.vector_labels)
        if self.lexical_block is not None:
            self.lexical_block.save(folder)
        if self.linear_head is not None:
            self.linear_head.save(folder, shares_features=self.shares_features)
        if self.rerank_vectors is not None:
            save_rerank_vectors(self.rerank_vectors, folder / RERANK_FILE)
        document = {
            "categories": self.categories,
            "k": self.k,
            "vote_temperature": self.vote_temperature,
            "abstain_threshold": self.abstain_threshold,
            "class_prior_exponent": self.class_prior_exponent,
            "lexical_weight": self.lexical_weight,
            "backoff_share": self.backoff_share,
            "linear_weight": self.linear_weight,
            "linear_scale": self.linear_scale,
            "linear_head_shares_features": self.shares_features,
            "rerank_factor": self.rerank_factor,
            "calibration": None
            if self.calibration is None
            else self.calibration.to_dict(),
        }
        (folder / CATEGORIES_FILE).write_text(json.dumps(document, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> "KnnClassifier":
        """Read a classifier written by `save`.

        Folders written before the lexical block, calibration and linear head existed load
        without them.
        """
        document = json.loads((folder / CATEGORIES_FILE).read_text())
        calibration = document.get("calibration")
        lexical_block = LexicalBlock.load(folder)
        shared_features = None
        if document.get("linear_head_shares_features") and lexical_block is not None:
            shared_features = lexical_block.features
        rerank_vectors = None
        if (folder / RERANK_FILE).exists():
            rerank_vectors = np.load(folder / RERANK_FILE, mmap_mode="r")
        return cls(
            faiss.read_index(str(folder / INDEX_FILE)),
            np.load(folder / LABELS_FILE),
            [tuple(item) for item in document["categories"]],
            k=document["k"],
            vote_temperature=document["vote_temperature"],
            abstain_threshold=document["abstain_threshold"],
            class_prior_exponent=document.get("class_prior_exponent", 0.0),
            lexical_weight=document.get("lexical_weight", 0.0),
            backoff_share=document.get("backoff_share"),
            lexical_block=lexical_block,
            linear_head=LinearHead.load(folder, shared_features),
            linear_weight=document.get("linear_weight", 0.0),
            linear_scale=document.get("linear_scale", 10.0),
            rerank_vectors=rerank_vectors,
            rerank_factor=document.get("rerank_factor", 0),
            calibration=None
            if calibration is None
            else ScoreCalibration.from_dict(calibration),
        )


def share_out_calibrated(
    shares: np.ndarray, calibration: ScoreCalibration
) -> np.ndarray:
    """Return the calibrated top score, and runner-ups sharing what it leaves.

    The map is fitted on top scores only. A runner-up is right only when the top
    category is wrong, so the runner-ups split 1 minus the calibrated top score in
    proportion to their raw shares, which sum to at most 1 minus the top raw share.
    """
    top = float(calibration.apply(shares[:1])[0])
    runner_ups = np.zeros(len(shares) - 1)
    left_raw = 1.0 - float(shares[0])
    if left_raw > 1e-12:
        runner_ups = shares[1:] * ((1.0 - top) / left_raw)
    return np.concatenate([[top], runner_ups])


def save_rerank_vectors(rerank_vectors: np.ndarray, path: Path) -> None:
    """Write the re-rank vectors to a .npy file, copying a memory-mapped one as a file."""
    source = getattr(rerank_vectors, "filename", None)
    if source is None:
        np.save(path, rerank_vectors)
    elif Path(source).resolve() != path.resolve():
        # A file copy goes through the page cache, so the vectors never load into RSS.
        shutil.copyfile(source, path)


def join_lexical_block(
    embeddings: np.ndarray,
    titles: Sequence[str] | None,
    lexical_block: LexicalBlock | None,
    lexical_weight: float,
    counts=None,
) -> np.ndarray:
    """Return the vectors the index searches: unit embeddings, plus the lexical block.

    Raises:
        ValueError: if there is a lexical block but no title per embedding row.
    """
    if lexical_block is None:
        return combine_vectors(embeddings, None, 0.0)
    if titles is None or len(titles) != len(embeddings):
        title_count = "no" if titles is None else len(titles)
        raise ValueError(
            f"this classifier has a lexical block, so it needs one title per "
            f"embedding row: got {title_count} titles for {len(embeddings)} rows"
        )
    return combine_vectors(
        embeddings, lexical_block.transform(titles, counts), lexical_weight
    )
