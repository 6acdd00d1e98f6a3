"""Fine-tuning a store's sentence-transformers encoder on its own training names.

Two names of the same category form a pair, and the other pairs of a batch are its
negatives (a contrastive, in-batch softmax objective). Each batch draws its pairs from
distinct categories, so no negative shares the anchor's category. The fine-tuned model is
saved as a sentence-transformers folder and logged with the classifier. Wherever a
classifier is loaded, its encoder is installed under the mkt home by content hash. So
serving, evaluation and the pyfunc model encode with the weights the classifier was
trained on.
"""

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mkt.encoders import USEM3_NAME, EncoderSpec, parse_encoder_spec
from mkt.errors import ConfigError

logger = logging.getLogger(__name__)

ENCODER_FOLDER = "encoder"
# Cosine similarities are multiplied by this before the softmax over the batch.
SIMILARITY_SCALE = 20.0


@dataclass(frozen=True)
class FineTuneResult:
    """Summary of one fine-tuning run, for logs and MLflow metrics."""

    steps: int
    pairs_per_step: int
    seconds_per_step: float
    device: str


def draw_pairs(
    titles_by_category: list[list[str]], pair_count: int, generator: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Return anchors and positives: two different names from each of distinct categories."""
    chosen = generator.choice(len(titles_by_category), size=pair_count, replace=False)
    anchors, positives = [], []
    for category in chosen:
        first, second = generator.choice(
            len(titles_by_category[category]), size=2, replace=False
        )
        anchors.append(titles_by_category[category][first])
        positives.append(titles_by_category[category][second])
    return anchors, positives


def group_titles(titles: Sequence[str], category_ids: Sequence[str]) -> list[list[str]]:
    """Return the distinct titles of each category that has at least two."""
    grouped: dict[str, set[str]] = {}
    for title, category_id in zip(titles, category_ids):
        grouped.setdefault(category_id, set()).add(title)
    return [sorted(group) for _, group in sorted(grouped.items()) if len(group) >= 2]


def base_model_spec(embedding_model: str) -> EncoderSpec:
    """Return the parsed spec of a store's encoder, checking that it can be fine-tuned.

    Raises:
        ConfigError: if the encoder is not a sentence-transformers model.
    """
    spec = parse_encoder_spec(embedding_model)
    if spec.backend == USEM3_NAME:
        raise ConfigError(
            f"embedding_model {embedding_model!r} cannot be fine-tuned: only "
            "sentence-transformers models can. Set classifier.fine_tune.steps to 0 or "
            "use a sentence-transformers model."
        )
    return spec


def fine_tune_encoder(
    embedding_model: str,
    titles: Sequence[str],
    category_ids: Sequence[str],
    output: Path,
    *,
    steps: int,
    pairs_per_step: int,
    learning_rate: float,
    seed: int,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> FineTuneResult:
    """Train a copy of the store's encoder on its names and save it to `output`.

    Trains on the GPU when PyTorch finds one, else on the CPU. `on_progress` gets the
    finished step count, the total and the last loss.

    Raises:
        ConfigError: if the encoder cannot be fine-tuned or the names have fewer than 2
            categories with 2 distinct names each.
    """
    import torch

    from mkt.encoders.torch_backend import load_sentence_transformer

    spec = base_model_spec(embedding_model)
    titles_by_category = group_titles(titles, category_ids)
    if len(titles_by_category) < 2:
        raise ConfigError(
            f"Fine-tuning needs at least 2 categories with 2 distinct training names "
            f"each, got {len(titles_by_category)}. Set classifier.fine_tune.steps to 0 "
            f"or crawl more names."
        )
    pair_count = min(pairs_per_step, len(titles_by_category))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    model = load_sentence_transformer(spec.model_name, device=device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    loss_function = torch.nn.CrossEntropyLoss()

    started = time.perf_counter()
    for step in range(steps):
        anchors, positives = draw_pairs(titles_by_category, pair_count, generator)
        features = model.preprocess(anchors + positives)
        # The tokenizer output also has non-tensor entries, which stay as they are.
        features = {
            name: value.to(device) if isinstance(value, torch.Tensor) else value
            for name, value in features.items()
        }
        embeddings = model(features)["sentence_embedding"]
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
        scores = embeddings[:pair_count] @ embeddings[pair_count:].T
        targets = torch.arange(pair_count, device=device)
        loss = loss_function(SIMILARITY_SCALE * scores, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_progress is not None:
            on_progress(step + 1, steps, float(loss.item()))
    seconds_per_step = (time.perf_counter() - started) / max(steps, 1)

    model.eval()
    model.save(str(output))
    return FineTuneResult(steps, pair_count, seconds_per_step, device)


def folder_digest(folder: Path) -> str:
    """Return a SHA-256 hex digest of every file's relative path and bytes in a folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def install_encoder(source: Path, install_dir: Path, digest: str) -> Path:
    """Copy a fine-tuned encoder folder to `install_dir/<digest>` once and return it.

    The copy is made in a temporary folder and renamed into place, so a crash never
    leaves a partial encoder under the final name.
    """
    target = install_dir / digest[:32]
    if target.is_dir():
        return target
    install_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=install_dir))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Fine-tuned encoder installed in %s", target)
    return target


def fine_tuned_model(backend_model: str, installed: Path) -> str:
    """Return the `embedding_model` value of an installed encoder, on the store's backend."""
    spec = parse_encoder_spec(backend_model)
    return EncoderSpec(spec.backend, str(installed)).identity


def resolve_embedding_model(classifier_folder: Path, metadata: dict) -> str:
    """Return the `embedding_model` a logged classifier encodes with.

    A classifier trained on a fine-tuned encoder carries it in its folder. It is
    installed under the mkt home first, so the encoder outlives downloaded artifacts.
    """
    fine_tuned = metadata.get("fine_tuned_encoder")
    if not fine_tuned:
        return metadata["embedding_model"]
    from mkt.settings import Settings

    source = classifier_folder / ENCODER_FOLDER
    if not source.is_dir():
        raise ConfigError(
            f"Classifier in {classifier_folder} was trained on a fine-tuned encoder, "
            f"but its {ENCODER_FOLDER}/ folder is missing. Train it again."
        )
    installed = install_encoder(
        source, Settings().fine_tuned_encoder_dir, fine_tuned["digest"]
    )
    return fine_tuned_model(metadata["embedding_model"], installed)
