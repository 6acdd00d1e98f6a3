"""Compare mkt's kNN classifier with TF-IDF + LinearSVC and nearest centroid.

All methods get the same train/test split of each public data set, and the
embedding methods get the same embeddings: all-MiniLM-L6-v2 on PyTorch unless
`--embedding-model` names another encoder. The report (machine, data
sets, results) goes to stdout as markdown and logs go to stderr. Run it from the
repository root:

    .venv/bin/python -m bench.accuracy --output /tmp/accuracy.md
    .venv/bin/python -m bench.accuracy --datasets frisco --limit 500
    .venv/bin/python -m bench.accuracy \
        --embedding-model static:sentence-transformers/all-MiniLM-L6-v2
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from bench.classifiers import (
    MethodResult,
    run_knn,
    run_nearest_centroid,
    run_tfidf_svm,
    run_tuned_knn,
)
from bench.report import Column, describe_machine, render_table
from bench.splits import (
    DATASETS,
    Split,
    find_missing_files,
    prepare_split,
    summarise_split,
)
from mkt.classifier import PATH_SEPARATOR
from mkt.embeddings import encode_titles, load_encoder
from mkt.errors import MktError
from mkt.evaluation import coverage_at_precision, level_accuracies
from mkt.titles import hash_text

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 64
PRECISION_TARGET = 0.9

DATASET_COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("Language", "language", ""),
    ("Split", "split", ""),
    ("Train names", "train_count", ","),
    ("Test names", "test_count", ","),
    ("Categories in train", "category_count", ","),
    ("Test names of categories not in train", "unseen_test_count", ","),
    ("Test names also in train (by key)", "repeated_test_count", ","),
    ("Empty titles dropped", "empty_count", ","),
    ("Encoding names/s (test names)", "encode_rate", ",.0f"),
]
RESULT_COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("Method", "method", ""),
    ("Accuracy", "accuracy", ".3f"),
    ("Accuracy on names not in train", "unseen_accuracy", ".3f"),
    ("Level-1 accuracy", "level_1_accuracy", ".3f"),
    ("Weighted F1", "weighted_f1", ".3f"),
    ("Macro F1", "macro_f1", ".3f"),
    (f"Coverage at precision {PRECISION_TARGET}", "coverage", ".3f"),
    ("Errors toward a larger category", "larger_share", ".3f"),
    ("Train s (excl. encoding)", "train_s", ".3f"),
    ("Predict names/s from text (incl. encoding)", "text_rate", ",.0f"),
    ("Predict names/s from embeddings (excl. encoding)", "embedding_rate", ",.0f"),
]
COMPARISON_COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("mkt accuracy", "mkt_accuracy", ".3f"),
    ("LinearSVC accuracy", "svm_accuracy", ".3f"),
    ("Accuracy", "accuracy_verdict", ""),
    (f"mkt coverage at {PRECISION_TARGET}", "mkt_coverage", ".3f"),
    (f"LinearSVC coverage at {PRECISION_TARGET}", "svm_coverage", ".3f"),
    ("Coverage", "coverage_verdict", ""),
]
TUNING_COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("k", "k", ""),
    ("Vote temperature", "vote_temperature", ""),
    ("Class prior exponent", "class_prior_exponent", ""),
    ("Lexical weight", "lexical_weight", ""),
    ("Linear head weight", "linear_weight", ""),
    ("Linear head scale", "linear_scale", ""),
    ("Validation names", "validation_count", ","),
    ("Validation accuracy", "validation_accuracy", ".3f"),
    ("Abstain threshold (calibrated)", "abstain_threshold", ".3f"),
    ("Test names answered", "answered_share", ".3f"),
    ("Precision of answered test names", "answered_precision", ".3f"),
    ("Back-off share", "backoff_share", ""),
    ("Test names answered with an ancestor", "ancestor_share", ".3f"),
    ("Precision of ancestor answers", "ancestor_precision", ".3f"),
]
NOTES = (
    "TF-IDF + LinearSVC has no encoding step: its train time includes fitting the "
    "vectorisers, and its text throughput includes vectorising the test names. "
    "mkt kNN (tuned) is the train stage's default: vote settings, lexical block, linear "
    "head weight and score calibration are chosen on a validation split of the training "
    "names. Its train time includes that search and fitting the head twice. Its text "
    "throughput includes the lexical block and the head. Its score is the "
    "calibrated blend of vote share and head probability. The other kNN "
    "score is the top category's share of the neighbours' vote, the nearest centroid "
    "score is the cosine to the best centroid and the LinearSVC score is the largest "
    "decision value. Coverage is the largest share of test names answered at precision "
    f"{PRECISION_TARGET} or better when names are answered in order of falling score. "
    "With k=1 the vote share is always 1, so that coverage is 0 or 1: 1 exactly when "
    "the accuracy reaches the precision target. Errors toward a larger category is "
    "the share of wrong predictions whose category has more training names than the "
    "true one, among test names whose true category has training names. Accuracy on "
    "names not in train counts test names whose key no training name has."
)


def load_warm_encoder(embedding_model: str = EMBEDDING_MODEL):
    """Load the embedding model and encode one batch, so no timing pays for start-up."""
    encoder = load_encoder(embedding_model)
    encode_titles(encoder, ["warm-up name"] * BATCH_SIZE, batch_size=BATCH_SIZE)
    return encoder


def load_or_encode_titles(
    encoder, titles: list[str], *, cache_dir: Path, dataset: str
) -> np.ndarray:
    """Return embeddings of titles from a .npy cache file, encoding them on a miss.

    The file name contains a hash of the encoder's identity and the titles, so any
    change to the encoder, the split or the cleaning makes a new file instead of
    reusing stale vectors.
    """
    # Joining on newlines is unambiguous because clean_title turns newlines into spaces.
    digest = hash_text("\n".join([encoder.identity, *titles]))[:16]
    cache_path = cache_dir / f"{dataset}-{digest}.npy"
    if cache_path.is_file():
        logger.info(
            "Data set %r: training embeddings read from %s", dataset, cache_path
        )
        return np.load(cache_path)

    started = time.perf_counter()
    embeddings = encode_titles(
        encoder,
        titles,
        batch_size=BATCH_SIZE,
        on_progress=lambda done, total: logger.info(
            "Data set %r: %d of %d training names encoded", dataset, done, total
        ),
    )
    logger.info(
        "Data set %r: training names encoded in %.0f s",
        dataset,
        time.perf_counter() - started,
    )

    cache_dir.mkdir(parents=True, exist_ok=True)
    partial_path = cache_path.with_suffix(".partial")
    with partial_path.open("wb") as file:
        np.save(file, embeddings)
    partial_path.replace(cache_path)
    return embeddings


def encode_test_titles(encoder, titles: list[str]) -> tuple[np.ndarray, float]:
    """Encode the test names and return the embeddings and the seconds it took.

    Test embeddings are never cached, so every run measures the encoding throughput
    on exactly the names it classifies.
    """
    started = time.perf_counter()
    embeddings = encode_titles(encoder, titles, batch_size=BATCH_SIZE)
    return embeddings, time.perf_counter() - started


def share_of_errors_toward_larger(
    predicted_ids: np.ndarray, true_ids: np.ndarray, train_sizes: pd.Series
) -> float | None:
    """Return the share of wrong predictions naming a category with more training names.

    Test names whose true category has no training names are left out, since any
    prediction for them names a larger category. Returns None when none is wrong.
    """
    is_counted = (predicted_ids != true_ids) & np.isin(true_ids, train_sizes.index)
    if not is_counted.any():
        return None
    predicted_sizes = train_sizes.reindex(predicted_ids[is_counted]).to_numpy()
    true_sizes = train_sizes.reindex(true_ids[is_counted]).to_numpy()
    return float((predicted_sizes > true_sizes).mean())


def score_result(
    result: MethodResult,
    true_ids: np.ndarray,
    *,
    encode_test_s: float,
    split: Split,
) -> dict:
    """Return the quality and speed figures of one method on one data set.

    Args:
        result: The predicted categories, scores and timings of one method.
        true_ids: The true category of each test name.
        encode_test_s: Seconds taken to encode the test names.
        split: The split, for training names per category, paths and title keys.
    """
    train_sizes = split.train["category_id"].value_counts()
    category_paths = dict(zip(split.train["category_id"], split.train["category_path"]))
    true_paths = split.test["category_path"].tolist()
    is_unseen = ~split.test["key"].isin(set(split.train["key"])).to_numpy()
    # Every figure here counts the top leaf category. describe_tuning scores the
    # ancestor predictions of abstaining names.
    predicted_ids = result.predicted_ids
    is_correct = predicted_ids == true_ids
    coverage, _ = coverage_at_precision(is_correct, result.scores, PRECISION_TARGET)
    predicted_paths = [category_paths.get(c) for c in predicted_ids]
    levels = level_accuracies(true_paths, predicted_paths)
    predict_s = max(result.predict_s, 1e-9)
    text_s = predict_s + (encode_test_s if result.uses_embeddings else 0.0)
    return {
        "method": result.method,
        "accuracy": accuracy_score(true_ids, predicted_ids),
        "unseen_accuracy": float(is_correct[is_unseen].mean())
        if is_unseen.any()
        else None,
        "level_1_accuracy": levels.get(1),
        "weighted_f1": f1_score(
            true_ids, predicted_ids, average="weighted", zero_division=0
        ),
        "macro_f1": f1_score(true_ids, predicted_ids, average="macro", zero_division=0),
        "coverage": coverage,
        "larger_share": share_of_errors_toward_larger(
            predicted_ids, true_ids, train_sizes
        ),
        "train_s": result.train_s,
        "text_rate": len(true_ids) / text_s,
        "embedding_rate": len(true_ids) / predict_s if result.uses_embeddings else None,
    }


def benchmark_split(split: Split, encoder, cache_dir: Path) -> tuple[dict, list[dict]]:
    """Run every method on one split and return the data set summary and result rows."""
    train_embeddings = load_or_encode_titles(
        encoder,
        split.train["title"].tolist(),
        cache_dir=cache_dir,
        dataset=split.dataset,
    )
    test_embeddings, encode_test_s = encode_test_titles(
        encoder, split.test["title"].tolist()
    )
    tuned, tuning = run_tuned_knn(
        train_embeddings, split, test_embeddings, precision_target=PRECISION_TARGET
    )
    results = [
        tuned,
        run_knn(train_embeddings, split, test_embeddings, k=10),
        run_knn(train_embeddings, split, test_embeddings, k=1),
        run_tfidf_svm(split),
        run_nearest_centroid(train_embeddings, split, test_embeddings),
    ]

    true_ids = split.test["category_id"].to_numpy()
    rows = []
    for result in results:
        row = score_result(result, true_ids, encode_test_s=encode_test_s, split=split)
        logger.info(
            "Data set %r: %s accuracy %.3f",
            split.dataset,
            result.method,
            row["accuracy"],
        )
        rows.append({"dataset": split.dataset, **row})
    summary = summarise_split(split)
    summary["encode_rate"] = len(split.test) / encode_test_s
    summary["tuning"] = describe_tuning(
        split.dataset,
        tuning,
        tuned,
        true_ids,
        split.test["category_path"].tolist(),
    )
    return summary, rows


def describe_tuning(
    dataset: str, tuning, result: MethodResult, true_ids, true_paths: list[str]
) -> dict:
    """Return the settings chosen on validation and how they held on test.

    An ancestor prediction is right when it is a prefix of the true category path.
    """
    if tuning is None:
        return {key: None for _, key, _ in TUNING_COLUMNS} | {"dataset": dataset}
    is_answered = result.scores >= tuning.abstain_threshold
    is_correct = result.predicted_ids == true_ids
    ancestor_hits = [
        is_ancestor(path, true_path)
        for path, true_path in zip(result.ancestor_paths, true_paths)
        if path
    ]
    return {
        "dataset": dataset,
        **vars(tuning.settings),
        "validation_count": tuning.validation_count,
        "validation_accuracy": tuning.validation_accuracy,
        "abstain_threshold": tuning.abstain_threshold,
        "answered_share": float(is_answered.mean()),
        "answered_precision": float(is_correct[is_answered].mean())
        if is_answered.any()
        else None,
        "backoff_share": tuning.backoff_share,
        "ancestor_share": len(ancestor_hits) / len(true_ids),
        "ancestor_precision": float(np.mean(ancestor_hits)) if ancestor_hits else None,
    }


def is_ancestor(path: str, true_path: str) -> bool:
    """Return whether a category path is the true path or one of its ancestors."""
    levels = path.split(PATH_SEPARATOR)
    return true_path.split(PATH_SEPARATOR)[: len(levels)] == levels


def compare_with_baseline(result_rows: list[dict]) -> list[dict]:
    """Return, per data set, the tuned kNN against TF-IDF + LinearSVC with a verdict."""
    by_key = {(row["dataset"], row["method"]): row for row in result_rows}
    rows = []
    for dataset in dict.fromkeys(row["dataset"] for row in result_rows):
        mkt = by_key[(dataset, "mkt kNN (tuned)")]
        svm = by_key[(dataset, "TF-IDF + LinearSVC")]
        rows.append(
            {
                "dataset": dataset,
                "mkt_accuracy": mkt["accuracy"],
                "svm_accuracy": svm["accuracy"],
                "accuracy_verdict": verdict(mkt["accuracy"], svm["accuracy"]),
                "mkt_coverage": mkt["coverage"],
                "svm_coverage": svm["coverage"],
                "coverage_verdict": verdict(mkt["coverage"], svm["coverage"]),
            }
        )
    return rows


def verdict(mkt_value: float, baseline_value: float) -> str:
    """Say whether mkt is at least as good, and by how many points it is not."""
    gap = (baseline_value - mkt_value) * 100
    if gap <= 0:
        return f"mkt at least as good (+{abs(gap):.1f} points)"
    return f"mkt behind by {gap:.1f} points"


def render_report(
    summaries: list[dict], result_rows: list[dict], embedding_model: str
) -> str:
    """Return the whole markdown report: machine, data sets, results and notes."""
    machine = [
        *describe_machine(),
        f"- Embedding model: {embedding_model}, batch size {BATCH_SIZE}",
    ]
    sections = [
        "### Machine",
        "\n".join(machine),
        "### Data sets",
        render_table(DATASET_COLUMNS, summaries, left_count=3),
        "### Results",
        render_table(RESULT_COLUMNS, result_rows, left_count=2),
        NOTES,
        "### mkt against TF-IDF + LinearSVC",
        render_table(
            COMPARISON_COLUMNS, compare_with_baseline(result_rows), left_count=1
        ),
        "### Settings chosen on validation",
        render_table(
            TUNING_COLUMNS, [summary["tuning"] for summary in summaries], left_count=1
        ),
    ]
    return "\n\n".join(sections) + "\n"


def parse_dataset_names(text: str) -> list[str]:
    """Parse a comma-separated list of data set names for argparse."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown data set {', '.join(unknown) or repr(text)} "
            f"(known: {','.join(DATASETS)})"
        )
    return names


def parse_positive_int(text: str) -> int:
    """Parse a whole number of at least 1 for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        type=parse_dataset_names,
        default=list(DATASETS),
        help=f"Comma-separated data sets to run (default: {','.join(DATASETS)}).",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data",
        help="Folder containing the data set folders (default: ../shared/data, "
        "next to the repository).",
    )
    parser.add_argument(
        "--output", type=Path, help="Also write the markdown report to this file."
    )
    parser.add_argument(
        "--embedding-model",
        default=EMBEDDING_MODEL,
        help="The `embedding_model` value to encode with, as in a store config "
        f"(default: {EMBEDDING_MODEL}, on PyTorch).",
    )
    parser.add_argument(
        "--limit",
        type=parse_positive_int,
        help="Keep at most this many train and this many test names per data set, "
        "drawn at random, for a quick smoke run (default: all).",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO_ROOT / "bench" / ".cache",
        help="Folder for the cached training embeddings (default: bench/.cache).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the report and return the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Its per-call progress bars would flood stderr, and the encoding logs its progress.
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

    try:
        encoder = load_warm_encoder(args.embedding_model)
    except MktError as exc:
        logger.error("%s", exc)
        return 1
    summaries, result_rows = [], []
    for name in args.datasets:
        split = prepare_split(name, args.data_dir, args.limit)
        summary, rows = benchmark_split(split, encoder, args.cache_dir)
        summaries.append(summary)
        result_rows.extend(rows)

    report = render_report(summaries, result_rows, args.embedding_model)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)
        logger.info("Report written to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
