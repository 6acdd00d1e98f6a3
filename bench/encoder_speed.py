"""Measure how ONNX export, session options and run size change the cost of served names.

Times the int8 ONNX encoder on requests of new PriceRunner names, the shape of one
`mkt serve` batch, under several variants:

- export: the int8 export that mkt builds, or the same fp32 export first rewritten by
  ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`, model type
  bert) and then quantized to int8 the same way;
- intra-op threads (1 or 2) and whether idle intra-op threads spin;
- batch size: how many names `OnnxEncoder.encode` puts into one ONNX Runtime run after
  sorting a request's names by length. Each run is padded to its longest name.

Each variant runs through `OnnxEncoder.encode` with the variant's session in place of
its own. It reports the mean milliseconds per request (tokenizer, padding, ONNX Runtime
and normalisation), names/s and the cosine between its embeddings and those of the
baseline: mkt's int8 export, spinning threads, one run per request. It also reports the
share of the machine's CPU that other processes used while it measured. The report goes
to stdout as markdown and logs go to stderr. From the repository root:

    nice -n 10 .venv/bin/python -m bench.encoder_speed --output /tmp/encoder-speed.md
    .venv/bin/python -m bench.encoder_speed --requests 5
"""

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from bench.report import Column, describe_machine, render_table
from bench.serve import load_names, machine_cpu_s
from mkt.encoders import EncoderSpec, load_encoder
from mkt.encoders.onnx_backend import MODEL_FILE, SPINNING_CONFIG_KEY, ensure_export

logger = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_HEAD_COUNT = 12
MINILM_HIDDEN_SIZE = 384
MKT_EXPORT = "mkt int8"
OPTIMIZED_EXPORT = "optimizer-fused int8"

RESULT_COLUMNS: list[Column] = [
    ("Export", "export", ""),
    ("Threads", "thread_count", ""),
    ("Spinning", "spinning", ""),
    ("Batch size", "batch_size", ""),
    ("ms per request", "request_ms", ".1f"),
    ("Names/s", "names_per_s", ",.0f"),
    ("Min cosine to baseline", "min_cosine", ".4f"),
    ("Mean cosine to baseline", "mean_cosine", ".4f"),
]


@dataclass(frozen=True)
class Variant:
    """One way to run the encoder: which export, session options and batch size."""

    export: str
    thread_count: int
    is_spinning: bool
    batch_size: int


def build_variants(request_size: int) -> list[Variant]:
    """Return the baseline first, then one change at a time, then the combinations."""
    variants = [Variant(MKT_EXPORT, 2, True, request_size)]
    variants += [Variant(OPTIMIZED_EXPORT, 2, True, request_size)]
    variants += [Variant(MKT_EXPORT, 2, False, request_size)]
    variants += [Variant(MKT_EXPORT, 1, True, request_size)]
    variants += [Variant(MKT_EXPORT, 2, True, size) for size in (32, 16, 8)]
    variants += [Variant(MKT_EXPORT, 2, False, size) for size in (16, 8)]
    variants += [Variant(MKT_EXPORT, 1, False, 16)]
    variants += [Variant(OPTIMIZED_EXPORT, 2, False, 16)]
    return variants


def write_optimized_export(fp32_folder: Path, target: Path) -> tuple[Path, dict]:
    """Fuse the fp32 export's transformer operators and quantize it to int8 in `target`.

    Returns:
        The int8 model's path and the optimizer's count of each fused operator.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(fp32_folder / MODEL_FILE),
        model_type="bert",
        num_heads=MINILM_HEAD_COUNT,
        hidden_size=MINILM_HIDDEN_SIZE,
    )
    fused_counts = optimized.get_fused_operator_statistics()
    logger.info("Fused operators: %s", fused_counts)
    optimized.save_model_to_file(str(target / "fused.onnx"))
    # The fused operators are in the com.microsoft domain, which ONNX shape inference
    # cannot type, so the quantizer gets float as their default output type.
    quantize_dynamic(
        str(target / "fused.onnx"),
        str(target / "fused-int8.onnx"),
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return target / "fused-int8.onnx", fused_counts


def open_session(path: Path, variant: Variant) -> onnxruntime.InferenceSession:
    """Open an ONNX Runtime session with the variant's thread count and spinning."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = variant.thread_count
    options.add_session_config_entry(SPINNING_CONFIG_KEY, str(int(variant.is_spinning)))
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )


def measure_variant(encoder, requests: list[list[str]], batch_size: int):
    """Return the embeddings of all requests and the mean seconds per request."""
    encoder.encode(requests[0], batch_size=batch_size)
    started = time.perf_counter()
    embeddings = [encoder.encode(names, batch_size=batch_size) for names in requests]
    return np.concatenate(embeddings), (time.perf_counter() - started) / len(requests)


def measure(args: argparse.Namespace, scratch: Path) -> dict:
    """Build both exports and time every variant on the same requests."""
    encoder = load_encoder(f"onnx-int8:{MODEL_NAME}", scratch)
    fp32_folder = ensure_export(EncoderSpec("onnx", MODEL_NAME), scratch)
    optimized_path, fused_counts = write_optimized_export(fp32_folder, scratch)
    int8_folder = ensure_export(EncoderSpec("onnx-int8", MODEL_NAME), scratch)
    paths = {MKT_EXPORT: int8_folder / MODEL_FILE, OPTIMIZED_EXPORT: optimized_path}
    names = load_names(args.seed)
    requests = [
        names[start : start + args.request_size]
        for start in range(0, args.requests * args.request_size, args.request_size)
    ]

    rows = []
    baseline = None
    busy_before, total_before = machine_cpu_s()
    own_before = time.process_time()
    for variant in build_variants(args.request_size):
        encoder.session = open_session(paths[variant.export], variant)
        embeddings, request_s = measure_variant(encoder, requests, variant.batch_size)
        baseline = embeddings if baseline is None else baseline
        cosines = np.sum(embeddings * baseline, axis=1)
        rows.append(row_of(variant, request_s, cosines, args.request_size))
        logger.info("%s: %.1f ms per request", variant, request_s * 1000)
    busy_after, total_after = machine_cpu_s()
    own_s = time.process_time() - own_before
    others_share = max(busy_after - busy_before - own_s, 0.0) / (
        total_after - total_before
    )
    return {
        "rows": rows,
        "others_cpu_share": others_share,
        "fused_counts": fused_counts,
    }


def row_of(variant: Variant, request_s: float, cosines, request_size: int) -> dict:
    """Return one table row of a variant's figures."""
    return {
        "export": variant.export,
        "thread_count": variant.thread_count,
        "spinning": "on" if variant.is_spinning else "off",
        "batch_size": variant.batch_size,
        "request_ms": request_s * 1000,
        "names_per_s": request_size / request_s,
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
    }


def render_report(args: argparse.Namespace, figures: dict) -> str:
    """Return the markdown section with the machine and the results."""
    fused = figures["fused_counts"]
    lines = [
        "### Machine",
        "",
        *describe_machine(),
        f"- CPU capacity used by other processes while measuring: "
        f"{figures['others_cpu_share']:.0%}",
        "",
        f"### Results ({args.requests} requests of {args.request_size} new names)",
        "",
        render_table(RESULT_COLUMNS, figures["rows"], 4),
        "",
        "- Operators the transformer optimizer fused: "
        + ", ".join(f"{name} {count}" for name, count in fused.items() if count),
    ]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=20, help="Requests timed per variant."
    )
    parser.add_argument(
        "--request-size", type=int, default=64, help="Names per request."
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, help="Also write the report here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_arguments(argv)
    with tempfile.TemporaryDirectory(prefix="mkt-bench-encoder-") as scratch:
        figures = measure(args, Path(scratch))
    report = render_report(args, figures)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
