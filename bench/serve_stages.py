"""Time each stage of the classify path for requests of new names, inside one process.

Loads the `@champion` classifier of the PriceRunner sample store from a data directory
that `bench.serve` trained (`--home`), and its encoder, as `mkt serve` does. Then it
times the stages of `POST /stores/{store_id}/classify` for requests of new names: title
cleaning, the encoder, the lexical block, the FAISS search, the vote and the JSON
response. HTTP and the request threads are left out, so the sum is what one request
costs on one thread. FAISS searches on one thread, as in `mkt serve`. The report goes
to stdout as markdown, logs go to stderr. From the repository root, after
`bench.serve --home /tmp/bench-home`:

    .venv/bin/python -m bench.serve_stages --home /tmp/bench-home --output /tmp/stages.md
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from bench.report import Column, describe_machine, render_table
from bench.serve import STORE_ID, load_names, machine_cpu_s

logger = logging.getLogger(__name__)

STAGES = ("clean titles", "encoder", "lexical block", "FAISS search", "vote", "JSON")
RESULT_COLUMNS: list[Column] = [
    ("Stage", "stage", ""),
    ("ms per request", "request_ms", ".2f"),
    ("Share", "share", ".0%"),
]


def load_champion(home: Path):
    """Return the store's served classifier, loaded as `mkt serve` loads it."""
    os.environ["MKT_HOME"] = str(home)
    from mkt.serving.loading import RegistryReader
    from mkt.settings import Settings

    reader = RegistryReader(Settings().resolved_mlflow_tracking_uri)
    version = reader.champion_version(STORE_ID)
    if version is None:
        raise SystemExit(
            f"No @champion classifier of {STORE_ID!r} in {home}. Train it first: "
            f".venv/bin/python -m bench.serve --home {home}"
        )
    return reader.load_version(STORE_ID, version)


def time_request(
    loaded, encoder, raw_names: list[str], batch_size: int
) -> dict[str, float]:
    """Run one request's names through every stage and time each stage in seconds."""
    from mkt.classifier import join_lexical_block
    from mkt.embeddings import encode_titles
    from mkt.serving.routes import result_of
    from mkt.serving.schemas import ClassifyResponse
    from mkt.titles import clean_title

    classifier = loaded.classifier
    marks = [time.perf_counter()]
    names = [clean_title(name) for name in raw_names]
    marks.append(time.perf_counter())
    embeddings = encode_titles(encoder, names, batch_size=batch_size)
    marks.append(time.perf_counter())
    vectors = join_lexical_block(
        embeddings, names, classifier.lexical_block, classifier.lexical_weight
    )
    marks.append(time.perf_counter())
    neighbour_count = min(classifier.k, classifier.index.ntotal)
    similarities, positions = classifier.index.search(vectors, neighbour_count)
    marks.append(time.perf_counter())
    # The private vote is called directly so that the search is not timed twice.
    predictions = [
        classifier._vote(row_similarities, row_positions, 3)
        for row_similarities, row_positions in zip(similarities, positions)
    ]
    marks.append(time.perf_counter())
    response = ClassifyResponse(
        store_id=STORE_ID,
        classifier_version=loaded.version,
        results=[result_of(n, p) for n, p in zip(raw_names, predictions)],
    )
    response.model_dump_json()
    marks.append(time.perf_counter())
    return {stage: marks[i + 1] - marks[i] for i, stage in enumerate(STAGES)}


def measure(args: argparse.Namespace) -> dict:
    """Load the served classifier and time every stage over the requests."""
    from mkt.encoders import load_encoder
    from mkt.serving.settings import ServingSettings

    loaded = load_champion(args.home)
    batch_size = ServingSettings().serve_embedding_batch_size
    encoder = load_encoder(loaded.embedding_model)
    faiss.omp_set_num_threads(1)
    names = load_names(args.seed)
    requests = [
        names[start : start + args.batch_size]
        for start in range(0, (args.requests + 1) * args.batch_size, args.batch_size)
    ]
    time_request(loaded, encoder, requests.pop(), batch_size)

    busy_before, total_before = machine_cpu_s()
    own_before = time.process_time()
    timings = [time_request(loaded, encoder, names, batch_size) for names in requests]
    busy_after, total_after = machine_cpu_s()
    own_s = time.process_time() - own_before
    means = {stage: float(np.mean([t[stage] for t in timings])) for stage in STAGES}
    total_s = sum(means.values())
    rows = [
        {"stage": stage, "request_ms": seconds * 1000, "share": seconds / total_s}
        for stage, seconds in means.items()
    ]
    rows.append({"stage": "total", "request_ms": total_s * 1000, "share": 1.0})
    return {
        "rows": rows,
        "embedding_model": loaded.embedding_model,
        "batch_size": batch_size,
        "names_per_s": args.batch_size / total_s,
        "others_cpu_share": max(busy_after - busy_before - own_s, 0.0)
        / (total_after - total_before),
    }


def render_report(args: argparse.Namespace, figures: dict) -> str:
    """Return the markdown section with the machine and the stage timings."""
    lines = [
        "### Machine",
        "",
        *describe_machine(),
        f"- CPU capacity used by other processes while measuring: "
        f"{figures['others_cpu_share']:.0%}",
        "",
        f"### Stages ({args.requests} requests of {args.batch_size} new names, "
        f"{figures['embedding_model']}, encoded in batches of {figures['batch_size']})",
        "",
        render_table(RESULT_COLUMNS, figures["rows"], 1),
        "",
        f"- Names/s if requests ran one after another without HTTP: "
        f"{figures['names_per_s']:,.0f}",
    ]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=Path,
        required=True,
        help="Data directory in which bench.serve trained the sample store.",
    )
    parser.add_argument(
        "--requests", type=int, default=20, help="Requests timed per stage."
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Names per request.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, help="Also write the report here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_arguments(argv)
    figures = measure(args)
    report = render_report(args, figures)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
