"""Embeddings of served names, with an LRU cache of the most recently served ones."""

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from mkt.embeddings import encode_titles, load_encoder
from mkt.serving.metrics import ServingMetrics


class NameEncoder:
    """Encode cleaned names with their embedding model, reusing recently computed vectors.

    The cache is keyed by embedding model and name, so stores that share a model share
    their cached names too.
    """

    def __init__(
        self, *, cache_size: int, batch_size: int, metrics: ServingMetrics
    ) -> None:
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.metrics = metrics
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def encode(self, embedding_model: str, names: Sequence[str]) -> np.ndarray:
        """Return one L2-normalised embedding row per name."""
        found = self._look_up(embedding_model, names)
        missing = list(dict.fromkeys(name for name in names if name not in found))
        if missing:
            encoder = load_encoder(embedding_model)
            vectors = encode_titles(encoder, missing, batch_size=self.batch_size)
            # Copies, so a cached row does not keep its whole batch array alive.
            fresh = {name: vector.copy() for name, vector in zip(missing, vectors)}
            self._store(embedding_model, fresh)
            found.update(fresh)

        self.metrics.embedding_cache.labels("hit").inc(len(names) - len(missing))
        self.metrics.embedding_cache.labels("miss").inc(len(missing))
        return np.stack([found[name] for name in names])

    def _look_up(
        self, embedding_model: str, names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        if self.cache_size == 0:
            return {}
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for name in names:
                vector = self._cache.get((embedding_model, name))
                if vector is not None:
                    self._cache.move_to_end((embedding_model, name))
                    found[name] = vector
        return found

    def _store(self, embedding_model: str, vectors: dict[str, np.ndarray]) -> None:
        if self.cache_size == 0:
            return
        with self._lock:
            for name, vector in vectors.items():
                self._cache[(embedding_model, name)] = vector
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
