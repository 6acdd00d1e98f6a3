"""The versioned label map: which removed categories redirect where, and which are retired.

A classifier learns the categories of the tree it was trained on. When the tree changes
later, predictions of a removed category go to its redirect target, and predictions of a
retired one (removed without a redirect) are dropped, so no caller sees a retired id.
"""

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import pandas as pd
from sqlalchemy import Engine, func
from sqlmodel import col, select

from mkt.classifier import Candidate, Prediction
from mkt.database import Category, CategoryChange, open_session


@dataclass(frozen=True)
class LabelMap:
    """Redirects and retired ids of a store's tree as of change-log entry `version`."""

    version: int = 0
    redirects: dict[str, tuple[str, str]] = field(default_factory=dict)
    retired: frozenset[str] = frozenset()


def load_label_map(engine: Engine, store_id: str) -> LabelMap:
    """Return the store's current label map; its version is the id of its latest change."""
    with open_session(engine) as session:
        categories = {
            row.external_id: row
            for row in session.exec(
                select(Category).where(Category.store_id == store_id)
            )
        }
        version = session.exec(
            select(func.max(CategoryChange.id)).where(
                CategoryChange.store_id == store_id
            )
        ).one()
        redirected = session.exec(
            select(CategoryChange)
            .where(
                CategoryChange.store_id == store_id,
                CategoryChange.change == "redirected",
            )
            .order_by(col(CategoryChange.id))
        ).all()

    targets = {row.external_id: row.new_value for row in redirected}
    redirects, retired = {}, set()
    for external_id, row in categories.items():
        if row.removed_at is None:
            continue
        target = follow_redirects(external_id, targets, categories)
        if target is None:
            retired.add(external_id)
        else:
            redirects[external_id] = (target, categories[target].path)
    return LabelMap(version or 0, redirects, frozenset(retired))


def follow_redirects(
    external_id: str, targets: dict[str, str], categories: dict[str, Category]
) -> str | None:
    """Return the active category a removed one redirects to, through chains, or None."""
    seen = {external_id}
    current = targets.get(external_id)
    while current is not None and current not in seen:
        row = categories.get(current)
        if row is not None and row.removed_at is None:
            return current
        seen.add(current)
        current = targets.get(current)
    return None


def remap_prediction(prediction: Prediction, label_map: LabelMap) -> Prediction:
    """Apply redirects to a prediction's candidates and drop retired ones.

    Candidates that land on the same category add up their scores. A prediction whose
    every candidate is retired becomes an abstention.
    """
    scores: dict[str, float] = {}
    paths: dict[str, str] = {}
    for candidate in prediction.candidates:
        if candidate.category_id in label_map.retired:
            continue
        category_id, path = label_map.redirects.get(
            candidate.category_id, (candidate.category_id, candidate.category_path)
        )
        scores[category_id] = scores.get(category_id, 0.0) + candidate.score
        paths[category_id] = path
    candidates = [
        Candidate(category_id, paths[category_id], score)
        for category_id, score in sorted(scores.items(), key=lambda item: -item[1])
    ]
    if prediction.is_abstained:
        # The back-off ancestor in `category_path` is a path, not a category id, so
        # redirects do not apply to it.
        return replace(prediction, candidates=candidates)
    if not candidates:
        return replace(
            prediction, category_id=None, category_path=None, candidates=candidates
        )
    best = candidates[0]
    return Prediction(best.category_id, best.category_path, best.score, candidates)


def remap_predictions_frame(frame: pd.DataFrame, label_map: LabelMap) -> pd.DataFrame:
    """Apply a label map to the pyfunc output table, row by row."""
    rows = []
    for row in frame.to_dict(orient="records"):
        candidates = [Candidate(**item) for item in json.loads(row["candidates"])]
        prediction = Prediction(
            None if row["is_abstained"] else row["category_id"],
            None if row["is_abstained"] else row["category_path"],
            row["score"],
            candidates,
        )
        remapped = remap_prediction(prediction, label_map)
        rows.append(
            {
                **row,
                "category_id": remapped.category_id,
                "category_path": remapped.category_path,
                "score": remapped.score,
                "is_abstained": remapped.is_abstained,
                "candidates": json.dumps(
                    [asdict(candidate) for candidate in remapped.candidates]
                ),
            }
        )
    return pd.DataFrame(rows, columns=frame.columns)


class LabelMapCache:
    """Hold each store's label map for `max_age_s`, so serving reads the tree rarely."""

    def __init__(
        self,
        engine: Engine,
        max_age_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.max_age_s = max_age_s
        self.clock = clock
        self._entries: dict[str, tuple[float, LabelMap]] = {}
        self._lock = threading.Lock()

    def get(self, store_id: str) -> LabelMap:
        """Return the store's label map, read again once the held one is too old."""
        now = self.clock()
        with self._lock:
            entry = self._entries.get(store_id)
        if entry is not None and now - entry[0] < self.max_age_s:
            return entry[1]
        label_map = load_label_map(self.engine, store_id)
        with self._lock:
            self._entries[store_id] = (now, label_map)
        return label_map
