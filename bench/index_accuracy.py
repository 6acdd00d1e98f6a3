"""Compare the kNN classifier's accuracy with exact, IVF and IVF+PQ indexes on real data.

IVF+PQ runs twice: on its codes alone, and re-ranking the train stage's default
`rerank_factor` x k candidates by the float16 vectors, as the train stage builds it.

Uses the accuracy benchmark's splits, embedding model and embedding cache; the test
embeddings are cached too, since this benchmark does not time encoding. The report
goes to stdout as markdown and logs go to stderr. Run it from the repository root:

    .venv/bin/python -m bench.index_accuracy --output /tmp/index_accuracy.md
"""

import logging
import sys
import time

import faiss
import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from bench.accuracy import (
    BATCH_SIZE,
    EMBEDDING_MODEL,
    load_or_encode_titles,
    load_warm_encoder,
)
from bench.accuracy import (
    parse_args as parse_accuracy_args,
)
from bench.classifiers import VOTE_TEMPERATURE
from bench.report import Column, describe_machine, render_table
from bench.splits import find_missing_files, prepare_split
from mkt.classifier import KnnClassifier
from mkt.stores.config import ClassifierSettings

logger = logging.getLogger(__name__)

RERANK_FACTOR = ClassifierSettings().rerank_factor
# (label, index kind, re-rank factor)
INDEX_VARIANTS = (
    ("flat", "flat", 0),
    ("ivf", "ivf", 0),
    ("ivfpq, codes only", "ivfpq", 0),
    ("ivfpq, re-ranked", "ivfpq", RERANK_FACTOR),
)
K = 10
COLUMNS: list[Column] = [
    ("Data set", "dataset", ""),
    ("Index", "index", ""),
    ("FAISS description", "description", ""),
    ("nprobe", "nprobe", ""),
    ("Accuracy", "accuracy", ".4f"),
    ("Accuracy minus exact (points)", "accuracy_gap", "+.2f"),
    ("Weighted F1", "weighted_f1", ".4f"),
    ("Index MB", "index_mb", ",.2f"),
    ("Re-rank file MB (disk)", "rerank_mb", ",.2f"),
    ("Build s", "build_s", ".1f"),
    ("Predict names/s", "predict_rate", ",.0f"),
]


def describe_index(index: faiss.Index, category_count: int) -> tuple[str, str]:
    """Return a short description of an index and its nprobe ('-' for exact search)."""
    if isinstance(index, faiss.IndexFlat):
        return "Flat", "-"
    # An OPQ rotation wraps the inverted lists in an IndexPreTransform, so the kind of
    # codes is read from the inverted-list index itself.
    inverted = faiss.downcast_index(faiss.extract_index_ivf(index))
    codes = "PQ" if isinstance(inverted, faiss.IndexIVFPQ) else "Flat"
    rotation = "OPQ," if isinstance(index, faiss.IndexPreTransform) else ""
    lists = " (categories)" if inverted.nlist == category_count else ""
    return f"{rotation}IVF{inverted.nlist}{lists},{codes}", str(inverted.nprobe)


def run_index_kind(
    split, train_embeddings, test_embeddings, variant: tuple[str, str, int]
) -> dict:
    """Build the classifier with one index variant and score it on the test split."""
    label, kind, rerank_factor = variant
    paths = dict(zip(split.train["category_id"], split.train["category_path"]))
    started = time.perf_counter()
    classifier = KnnClassifier.build(
        train_embeddings,
        split.train["category_id"].tolist(),
        paths,
        index=kind,
        rerank_factor=rerank_factor,
        k=K,
        vote_temperature=VOTE_TEMPERATURE,
    )
    build_s = time.perf_counter() - started

    started = time.perf_counter()
    predictions = classifier.predict(test_embeddings, top_k=1)
    predict_s = time.perf_counter() - started
    predicted_ids = np.array([p.category_id for p in predictions], dtype=object)
    true_ids = split.test["category_id"].to_numpy()
    description, nprobe = describe_index(classifier.index, len(classifier.categories))
    return {
        "dataset": split.dataset,
        "index": label,
        "description": description,
        "nprobe": nprobe,
        "accuracy": accuracy_score(true_ids, predicted_ids),
        "weighted_f1": f1_score(
            true_ids, predicted_ids, average="weighted", zero_division=0
        ),
        "index_mb": faiss.serialize_index(classifier.index).nbytes / 1e6,
        "rerank_mb": 0.0
        if classifier.rerank_vectors is None
        else classifier.rerank_vectors.nbytes / 1e6,
        "build_s": build_s,
        "predict_rate": len(true_ids) / max(predict_s, 1e-9),
    }


def benchmark_dataset(name: str, args, encoder) -> list[dict]:
    """Return one result row per index kind for one data set."""
    split = prepare_split(name, args.data_dir, args.limit)
    embeddings = {
        part: load_or_encode_titles(
            encoder,
            frame["title"].tolist(),
            cache_dir=args.cache_dir,
            dataset=f"{name}-{part}" if part == "test" else name,
        )
        for part, frame in (("train", split.train), ("test", split.test))
    }
    rows = [
        run_index_kind(split, embeddings["train"], embeddings["test"], variant)
        for variant in INDEX_VARIANTS
    ]
    for row in rows:
        row["accuracy_gap"] = (row["accuracy"] - rows[0]["accuracy"]) * 100
        logger.info(
            "Data set %r: %s accuracy %.4f", name, row["index"], row["accuracy"]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the report and return the process exit code."""
    args = parse_accuracy_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    missing = find_missing_files(args.data_dir, args.datasets)
    if missing:
        logger.error("Data set file %s not found; pass --data-dir", missing[0])
        return 2

    encoder = load_warm_encoder()
    rows = [
        row for name in args.datasets for row in benchmark_dataset(name, args, encoder)
    ]
    machine = [
        *describe_machine(),
        f"- Embedding model: {EMBEDDING_MODEL}, batch size {BATCH_SIZE}; k={K}",
    ]
    report = (
        "\n\n".join(
            [
                "### Machine",
                "\n".join(machine),
                "### Results",
                render_table(COLUMNS, rows, left_count=4),
            ]
        )
        + "\n"
    )
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
