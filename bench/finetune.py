"""Measure whether fine-tuning all-MiniLM-L6-v2 on a store's own names pays on this CPU.

For each data set it trains a copy of the encoder for a fixed number of steps with
`mkt.fine_tuning.fine_tune_encoder`, as the train stage does with `fine_tune.steps`.
Then it encodes the train and test names again and compares, on frozen and fine-tuned
embeddings, kNN accuracy (k=10) and the accuracy of the train stage's default classifier
(tuned on validation, with its linear head), with the time each step took. The report goes to stdout as markdown and logs go to stderr. Run it from the
repository root:

    .venv/bin/python -m bench.finetune --output /tmp/finetune.md
    .venv/bin/python -m bench.finetune --datasets frisco --steps 20 --limit 2000
"""

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.accuracy import (
    BATCH_SIZE,
    EMBEDDING_MODEL,
    REPO_ROOT,
    load_or_encode_titles,
    load_warm_encoder,
    parse_dataset_names,
    parse_positive_int,
)
from bench.classifiers import run_knn, run_tuned_knn
from bench.report import Column, describe_machine, render_table
from bench.splits import SEED, find_missing_files, prepare_split
from mkt.embeddings import encode_titles, load_encoder
from mkt.fine_tuning import SIMILARITY_SCALE, fine_tune_encoder

logger = logging.getLogger(__name__)

LEARNING_RATE = 2e-5
PRECISION_TARGET = 0.9

COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("Train names", "train_count", ","),
    ("Steps", "steps", ","),
    ("Pairs per step", "pairs", ","),
    ("Names seen in training", "names_seen", ","),
    ("s per step", "step_s", ".2f"),
    ("Training names/s", "train_rate", ",.0f"),
    ("Encoding names/s", "encode_rate", ",.0f"),
    ("Re-encoding train and test s", "encode_s", ",.0f"),
    ("kNN accuracy, frozen", "frozen_accuracy", ".3f"),
    ("kNN accuracy, fine-tuned", "tuned_accuracy", ".3f"),
    ("Change (points)", "change", "+.1f"),
    ("Default classifier accuracy, frozen", "default_frozen", ".3f"),
    ("Default classifier accuracy, fine-tuned", "default_tuned", ".3f"),
    ("Default change (points)", "default_change", "+.1f"),
]


def knn_accuracy(train_embeddings, split, test_embeddings) -> float:
    """Return the test accuracy of a k=10 kNN classifier built on the training embeddings."""
    result = run_knn(
        np.asarray(train_embeddings, dtype=np.float32),
        split,
        np.asarray(test_embeddings, dtype=np.float32),
        k=10,
    )
    return float(np.mean(result.predicted_ids == split.test["category_id"].to_numpy()))


def run_tuned(train_embeddings, split, test_embeddings) -> float:
    """Return the test accuracy of the train stage's default classifier on embeddings."""
    result, _ = run_tuned_knn(
        np.asarray(train_embeddings, dtype=np.float32),
        split,
        np.asarray(test_embeddings, dtype=np.float32),
        precision_target=PRECISION_TARGET,
    )
    return float(np.mean(result.predicted_ids == split.test["category_id"].to_numpy()))


def log_step(dataset: str, done: int, total: int, loss: float) -> None:
    """Log every tenth training step."""
    if done % 10 == 0 or done == total:
        logger.info("Data set %r: step %d of %d, loss %.3f", dataset, done, total, loss)


def benchmark_dataset(name: str, args, encoder) -> dict:
    """Fine-tune on one data set and return its result row."""
    split = prepare_split(name, args.data_dir, args.limit)
    frozen = {
        part: load_or_encode_titles(
            encoder,
            frame["title"].tolist(),
            cache_dir=args.cache_dir,
            dataset=f"{name}-{part}" if part == "test" else name,
        )
        for part, frame in (("train", split.train), ("test", split.test))
    }
    frozen_accuracy = knn_accuracy(frozen["train"], split, frozen["test"])

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "encoder"
        result = fine_tune_encoder(
            EMBEDDING_MODEL,
            split.train["title"].tolist(),
            split.train["category_id"].tolist(),
            folder,
            steps=args.steps,
            pairs_per_step=args.pairs,
            learning_rate=LEARNING_RATE,
            seed=SEED,
            on_progress=lambda done, total, loss: log_step(name, done, total, loss),
        )
        fine_tuned = load_encoder(str(folder))
        titles = split.train["title"].tolist() + split.test["title"].tolist()
        started = time.perf_counter()
        vectors = encode_titles(fine_tuned, titles, batch_size=BATCH_SIZE)
        encode_s = time.perf_counter() - started
    train_count = len(split.train)
    tuned_accuracy = knn_accuracy(vectors[:train_count], split, vectors[train_count:])
    logger.info(
        "Data set %r: kNN accuracy %.3f frozen, %.3f fine-tuned",
        name,
        frozen_accuracy,
        tuned_accuracy,
    )
    default_frozen = run_tuned(frozen["train"], split, frozen["test"])
    default_tuned = run_tuned(vectors[:train_count], split, vectors[train_count:])
    pair_count, step_s = result.pairs_per_step, result.seconds_per_step
    return {
        "dataset": name,
        "train_count": train_count,
        "steps": args.steps,
        "pairs": pair_count,
        "names_seen": args.steps * pair_count * 2,
        "step_s": step_s,
        "train_rate": pair_count * 2 / step_s,
        "encode_rate": len(titles) / encode_s,
        "encode_s": encode_s,
        "frozen_accuracy": frozen_accuracy,
        "tuned_accuracy": tuned_accuracy,
        "change": (tuned_accuracy - frozen_accuracy) * 100,
        "default_frozen": default_frozen,
        "default_tuned": default_tuned,
        "default_change": (default_tuned - default_frozen) * 100,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        type=parse_dataset_names,
        default=["mwpd", "frisco"],
        help="Comma-separated data sets to run (default: mwpd,frisco).",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data",
        help="Folder containing the data set folders (default: ../shared/data).",
    )
    parser.add_argument(
        "--steps",
        type=parse_positive_int,
        default=150,
        help="Training steps per data set (default: 150).",
    )
    parser.add_argument(
        "--pairs",
        type=parse_positive_int,
        default=32,
        help="Pairs per step, each from another category (default: 32).",
    )
    parser.add_argument(
        "--limit",
        type=parse_positive_int,
        help="Keep at most this many train and this many test names per data set.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO_ROOT / "bench" / ".cache",
        help="Folder for the cached frozen embeddings (default: bench/.cache).",
    )
    parser.add_argument(
        "--output", type=Path, help="Also write the markdown report to this file."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the report and return the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    missing = find_missing_files(args.data_dir, args.datasets)
    if missing:
        logger.error(
            "Data set file %s not found. Pass the folder containing the data set "
            "folders with --data-dir (looked in %s).",
            missing[0],
            args.data_dir,
        )
        return 2

    encoder = load_warm_encoder()
    rows = [benchmark_dataset(name, args, encoder) for name in args.datasets]
    machine = [
        *describe_machine(),
        f"- Encoder: {EMBEDDING_MODEL} (PyTorch), learning rate {LEARNING_RATE}, "
        f"similarity scale {SIMILARITY_SCALE}",
    ]
    report = "\n\n".join(
        [
            "### Machine",
            "\n".join(machine),
            "### Results",
            render_table(COLUMNS, rows, 1),
        ]
    )
    sys.stdout.write(report + "\n")
    if args.output is not None:
        args.output.write_text(report + "\n")
        logger.info("Report written to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
