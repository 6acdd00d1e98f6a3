"""Build an Allegro-sized IVF+PQ index from synthetic clustered embeddings and time it.

The full store is 13,788 categories x 2,000 names = 27.6 M vectors of dimension 384.
`--fraction` keeps that share of the names per category, for machines where the full
size takes too long. Vectors are generated in batches into a float16 .npy file, the
same format the embed stage writes, and the index is built from that file with the
train stage's code, which also writes the float16 re-rank file. The report (machine, sizes, results) goes to stdout as markdown
and logs go to stderr. Run it from the repository root:

    .venv/bin/python -m bench.scale --fraction 0.05 --output /tmp/scale.md
"""

import argparse
import logging
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from bench.report import describe_machine
from mkt.index import (
    build_index,
    estimate_index_bytes,
    exact_neighbours,
    format_gb,
    open_rerank_file,
    plan_index,
    recall_at_k,
    release_mapped_pages,
    rerank_candidates,
    search_index,
)
from mkt.snapshot import open_embeddings_file

logger = logging.getLogger(__name__)

DIMENSION = 384
LATENT_DIMENSION = 32
DIRECTION_SET_COUNT = 64
# Noise of norm about 0.5 against unit centres puts a name's cosine to its category's
# centre near 0.9.
NOISE_SCALE = 0.5 / np.sqrt(LATENT_DIMENSION)
K = 10
SINGLE_QUERY_COUNT = 100
NPROBE_VALUES = (1, 2, 4, 8, 16)
# Names generated at a time; each costs a few float32 rows of working memory.
ROWS_PER_BATCH = 65_536


def generate_names(
    centres: np.ndarray, directions: np.ndarray, labels: np.ndarray, seed: int
) -> np.ndarray:
    """Return unit vectors near their category's centre, varying in a few directions.

    Sentence embeddings of product names vary in far fewer directions than their
    dimension, so each category's noise lives in one of DIRECTION_SET_COUNT random
    LATENT_DIMENSION-dimensional subspaces.
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((len(labels), LATENT_DIMENSION), dtype=np.float32)
    vectors = centres[labels]
    direction_sets = labels % len(directions)
    for set_number in np.unique(direction_sets):
        is_in_set = direction_sets == set_number
        vectors[is_in_set] += NOISE_SCALE * (latent[is_in_set] @ directions[set_number])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def write_store(
    path: Path, centres: np.ndarray, directions: np.ndarray, names_per_category: int
) -> np.memmap:
    """Write every category's names to a float16 .npy file, a batch of categories at a time."""
    category_count = len(centres)
    embeddings = open_embeddings_file(
        path, category_count * names_per_category, DIMENSION
    )
    categories_per_batch = max(1, ROWS_PER_BATCH // names_per_category)
    for first in range(0, category_count, categories_per_batch):
        categories = np.arange(first, min(first + categories_per_batch, category_count))
        labels = np.repeat(categories, names_per_category)
        start = first * names_per_category
        embeddings[start : start + len(labels)] = generate_names(
            centres, directions, labels, seed=first + 1
        )
        embeddings.flush()
        release_mapped_pages(embeddings)
    return embeddings


def peak_rss_gb() -> float:
    """Return this process's peak resident memory so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def measure_searches(
    index: faiss.Index,
    rerank_vectors: np.ndarray,
    queries: np.ndarray,
    true_positions: np.ndarray,
    rerank_factors: list[int],
) -> list[dict]:
    """Return recall@K and search time for each nprobe and re-rank factor.

    The candidates of the largest factor are searched once per nprobe. A smaller factor
    re-ranks the first K x factor of them: a search for that many returns the same.
    """
    inverted = faiss.extract_index_ivf(index)
    rows = []
    for nprobe in NPROBE_VALUES:
        inverted.nprobe = nprobe
        started = time.perf_counter()
        _, candidates = index.search(queries, K * max(rerank_factors))
        codes_ms = (time.perf_counter() - started) / len(queries) * 1000
        for factor in [1, *rerank_factors]:
            started = time.perf_counter()
            if factor == 1:
                found = candidates[:, :K]
            else:
                _, found = rerank_candidates(
                    rerank_vectors, queries, candidates[:, : K * factor], K
                )
            rerank_ms = (time.perf_counter() - started) / len(queries) * 1000
            single_ms = time_single_queries(index, rerank_vectors, queries, factor)
            rows.append(
                {
                    "nprobe": nprobe,
                    "factor": factor,
                    "recall": recall_at_k(found, true_positions, K),
                    "batch_ms": codes_ms + rerank_ms,
                    "single_ms": single_ms,
                }
            )
            logger.info("nprobe %d, re-rank factor %d: %s", nprobe, factor, rows[-1])
    return rows


def time_single_queries(
    index: faiss.Index, rerank_vectors: np.ndarray, queries: np.ndarray, factor: int
) -> float:
    """Return the mean ms of searching SINGLE_QUERY_COUNT queries one at a time."""
    sample = queries[:SINGLE_QUERY_COUNT]
    started = time.perf_counter()
    for query in sample:
        search_index(
            index,
            query[None, :],
            K,
            rerank_vectors=rerank_vectors,
            rerank_factor=factor,
        )
    return (time.perf_counter() - started) / len(sample) * 1000


def run_benchmark(args: argparse.Namespace, work_dir: Path) -> dict:
    """Generate the store, build its index and measure it; return the figures."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.categories, DIMENSION), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    directions = rng.standard_normal(
        (DIRECTION_SET_COUNT, LATENT_DIMENSION, DIMENSION), dtype=np.float32
    )
    directions /= np.sqrt(DIMENSION)
    names_per_category = max(1, round(args.names_per_category * args.fraction))

    started = time.perf_counter()
    embeddings = write_store(work_dir, centres, directions, names_per_category)
    generate_s = time.perf_counter() - started
    logger.info("Wrote %d vectors in %.0f s", len(embeddings), generate_s)

    plan = plan_index(
        len(embeddings),
        DIMENSION,
        kind="ivfpq",
        list_count=args.list_count,
        uses_opq=args.opq,
        category_count=args.categories,
    )
    plan = replace(plan, kmeans_iterations=args.kmeans_iterations)
    rerank_vectors = open_rerank_file(
        work_dir / "rerank.npy", len(embeddings), DIMENSION
    )
    started = time.perf_counter()
    labels = np.repeat(np.arange(args.categories), names_per_category)
    index = build_index(embeddings, plan, rerank_vectors=rerank_vectors, labels=labels)
    build_s = time.perf_counter() - started
    build_rss_gb = peak_rss_gb()
    logger.info("Built %s in %.0f s", plan.factory_string, build_s)

    query_labels = rng.integers(0, args.categories, args.query_count)
    queries = generate_names(centres, directions, query_labels, seed=-1 % 2**32)
    started = time.perf_counter()
    true_positions = exact_neighbours(
        embeddings, np.arange(len(embeddings)), queries, K
    )
    exact_s = time.perf_counter() - started
    exact_rss_gb = peak_rss_gb()
    return {
        "vector_count": len(embeddings),
        "names_per_category": names_per_category,
        "plan": plan,
        "estimate": estimate_index_bytes(plan),
        "index_bytes": faiss.serialize_index(index).nbytes,
        "generate_s": generate_s,
        "build_s": build_s,
        "build_rss_gb": build_rss_gb,
        "exact_rss_gb": exact_rss_gb,
        "exact_s": exact_s,
        "searches": measure_searches(
            index, rerank_vectors, queries, true_positions, args.rerank_factors
        ),
        "peak_rss_gb": peak_rss_gb(),
    }


def render_report(args: argparse.Namespace, result: dict) -> str:
    """Return the markdown report: machine, sizes, build figures and the search table."""
    plan = result["plan"]
    store = [
        f"- {args.categories:,} categories x {result['names_per_category']:,} names = "
        f"{result['vector_count']:,} vectors of dimension {DIMENSION} "
        f"(fraction {args.fraction:g} of {args.names_per_category:,} names per category)",
        f"- Index: `{plan.factory_string}`, {plan.training_count:,} training vectors, "
        f"{plan.kmeans_iterations} k-means iterations",
        f"- Generating the float16 file: {result['generate_s']:.0f} s; building the "
        f"index from it: {result['build_s']:.0f} s",
        f"- Index size: {format_gb(result['index_bytes'])} serialised; estimate before "
        f"building: {format_gb(result['estimate'])}",
        f"- Peak RSS after building: {result['build_rss_gb']:.2f} GB; after the exact "
        f"search: {result['exact_rss_gb']:.2f} GB; after all searches: "
        f"{result['peak_rss_gb']:.2f} GB",
        f"- Exact search of {args.query_count} held-out queries for the recall "
        f"reference: {result['exact_s']:.0f} s",
    ]
    search = [
        "| nprobe | Candidates re-ranked | Recall@10 against exact | "
        f"ms per query, batch of {args.query_count} | ms per single query |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {row['nprobe']} | "
            f"{'none (codes only)' if row['factor'] == 1 else row['factor'] * K} | "
            f"{row['recall']:.3f} | {row['batch_ms']:.2f} | {row['single_ms']:.2f} |"
            for row in result["searches"]
        ],
    ]
    sections = [
        "### Machine",
        "\n".join(describe_machine()),
        "### Store",
        "\n".join(store),
        "### Search",
        "\n".join(search),
    ]
    return "\n\n".join(sections) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=13_788)
    parser.add_argument("--names-per-category", type=int, default=2_000)
    parser.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="Share of the names per category to generate (default: 1, the full size).",
    )
    parser.add_argument(
        "--list-count",
        type=int,
        help="IVF lists trained by k-means (default: one list per category, "
        "as mkt chooses for this many categories).",
    )
    parser.add_argument(
        "--opq",
        action="store_true",
        help="Rotate the vectors with OPQ before PQ, as the train stage does by default.",
    )
    parser.add_argument(
        "--kmeans-iterations",
        type=int,
        default=10,
        help="k-means iterations training the lists (default: 10).",
    )
    parser.add_argument(
        "--query-count",
        type=int,
        default=500,
        help="Held-out queries for recall and latency (default: 500).",
    )
    parser.add_argument(
        "--rerank-factors",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[4, 10, 20],
        help="Comma-separated re-rank factors: candidates re-ranked per query, in "
        "multiples of k=10 (default: 4,10,20).",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="Folder for the float16 embeddings file (default: a temporary folder).",
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
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        result = run_benchmark(args, Path(folder))
    report = render_report(args, result)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)
        logger.info("Report written to %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
