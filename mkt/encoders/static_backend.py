"""The static backend: a sentence-transformers model distilled into one vector per token.

Distillation runs the model once on every token of its tokenizer's vocabulary, each
token alone between the usual special tokens, and keeps the model's sentence embedding
of that input as the token's row. Encoding a name then needs no transformer: the
tokenizer splits it, and the name's vector is the weighted mean of its tokens' rows.
That is much faster than the model itself, at a cost in accuracy, because the rows know
nothing of the tokens around them.

Each distilled table is a folder under the export directory that contains `table.npy`,
`weights.npy`, the tokenizer files and `encoder.json`. It is built in a temporary folder
and renamed into place, so a crash never leaves a partial table behind. A folder whose
files do not match the checksums in `encoder.json` is rebuilt instead of reused.
"""

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

from mkt.encoders import EncoderSpec
from mkt.encoders.onnx_backend import ensure_folder, export_folder_name, file_sha256
from mkt.encoders.torch_backend import count_over_length, load_sentence_transformer
from mkt.errors import ConfigError

logger = logging.getLogger(__name__)

TABLE_FILE = "table.npy"
WEIGHTS_FILE = "weights.npy"
METADATA_FILE = "encoder.json"
# Part of the folder name: raise it when distillation changes, so old tables are
# rebuilt instead of reused.
# TODO: the encoder identity leaves the version out, so embedding caches keep vectors
# of the old table after a raise; delete MKT_HOME/cache/embeddings/static_* then.
DISTILLATION_VERSION = 1
DISTILLATION_BATCH_SIZE = 512
# Progress is logged after each this many tokens, about every 10% for a BERT vocabulary.
PROGRESS_TOKEN_COUNT = 4096


def table_folder(
    spec: EncoderSpec, export_dir: Path, vocabulary_limit: int | None
) -> Path:
    """Return the folder of a spec's distilled table for this distillation version."""
    key = f"{spec.identity}@v{DISTILLATION_VERSION}"
    if vocabulary_limit is not None:
        key += f"@first{vocabulary_limit}"
    return export_dir / export_folder_name(key)


def read_table(folder: Path) -> dict | None:
    """Return a table's metadata, or None when the folder is missing, partial or corrupt."""
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
        is_intact = all(
            file_sha256(folder / name) == metadata["sha256"][name]
            for name in (TABLE_FILE, WEIGHTS_FILE)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metadata if is_intact else None


def ensure_table(
    spec: EncoderSpec, export_dir: Path, *, vocabulary_limit: int | None = None
) -> Path:
    """Return the folder of the spec's distilled table, distilling it first if needed.

    Args:
        spec: A `static` encoder spec.
        export_dir: Folder that contains one folder per exported or distilled encoder.
        vocabulary_limit: Distil only the first this many token ids, for quick tests;
            tokens past the limit get zero rows. Default: the whole vocabulary.

    Raises:
        ConfigError: if the model cannot be loaded or its tokenizer cannot be framed.
    """
    folder = table_folder(spec, export_dir, vocabulary_limit)
    return ensure_folder(
        folder,
        read=read_table,
        write=lambda staging: write_table(
            spec, staging, vocabulary_limit=vocabulary_limit
        ),
        identity=spec.identity,
    )


def write_table(
    spec: EncoderSpec, folder: Path, *, vocabulary_limit: int | None
) -> None:
    """Distil the spec's model into a token table and write it with its tokenizer."""
    started = time.perf_counter()
    logger.info(
        "Encoder %r: distilling one vector per vocabulary token. This runs once, "
        "and later runs reuse the table",
        spec.identity,
    )
    model = load_sentence_transformer(spec.model_name, device="cpu").eval()
    tokenizer = model.tokenizer
    vocabulary_size = len(tokenizer)
    token_count = min(vocabulary_limit or vocabulary_size, vocabulary_size)
    table = distil_table(model, token_count, identity=spec.identity)

    np.save(folder / TABLE_FILE, table)
    np.save(folder / WEIGHTS_FILE, token_weights(vocabulary_size))
    tokenizer.save_pretrained(str(folder))
    metadata = {
        "identity": spec.identity,
        "distillation_version": DISTILLATION_VERSION,
        "dimension": int(table.shape[1]),
        "max_seq_length": int(model.max_seq_length),
        "distilled_token_count": token_count,
        "sha256": {
            name: file_sha256(folder / name) for name in (TABLE_FILE, WEIGHTS_FILE)
        },
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    logger.info(
        "Encoder %r: %d tokens distilled in %.0f s",
        spec.identity,
        token_count,
        time.perf_counter() - started,
    )


def distil_table(model, token_count: int, *, identity: str) -> np.ndarray:
    """Return one row per vocabulary token, zero past the first `token_count` ids."""
    import torch

    vocabulary_size = len(model.tokenizer)
    dimension = model.get_embedding_dimension()
    table = np.zeros((vocabulary_size, dimension), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, token_count, DISTILLATION_BATCH_SIZE):
            stop = min(start + DISTILLATION_BATCH_SIZE, token_count)
            table[start:stop] = embed_single_tokens(model, list(range(start, stop)))
            if stop % PROGRESS_TOKEN_COUNT == 0 or stop == token_count:
                logger.info(
                    "Encoder %r: %d of %d tokens distilled",
                    identity,
                    stop,
                    token_count,
                )
    return table


def embed_single_tokens(model, token_ids: list[int]) -> np.ndarray:
    """Return the model's sentence embedding of each token alone, one row per token."""
    import torch

    prefix, suffix = special_token_frame(model.tokenizer)
    rows = [[*prefix, i, *suffix] for i in token_ids]
    input_ids = torch.tensor(rows, dtype=torch.long)
    features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "token_type_ids" in model.tokenizer.model_input_names:
        features["token_type_ids"] = torch.zeros_like(input_ids)
    return model(features)["sentence_embedding"].float().numpy()


def special_token_frame(tokenizer) -> tuple[list[int], list[int]]:
    """Return the special token ids the tokenizer puts before and after a text's tokens."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(bare) + 1):
        if framed[start : start + len(bare)] == bare:
            return framed[:start], framed[start + len(bare) :]
    raise ConfigError(
        f"The tokenizer of this embedding model changes a text's tokens when it adds "
        f"special tokens ({bare} became {framed}), so it cannot be distilled. Use the "
        "onnx-int8 or torch backend for this model."
    )


def token_weights(vocabulary_size: int) -> np.ndarray:
    """Return one weight per token id, growing with the logarithm of the id.

    The weight treats the id as a frequency rank (Zipf's law), so rare tokens count
    more in a name's mean than common ones, as in SIF weighting.
    """
    # NOTE: ids follow frequency only roughly, and only in vocabularies that list tokens
    # by frequency, as BERT's WordPiece mostly does. Other tokenizers get arbitrary weights.
    return np.log(np.arange(vocabulary_size) + 2.0).astype(np.float32)


class StaticEncoder:
    """An encoder that averages distilled token rows, weighted, with no transformer."""

    def __init__(
        self,
        spec: EncoderSpec,
        export_dir: Path,
        *,
        vocabulary_limit: int | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.identity = spec.identity
        folder = ensure_table(spec, export_dir, vocabulary_limit=vocabulary_limit)
        self.folder = folder
        metadata = json.loads((folder / METADATA_FILE).read_text())
        self.dimension = int(metadata["dimension"])
        self.max_seq_length = int(metadata["max_seq_length"])
        weights = np.load(folder / WEIGHTS_FILE)
        self.table = np.load(folder / TABLE_FILE) * weights[:, None]
        self.size_bytes = self.table.nbytes
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._tokenizer_lock = threading.Lock()
        logger.info("Encoder %r loaded from %s", self.identity, folder)

    def encode(self, names: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Return one L2-normalised float32 row per name.

        `batch_size` is accepted for the `Encoder` protocol; names are tokenized and
        averaged all at once, since no batch is padded.
        """
        # A fast tokenizer fails with "Already borrowed" when two threads change its
        # truncation at once, and the server encodes from threads.
        with self._tokenizer_lock:
            token_ids = self.tokenizer(
                list(names),
                add_special_tokens=False,
                # Cut where the model cuts, which counts its special tokens too.
                truncation=True,
                max_length=self.max_seq_length
                - self.tokenizer.num_special_tokens_to_add(),
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
        # A name without tokens, such as an empty one, gets the unknown token's row
        # instead of a zero vector, which no normalisation could make a unit row.
        unknown_id = self.tokenizer.unk_token_id or 0
        token_ids = [ids or [unknown_id] for ids in token_ids]
        lengths = np.fromiter((len(ids) for ids in token_ids), np.int64, len(token_ids))
        columns = np.fromiter(
            (i for ids in token_ids for i in ids), np.int64, int(lengths.sum())
        )
        row_starts = np.concatenate([[0], np.cumsum(lengths)])
        values = np.ones(len(columns), dtype=np.float32)
        counts = sparse.csr_matrix(
            (values, columns, row_starts), shape=(len(names), len(self.table))
        )
        vectors = np.asarray(counts @ self.table, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def count_over_length(self, names: Sequence[str]) -> int:
        """Return how many names are cut at `max_seq_length` tokens when encoded."""
        with self._tokenizer_lock:
            return count_over_length(self.tokenizer, names, self.max_seq_length)
