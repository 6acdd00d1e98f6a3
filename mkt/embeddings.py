"""Sentence embeddings of product titles, with a cache so no name is embedded twice."""

import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mkt.encoders import Encoder, load_encoder
from mkt.titles import hash_text

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


def encode_titles(
    encoder: Encoder,
    titles: Sequence[str],
    *,
    batch_size: int = 64,
    on_progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Encode titles into L2-normalised float32 vectors, one row per title.

    Titles go to the encoder in chunks of many batches, because the PyTorch and ONNX
    backends sort each call's input by length and short batches then need less padding.
    """
    embeddings = np.empty((len(titles), encoder.dimension), dtype=np.float32)
    chunk_size = batch_size * 32
    for start in range(0, len(titles), chunk_size):
        chunk = list(titles[start : start + chunk_size])
        embeddings[start : start + len(chunk)] = encoder.encode(
            chunk, batch_size=batch_size
        )
        if on_progress is not None:
            on_progress(start + len(chunk), len(titles))
    return embeddings


def cache_file_name(model_name: str) -> str:
    """Return the cache file name of an embedding model, safe on every file system."""
    safe_chars = (ch if ch.isalnum() or ch in "-." else "_" for ch in model_name)
    readable = "".join(safe_chars)[-60:]
    return f"{readable}-{hash_text(model_name)[:12]}.sqlite"


class EmbeddingCache:
    """Embeddings of one model keyed by the SHA-256 of the text, in a SQLite file."""

    def __init__(self, cache_dir: Path, model_name: str, dimension: int) -> None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / cache_file_name(model_name)
        self.dimension = dimension
        self._connection = sqlite3.connect(self.path, timeout=30)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS embedding (text_hash TEXT PRIMARY KEY, vector BLOB)"
        )

    def get_many(self, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors of the hashes that are present."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(text_hashes), 500):
            chunk = list(text_hashes[start : start + 500])
            placeholders = ",".join("?" * len(chunk))
            rows = self._connection.execute(
                f"SELECT text_hash, vector FROM embedding WHERE text_hash IN ({placeholders})",
                chunk,
            )
            for text_hash, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape[0] == self.dimension:
                    found[text_hash] = vector
        return found

    def put_many(self, text_hashes: Sequence[str], embeddings: np.ndarray) -> None:
        """Store vectors under their hashes in one transaction."""
        with self._connection:
            self._connection.executemany(
                "INSERT OR REPLACE INTO embedding (text_hash, vector) VALUES (?, ?)",
                [
                    (h, v.astype(np.float32).tobytes())
                    for h, v in zip(text_hashes, embeddings)
                ],
            )

    def close(self) -> None:
        """Close the SQLite connection."""
        self._connection.close()


def embed_with_cache(
    titles: Sequence[str],
    model_name: str,
    cache_dir: Path,
    *,
    batch_size: int = 64,
    on_progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, int]:
    """Return embeddings of the titles and how many were newly computed.

    Titles found in the cache are not encoded again; new ones are encoded and cached in
    batches, so an interrupted run keeps what it finished.
    """
    encoder = load_encoder(model_name)
    dimension = encoder.dimension
    hashes = [hash_text(title) for title in titles]
    cache = EmbeddingCache(cache_dir, encoder.identity, dimension)
    try:
        cached = cache.get_many(hashes)
        missing_positions = [i for i, h in enumerate(hashes) if h not in cached]
        missing_titles = list(dict.fromkeys(titles[i] for i in missing_positions))
        logger.info(
            "Embedding model %r: %d titles cached, %d to encode",
            model_name,
            len(titles) - len(missing_positions),
            len(missing_titles),
        )
        done_count = 0
        for start in range(0, len(missing_titles), batch_size * 32):
            chunk = missing_titles[start : start + batch_size * 32]
            vectors = encode_titles(encoder, chunk, batch_size=batch_size)
            chunk_hashes = [hash_text(title) for title in chunk]
            cache.put_many(chunk_hashes, vectors)
            cached.update(zip(chunk_hashes, vectors))
            done_count += len(chunk)
            if on_progress is not None:
                on_progress(done_count, len(missing_titles))
    finally:
        cache.close()

    embeddings = np.empty((len(titles), dimension), dtype=np.float32)
    for position, text_hash in enumerate(hashes):
        embeddings[position] = cached[text_hash]
    return embeddings, len(missing_titles)
