"""The ONNX Runtime backend: a sentence-transformers model exported once, run without PyTorch.

The export traces the whole sentence-transformers pipeline (transformer, pooling and,
where the model has it, normalisation), so the ONNX graph pools exactly as the model
does. Each export is a folder under the export directory that contains `model.onnx`,
the tokenizer files and `encoder.json`. It is built in a temporary folder and renamed
into place. A folder whose `model.onnx` does not match the checksum in `encoder.json` is
rebuilt instead of reused.
"""

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mkt.encoders import ONNX_BACKEND, ONNX_INT8_BACKEND, EncoderSpec
from mkt.encoders.torch_backend import count_over_length, load_sentence_transformer
from mkt.errors import ConfigError
from mkt.titles import hash_text

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "encoder.json"
# Opset 17 is the first with a LayerNormalization operator, so each layer norm of the
# transformer stays one node instead of a chain of arithmetic.
OPSET_VERSION = 17
SPINNING_CONFIG_KEY = "session.intra_op.allow_spinning"


def export_folder_name(identity: str) -> str:
    """Return the export folder name of an encoder identity, safe on every file system."""
    safe_chars = (ch if ch.isalnum() or ch in "-." else "_" for ch in identity)
    return f"{''.join(safe_chars)[-60:]}-{hash_text(identity)[:12]}"


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export(folder: Path) -> dict | None:
    """Return an export's metadata, or None when the folder is missing, partial or corrupt."""
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
        is_intact = file_sha256(folder / MODEL_FILE) == metadata["onnx_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metadata if is_intact else None


def ensure_export(spec: EncoderSpec, export_dir: Path) -> Path:
    """Return the folder of the spec's ONNX export, building it first if needed.

    Raises:
        ConfigError: if the model cannot be loaded or exported.
    """

    def write_export(staging: Path) -> None:
        if spec.backend == ONNX_INT8_BACKEND:
            source = ensure_export(
                EncoderSpec(ONNX_BACKEND, spec.model_name), export_dir
            )
            write_int8_export(source, staging, spec.identity)
        else:
            write_fp32_export(spec.model_name, staging, spec.identity)

    folder = export_dir / export_folder_name(spec.identity)
    return ensure_folder(
        folder, read=read_export, write=write_export, identity=spec.identity
    )


def ensure_folder(
    folder: Path,
    *,
    read: Callable[[Path], dict | None],
    write: Callable[[Path], None],
    identity: str,
) -> Path:
    """Return a cached encoder folder, writing it first unless `read` accepts it.

    `write` fills a temporary folder next to `folder`, which is then renamed into place,
    so a crash never leaves a partial folder under the final name.

    Args:
        folder: Final location of the cached files.
        read: Returns the folder's metadata, or None when it is missing or corrupt.
        write: Writes every file of the folder into the folder it is given.
        identity: The encoder's identity, for the logs.
    """
    if read(folder) is not None:
        return folder
    if folder.exists():
        logger.warning(
            "Encoder %r: files in %s are partial or corrupt; rebuilding them",
            identity,
            folder,
        )
        shutil.rmtree(folder, ignore_errors=True)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        write(staging)
        publish_folder(staging, folder, read)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def publish_folder(
    staging: Path, folder: Path, read: Callable[[Path], dict | None]
) -> None:
    """Rename a finished folder into place, keeping one that another process published first."""
    try:
        staging.rename(folder)
    except OSError:
        if read(folder) is None:
            raise


def write_fp32_export(model_name: str, folder: Path, identity: str) -> None:
    """Export a sentence-transformers model with its tokenizer to a folder."""
    import torch

    model = load_sentence_transformer(model_name, device="cpu").eval()
    tokenizer = model.tokenizer
    sample = tokenizer(["a short name", "a longer product name here"], padding=True)
    input_names = [name for name in tokenizer.model_input_names if name in sample]
    wrapper = build_export_module(model, input_names)
    inputs = tuple(torch.tensor(sample[name]) for name in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    try:
        with warnings.catch_warnings():
            # The tracer warns that it records shape checks as constants. They compare
            # a mask with its own sequence, so they always hold. The backend tests
            # check the export against PyTorch at other shapes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*aten::index operator.*")
            torch.onnx.export(
                wrapper,
                inputs,
                str(folder / MODEL_FILE),
                input_names=input_names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=OPSET_VERSION,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        raise ConfigError(
            f"Embedding model {model_name!r} could not be exported to ONNX: {exc}. "
            f"Use the torch backend instead: embedding_model: {model_name}"
        ) from exc

    tokenizer.save_pretrained(str(folder))
    metadata = {
        "identity": identity,
        "dimension": int(model.get_embedding_dimension()),
        "max_seq_length": int(model.max_seq_length),
        "input_names": input_names,
    }
    write_metadata(folder, metadata)
    logger.info("Encoder %r: exported to ONNX in %s", identity, folder)


def write_int8_export(source: Path, folder: Path, identity: str) -> None:
    """Quantize the weights of an fp32 export to int8 into another folder."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for path in source.iterdir():
        if path.name not in (MODEL_FILE, METADATA_FILE):
            shutil.copy2(path, folder / path.name)
    quantize_dynamic(
        str(source / MODEL_FILE), str(folder / MODEL_FILE), weight_type=QuantType.QInt8
    )
    metadata = json.loads((source / METADATA_FILE).read_text())
    write_metadata(folder, {**metadata, "identity": identity})
    logger.info("Encoder %r: quantized to int8 in %s", identity, folder)


def write_metadata(folder: Path, metadata: dict) -> None:
    """Write `encoder.json` with the checksum of the folder's `model.onnx`."""
    checksum = file_sha256(folder / MODEL_FILE)
    document = {**metadata, "onnx_sha256": checksum}
    (folder / METADATA_FILE).write_text(json.dumps(document, indent=2))


def build_export_module(model, input_names: list[str]):
    """Return a torch module that maps token tensors to the model's sentence embedding."""
    import torch

    class SentencePipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            features = dict(zip(input_names, tensors))
            return self.model(features)["sentence_embedding"]

    return SentencePipeline().eval()


class OnnxEncoder:
    """Encode names with an ONNX export of a sentence-transformers model."""

    def __init__(self, spec: EncoderSpec, export_dir: Path) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        self.identity = spec.identity
        folder = ensure_export(spec, export_dir)
        metadata = json.loads((folder / METADATA_FILE).read_text())
        self.dimension = int(metadata["dimension"])
        self.max_seq_length = int(metadata["max_seq_length"])
        self.input_names = list(metadata["input_names"])
        self.size_bytes = (folder / MODEL_FILE).stat().st_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._tokenizer_lock = threading.Lock()
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = (
            onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        # Idle intra-op threads would otherwise spin for a while after each run and
        # take cores from the server's request threads and from other processes.
        options.add_session_config_entry(SPINNING_CONFIG_KEY, "0")
        self.session = onnxruntime.InferenceSession(
            str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        logger.info("Encoder %r loaded from %s", self.identity, folder)

    def encode(self, names: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Return one L2-normalised float32 row per name."""
        # NOTE: int8 dynamic quantization scales each batch by its own activation range,
        # so an int8 vector moves slightly with the names that share its batch.
        embeddings = np.empty((len(names), self.dimension), dtype=np.float32)
        # Batches of similar lengths need less padding, as in sentence-transformers.
        order = np.argsort([-len(name) for name in names], kind="stable")
        for start in range(0, len(names), batch_size):
            positions = order[start : start + batch_size]
            embeddings[positions] = self._encode_batch([names[i] for i in positions])
        return embeddings

    def _encode_batch(self, names: list[str]) -> np.ndarray:
        # A fast tokenizer sets its padding and truncation on each call, and two threads
        # doing so at once fail with "Already borrowed"; the server encodes from threads.
        with self._tokenizer_lock:
            tokens = self.tokenizer(
                names,
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
        feeds = {name: tokens[name].astype(np.int64) for name in self.input_names}
        (vectors,) = self.session.run(None, feeds)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def count_over_length(self, names: Sequence[str]) -> int:
        """Return how many names are cut at `max_seq_length` tokens when encoded."""
        with self._tokenizer_lock:
            return count_over_length(self.tokenizer, names, self.max_seq_length)
