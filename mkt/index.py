"""The classifier's FAISS index: its kind chosen by store size, trained on a sample, filled in batches.

Every index compares L2-normalised float32 vectors by inner product, which is then their
cosine similarity. Rows are read from the embeddings array in batches and normalised one
batch at a time, so a memory-mapped float16 file never has to fit in memory as float32.
An IVF+PQ index can keep a float16 copy of its vectors in a memory-mapped file on disk:
its search then takes `rerank_factor` times more candidates from the codes and re-scores
them with those vectors, which lifts recall past what the codes alone reach.
"""

import logging
import math
import mmap
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from mkt.errors import IndexTooLarge

logger = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "ivf", "ivfpq"]

MIN_POINTS_PER_CENTROID = 39
TRAINING_POINTS_PER_CENTROID = 64
MIN_LIST_COUNT = 16
MAX_LIST_COUNT = 65_536
IVF_MIN_VECTORS = 100_000
IVFPQ_MIN_VECTORS = 2_000_000
HNSW_QUANTIZER_MIN_LISTS = 4_096
HNSW_NEIGHBOURS = 32
PQ_BITS = 8
PQ_DIMENSIONS_PER_CODE = 8
BATCH_ROWS = 65_536
READ_CHUNK_ROWS = 2_048
# std::vector doubles its capacity when it grows, so a store filled in batches may
# briefly hold up to twice the bytes of its codes and ids.
GROWTH_FACTOR = 2
# Doubling nprobe stops once recall@k rises by less than this.
MIN_RECALL_GAIN = 0.005
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Rows that train the PQ codebooks and the OPQ rotation when the lists are categories.
CATEGORY_LIST_TRAINING_COUNT = 32_768
RERANK_DTYPE = np.float16
RERANK_QUERY_CHUNK = 256


@dataclass(frozen=True)
class IndexPlan:
    """The index to build for a number of vectors, and why it was chosen."""

    kind: Literal["flat", "ivf", "ivfpq"]
    vector_count: int
    dimension: int
    list_count: int = 0
    pq_code_count: int = 0
    pq_bits: int = PQ_BITS
    training_count: int = 0
    kmeans_iterations: int = 20
    uses_opq: bool = False
    uses_hnsw_quantizer: bool = False
    lists_are_categories: bool = False
    reasons: tuple[str, ...] = field(default=())

    @property
    def factory_string(self) -> str:
        """Return the `faiss.index_factory` description of the index."""
        if self.kind == "flat":
            return "Flat"
        quantizer = f"_HNSW{HNSW_NEIGHBOURS}" if self.uses_hnsw_quantizer else ""
        coarse = f"IVF{self.list_count}{quantizer}"
        if self.lists_are_categories:
            # Not a factory string: build_index makes these lists from the labels.
            coarse = f"IVF{self.list_count}(categories)"
        if self.kind == "ivf":
            return f"{coarse},Flat"
        # "np" skips polysemous training, which is slow and serves only Hamming filtering.
        codes = f"PQ{self.pq_code_count}x{self.pq_bits}np"
        opq = f"OPQ{self.pq_code_count}," if self.uses_opq else ""
        return f"{opq}{coarse},{codes}"

    @property
    def bytes_per_vector(self) -> int:
        """Return the bytes the index stores per vector, ids included."""
        if self.kind == "flat":
            return self.dimension * 4
        if self.kind == "ivf":
            return self.dimension * 4 + 8
        return math.ceil(self.pq_code_count * self.pq_bits / 8) + 8


def plan_index(
    vector_count: int,
    dimension: int,
    *,
    kind: IndexKind = "auto",
    list_count: int | None = None,
    uses_opq: bool = True,
    memory_budget_gb: float | None = None,
    category_count: int | None = None,
) -> IndexPlan:
    """Choose the index for a store of `vector_count` vectors and log why.

    `auto` picks exact search below IVF_MIN_VECTORS, IVF below IVFPQ_MIN_VECTORS and
    IVF with product quantization above, and also IVF+PQ when IVF would not fit the
    memory budget. A kind the store is too small to train falls back to a simpler one.
    Given the store's `category_count`, and no `list_count`, the lists of IVF+PQ are the
    categories when there are at least a quarter as many as k-means would train (see
    `use_category_lists`).
    PQ codes get an OPQ rotation unless `uses_opq` is False: on the Frisco.pl data set
    it cut the accuracy lost to the codes from 1.8 to 0.5 points, but the build took
    about 9 times longer.
    """
    chosen = kind if kind != "auto" else choose_kind_by_size(vector_count)
    plan = IndexPlan(kind="flat", vector_count=vector_count, dimension=dimension)
    if chosen != "flat":
        plan = plan_inverted_index(plan, chosen, list_count, uses_opq)
    if list_count is None and category_count is not None:
        plan = use_category_lists(plan, category_count)
    if (
        kind == "auto"
        and plan.kind == "ivf"
        and memory_budget_gb is not None
        and estimate_index_bytes(plan) > memory_budget_gb * 1e9
    ):
        reason = (
            f"IVF needs an estimated {format_gb(estimate_index_bytes(plan))}, over "
            f"the memory budget of {memory_budget_gb:g} GB, so the vectors are compressed"
        )
        plan = plan_inverted_index(plan, "ivfpq", list_count, uses_opq)
        plan = replace(plan, reasons=(*plan.reasons, reason))

    for reason in plan.reasons:
        logger.info("Index for %d vectors: %s", vector_count, reason)
    logger.info(
        "Index for %d vectors of dimension %d: %s (%s), estimated %s",
        vector_count,
        dimension,
        plan.kind,
        plan.factory_string,
        format_gb(estimate_index_bytes(plan)),
    )
    return plan


def use_category_lists(plan: IndexPlan, category_count: int) -> IndexPlan:
    """Make each IVF+PQ inverted list one category's names, when there are enough.

    A list's centroid is then the mean direction of its category, so no k-means is
    trained, and each stored vector is coded relative to its own category's centre.
    On clustered data that codes neighbours inside a category far more precisely than
    k-means lists, which mix several categories each. Fewer categories than a quarter of
    the k-means list count would make lists too long to scan, and categories of fewer
    than MIN_POINTS_PER_CENTROID names on average too short, so those keep k-means.
    """
    if plan.kind != "ivfpq" or category_count > MAX_LIST_COUNT:
        return plan
    if category_count < max(MIN_LIST_COUNT, plan.list_count // 4):
        return plan
    if plan.vector_count < MIN_POINTS_PER_CENTROID * category_count:
        return plan
    reason = (
        f"the {category_count} categories are the inverted lists (k-means would "
        f"train {plan.list_count}): each list contains one category's names"
    )
    return replace(
        plan,
        list_count=category_count,
        training_count=min(plan.vector_count, CATEGORY_LIST_TRAINING_COUNT),
        uses_hnsw_quantizer=False,
        lists_are_categories=True,
        reasons=(*plan.reasons, reason),
    )


def choose_kind_by_size(vector_count: int) -> Literal["flat", "ivf", "ivfpq"]:
    """Return the index kind `auto` uses for a number of vectors."""
    if vector_count < IVF_MIN_VECTORS:
        return "flat"
    if vector_count < IVFPQ_MIN_VECTORS:
        return "ivf"
    return "ivfpq"


def plan_inverted_index(
    plan: IndexPlan,
    kind: Literal["ivf", "ivfpq"],
    list_count: int | None,
    uses_opq: bool,
) -> IndexPlan:
    """Return an IVF or IVF+PQ plan that respects the training rules, or a fallback."""
    vector_count, reasons = plan.vector_count, list(plan.reasons)
    wanted = list_count or default_list_count(vector_count)
    allowed = vector_count // MIN_POINTS_PER_CENTROID
    if allowed < MIN_LIST_COUNT:
        reasons.append(
            f"{kind} falls back to exact search: {vector_count} vectors train fewer "
            f"than {MIN_LIST_COUNT} lists at {MIN_POINTS_PER_CENTROID} points per centroid"
        )
        return replace(plan, kind="flat", reasons=tuple(reasons))
    if wanted > allowed:
        reasons.append(
            f"{wanted} lists would have fewer than {MIN_POINTS_PER_CENTROID} training "
            f"points per centroid, so {allowed} lists are used"
        )
        wanted = allowed

    training_count = min(vector_count, TRAINING_POINTS_PER_CENTROID * wanted)
    plan = replace(
        plan,
        kind=kind,
        list_count=wanted,
        training_count=training_count,
        uses_hnsw_quantizer=wanted >= HNSW_QUANTIZER_MIN_LISTS,
        reasons=tuple(reasons),
    )
    if kind == "ivf":
        return plan
    if training_count < 2**PQ_BITS:
        reasons.append(
            f"ivfpq falls back to ivf: {training_count} training points are fewer than "
            f"the {2**PQ_BITS} a {PQ_BITS}-bit PQ codebook needs"
        )
        return replace(plan, kind="ivf", reasons=tuple(reasons))
    code_count = pq_code_count(plan.dimension)
    return replace(plan, pq_code_count=code_count, uses_opq=uses_opq)


def default_list_count(vector_count: int) -> int:
    """Return about 4 * sqrt(n) lists, as a power of two within the supported range."""
    target = 4 * math.sqrt(max(vector_count, 1))
    power = 2 ** round(math.log2(target))
    return int(min(max(power, MIN_LIST_COUNT), MAX_LIST_COUNT))


def pq_code_count(dimension: int) -> int:
    """Return the number of PQ sub-quantizers: about one byte per 8 dimensions."""
    wanted = max(1, dimension // PQ_DIMENSIONS_PER_CODE)
    return max(m for m in range(1, wanted + 1) if dimension % m == 0)


def estimate_index_bytes(plan: IndexPlan, batch_rows: int = BATCH_ROWS) -> int:
    """Estimate the peak memory of building the index and holding one label per vector."""
    vector_bytes = plan.vector_count * plan.bytes_per_vector * GROWTH_FACTOR
    label_bytes = plan.vector_count * 8
    row_bytes = plan.dimension * 4
    batch_bytes = 2 * min(batch_rows, plan.vector_count) * row_bytes
    training_bytes = 2 * plan.training_count * row_bytes
    centroid_bytes = plan.list_count * row_bytes
    if plan.uses_hnsw_quantizer:
        centroid_bytes += plan.list_count * HNSW_NEIGHBOURS * 2 * 4
    if plan.uses_opq:
        centroid_bytes += plan.dimension * plan.dimension * 4
    if plan.lists_are_categories:
        # The float64 sums that give each category's centroid.
        centroid_bytes += plan.list_count * row_bytes * 2
    return int(
        vector_bytes + label_bytes + batch_bytes + training_bytes + centroid_bytes
    )


def format_gb(byte_count: float) -> str:
    """Format a byte count in decimal gigabytes."""
    return f"{byte_count / 1e9:.2f} GB"


def check_memory_budget(plan: IndexPlan, memory_budget_gb: float) -> None:
    """Raise IndexTooLarge when the plan's estimated memory exceeds the budget.

    Raises:
        IndexTooLarge: with the estimate, the budget and the settings to change.
    """
    needed = estimate_index_bytes(plan)
    if needed <= memory_budget_gb * 1e9:
        return
    advice = f"raise classifier.memory_budget_gb to at least {math.ceil(needed / 1e9)}"
    if (
        plan.kind != "ivfpq"
        and plan.vector_count >= MIN_LIST_COUNT * MIN_POINTS_PER_CENTROID
    ):
        compressed = plan_inverted_index(plan, "ivfpq", None, True)
        if compressed.kind == "ivfpq":
            advice = (
                f"set classifier.index to ivfpq (estimated "
                f"{format_gb(estimate_index_bytes(compressed))}) or {advice}"
            )
    raise IndexTooLarge(
        f"The {plan.kind} index ({plan.factory_string}) of {plan.vector_count:,} vectors "
        f"of dimension {plan.dimension} needs an estimated {format_gb(needed)}, over "
        f"the memory budget of {memory_budget_gb:g} GB. To build it, {advice}."
    )


def read_normalised_rows(embeddings: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Return the rows at `positions` as L2-normalised float32, reading only those rows."""
    rows = np.empty((len(positions), embeddings.shape[1]), dtype=np.float32)
    # Reading a few rows at a time bounds RSS: the kernel maps the pages around each
    # row read, so scattered rows would otherwise map most of the file at once.
    for start in range(0, len(positions), READ_CHUNK_ROWS):
        chunk = positions[start : start + READ_CHUNK_ROWS]
        rows[start : start + len(chunk)] = embeddings[chunk]
        release_mapped_pages(embeddings)
    # Inner product equals cosine similarity only because the rows are L2-normalised.
    faiss.normalize_L2(rows)
    return rows


def release_mapped_pages(embeddings: np.ndarray) -> None:
    """Drop a memory-mapped array's pages from this process, so reading it keeps RSS flat."""
    # np.memmap keeps its mmap object private; plain arrays have none and are skipped.
    mapping = getattr(embeddings, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def flush_mapped_pages(array: np.ndarray) -> None:
    """Write a memory-mapped array's changed pages to disk and drop them from this process."""
    if isinstance(array, np.memmap):
        array.flush()
    release_mapped_pages(array)


def open_rerank_file(path: Path, row_count: int, dimension: int) -> np.memmap:
    """Create the float16 .npy file that `build_index` fills with the indexed vectors."""
    return np.lib.format.open_memmap(
        path, mode="w+", dtype=RERANK_DTYPE, shape=(row_count, dimension)
    )


def rerank_candidates(
    rerank_vectors: np.ndarray,
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidate positions exactly and keep its k best.

    Args:
        rerank_vectors: The indexed vectors, one row per position, float16 or float32.
        queries: Unit query vectors, one row per query.
        candidates: Each query's candidate positions from the index; -1 pads a row.
        k: Results to keep per query.

    Returns:
        Similarities and positions of shape (queries, k), best first, padded with
        -inf and -1 where a query had fewer than k candidates.
    """
    similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
    positions = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), RERANK_QUERY_CHUNK):
        chunk = candidates[start : start + RERANK_QUERY_CHUNK]
        distinct_rows = np.unique(chunk[chunk >= 0])
        if len(distinct_rows) == 0:
            continue
        # Each distinct candidate row is read once per chunk, in file order.
        rows = read_normalised_rows(rerank_vectors, distinct_rows)
        slots = np.searchsorted(distinct_rows, np.maximum(chunk, 0))
        scores = np.einsum(
            "qd,qcd->qc", queries[start : start + len(chunk)], rows[slots]
        )
        scores[chunk < 0] = -np.inf
        keep = min(k, chunk.shape[1])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
        chunk_scores = np.take_along_axis(scores, best, axis=1)
        chunk_positions = np.take_along_axis(chunk, best, axis=1)
        chunk_positions[~np.isfinite(chunk_scores)] = -1
        similarities[start : start + len(chunk), :keep] = chunk_scores
        positions[start : start + len(chunk), :keep] = chunk_positions
    return similarities, positions


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    rerank_vectors: np.ndarray | None = None,
    rerank_factor: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Search the index for each query's k nearest vectors, re-ranked when vectors are given."""
    if rerank_vectors is None or rerank_factor <= 1:
        return index.search(queries, k)
    candidate_count = min(k * rerank_factor, index.ntotal)
    _, candidates = index.search(queries, candidate_count)
    return rerank_candidates(rerank_vectors, queries, candidates, k)


def build_index(
    embeddings: np.ndarray,
    plan: IndexPlan,
    *,
    rows: np.ndarray | None = None,
    seed: int = 0,
    batch_rows: int = BATCH_ROWS,
    rerank_vectors: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> faiss.Index:
    """Train the planned index on a random sample of rows and add all rows in batches.

    Args:
        embeddings: A 2-D array, in memory or memory-mapped, float16 or float32.
        plan: The index to build, from `plan_index`.
        rows: Positions of the rows to index, in order; all rows when None. The index
            numbers the vectors 0, 1, ... in this order.
        seed: Seed of the training sample.
        batch_rows: Rows read, normalised and added at a time.
        rerank_vectors: An array of one row per indexed vector, usually memory-mapped
            from `open_rerank_file`, that receives each normalised vector as it is added.
        labels: The category number (0 to list_count - 1) of each indexed row, in the
            order of `rows`; required when the plan's lists are categories.

    Raises:
        ValueError: if the plan's lists are categories and the labels are missing or
            do not number list_count categories.
    """
    rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
    if plan.lists_are_categories:
        return build_category_lists_index(
            embeddings, plan, rows, labels, seed, batch_rows, rerank_vectors
        )
    if plan.kind == "flat":
        # The factory would return an IndexFlat that reads back as IndexFlatIP.
        index = faiss.IndexFlatIP(plan.dimension)
    else:
        index = faiss.index_factory(
            plan.dimension, plan.factory_string, faiss.METRIC_INNER_PRODUCT
        )
        faiss.extract_index_ivf(index).cp.niter = plan.kmeans_iterations
        sample = np.random.default_rng(seed).choice(
            len(rows), size=plan.training_count, replace=False
        )
        started = time.perf_counter()
        index.train(read_normalised_rows(embeddings, rows[np.sort(sample)]))
        logger.info(
            "Index %s: trained on %d vectors in %.1f s",
            plan.factory_string,
            plan.training_count,
            time.perf_counter() - started,
        )

    add_rows(
        embeddings,
        rows,
        plan,
        lambda start, batch: index.add(batch),
        batch_rows=batch_rows,
        rerank_vectors=rerank_vectors,
    )
    return index


def add_rows(
    embeddings: np.ndarray,
    rows: np.ndarray,
    plan: IndexPlan,
    add_batch: Callable[[int, np.ndarray], None],
    *,
    batch_rows: int,
    rerank_vectors: np.ndarray | None,
) -> None:
    """Read, normalise and add the rows a batch at a time, copying each to the re-rank file.

    `add_batch` gets the batch's first position in `rows` and its unit vectors.
    """
    started = time.perf_counter()
    for start in range(0, len(rows), batch_rows):
        batch = read_normalised_rows(embeddings, rows[start : start + batch_rows])
        add_batch(start, batch)
        if rerank_vectors is not None:
            rerank_vectors[start : start + len(batch)] = batch
            flush_mapped_pages(rerank_vectors)
    logger.info(
        "Index %s: %d vectors added in %.1f s",
        plan.factory_string,
        len(rows),
        time.perf_counter() - started,
    )


def build_category_lists_index(
    embeddings: np.ndarray,
    plan: IndexPlan,
    rows: np.ndarray,
    labels: np.ndarray | None,
    seed: int,
    batch_rows: int,
    rerank_vectors: np.ndarray | None,
) -> faiss.Index:
    """Build an IVF+PQ index whose list number i contains the rows labelled i."""
    if labels is None or len(labels) != len(rows):
        raise ValueError(
            f"an index with one list per category needs one label per row: got "
            f"{'none' if labels is None else len(labels)} labels for {len(rows)} rows"
        )
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= plan.list_count:
        raise ValueError(
            f"labels must number the {plan.list_count} categories from 0, got values "
            f"from {labels.min()} to {labels.max()}"
        )
    started = time.perf_counter()
    centroids = category_centroids(
        embeddings, rows, labels, plan.list_count, batch_rows
    )
    sample = np.random.default_rng(seed).choice(
        len(rows), size=plan.training_count, replace=False
    )
    training = read_normalised_rows(embeddings, rows[np.sort(sample)])
    rotation = None
    if plan.uses_opq:
        rotation = faiss.OPQMatrix(plan.dimension, plan.pq_code_count)
        rotation.train(training)
        training, centroids = rotation.apply(training), rotation.apply(centroids)
    quantizer = faiss.IndexFlatIP(plan.dimension)
    quantizer.add(centroids)
    inverted = faiss.IndexIVFPQ(
        quantizer,
        plan.dimension,
        plan.list_count,
        plan.pq_code_count,
        plan.pq_bits,
        faiss.METRIC_INNER_PRODUCT,
    )
    inverted.do_polysemous_training = False
    # The quantizer contains list_count centroids already, so training fits the codes only.
    inverted.train(training)
    del training
    logger.info(
        "Index %s: centroids and codes trained on %d vectors in %.1f s",
        plan.factory_string,
        plan.training_count,
        time.perf_counter() - started,
    )

    def add_batch(start: int, batch: np.ndarray) -> None:
        coded = np.ascontiguousarray(
            batch if rotation is None else rotation.apply(batch)
        )
        lists = labels[start : start + len(batch)]
        inverted.add_core(
            len(coded), faiss.swig_ptr(coded), None, faiss.swig_ptr(lists)
        )

    add_rows(
        embeddings,
        rows,
        plan,
        add_batch,
        batch_rows=batch_rows,
        rerank_vectors=rerank_vectors,
    )
    if rotation is None:
        return inverted
    index = faiss.IndexPreTransform(rotation, inverted)
    # Vectors went to the inner index directly, so the wrapper's count is set by hand.
    index.ntotal = inverted.ntotal
    return index


def category_centroids(
    embeddings: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    category_count: int,
    batch_rows: int,
) -> np.ndarray:
    """Return the unit mean direction of each category's rows, reading them in batches."""
    sums = np.zeros((category_count, embeddings.shape[1]), dtype=np.float64)
    for start in range(0, len(rows), batch_rows):
        batch = read_normalised_rows(embeddings, rows[start : start + batch_rows])
        batch_labels = labels[start : start + len(batch)]
        order = np.argsort(batch_labels, kind="stable")
        present, first = np.unique(batch_labels[order], return_index=True)
        sums[present] += np.add.reduceat(batch[order], first, axis=0)
    centroids = sums.astype(np.float32)
    faiss.normalize_L2(centroids)
    return centroids


def exact_neighbours(
    embeddings: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    batch_rows: int = BATCH_ROWS,
) -> np.ndarray:
    """Return the positions (into `rows`) of each query's k most similar rows, exactly."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, len(rows), batch_rows):
        batch = read_normalised_rows(embeddings, rows[start : start + batch_rows])
        similarities, positions = faiss.knn(
            queries, batch, min(k, len(batch)), metric=faiss.METRIC_INNER_PRODUCT
        )
        heap.add_result(similarities, np.where(positions >= 0, positions + start, -1))
    heap.finalize()
    return heap.I


def recall_at_k(found: np.ndarray, true_positions: np.ndarray, k: int) -> float:
    """Return recall@k: the mean share of each query's exact top k found by the index."""
    hits = [
        len(np.intersect1d(found_row[:k], true_row[:k][true_row[:k] >= 0]))
        for found_row, true_row in zip(found, true_positions)
    ]
    return float(np.mean(hits) / k)


def drop_queries_themselves(
    positions: np.ndarray, query_positions: np.ndarray, k: int
) -> np.ndarray:
    """Remove each query's own position from its neighbours and keep the first k."""
    kept = np.full((len(positions), k), -1, dtype=np.int64)
    for i, (row, own) in enumerate(zip(positions, query_positions)):
        others = row[row != own][:k]
        kept[i, : len(others)] = others
    return kept


def tune_nprobe(
    index: faiss.Index,
    embeddings: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    k: int = 10,
    recall_target: float = 0.95,
    query_count: int = 500,
    seed: int = 0,
    rerank_vectors: np.ndarray | None = None,
    rerank_factor: int = 0,
) -> tuple[int, float]:
    """Set the smallest nprobe whose recall@k reaches the target; return it and its recall.

    The queries are a random sample of the indexed rows, each left out of its own
    results, so they stand in for unseen names near the training data. Exact search
    over all rows gives the true neighbours. nprobe doubles until the target is met or
    recall stops rising; a warning is logged when the target is not met. With
    `rerank_vectors`, recall is measured after re-ranking, as the classifier searches.
    """
    inverted = faiss.extract_index_ivf(index)
    rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
    sample = np.random.default_rng(seed).choice(
        len(rows), size=min(query_count, len(rows)), replace=False
    )
    query_positions = np.sort(sample)
    queries = read_normalised_rows(embeddings, rows[query_positions])
    # TODO: exact search reads every row: bench/scale.py took 351 s for 300 queries over
    # 27.6 M rows on 2 cores, so 500 queries add about 10 minutes to such a build.
    exact = exact_neighbours(embeddings, rows, queries, k + 1)
    true_positions = drop_queries_themselves(exact, query_positions, k)

    steps = [step for step in NPROBE_STEPS if step < inverted.nlist] + [inverted.nlist]
    best_nprobe, best_recall = steps[0], -1.0
    for nprobe in steps:
        inverted.nprobe = nprobe
        _, found = search_index(
            index,
            queries,
            k + 1,
            rerank_vectors=rerank_vectors,
            rerank_factor=rerank_factor,
        )
        recall = recall_at_k(
            drop_queries_themselves(found, query_positions, k), true_positions, k
        )
        if recall < best_recall + MIN_RECALL_GAIN:
            break
        best_nprobe, best_recall = nprobe, recall
        if recall >= recall_target:
            break
    inverted.nprobe, nprobe, recall = best_nprobe, best_nprobe, best_recall
    if recall < recall_target:
        # Compressed codes cap the recall however many lists are searched, unless
        # the candidates are re-ranked with the float16 vectors.
        is_compressed = isinstance(faiss.downcast_index(inverted), faiss.IndexIVFPQ)
        advice = (
            "Set classifier.rerank_factor to 10 or more to re-rank the codes' candidates."
            if is_compressed and rerank_vectors is None
            else "Lower classifier.recall_target, or set classifier.index to flat."
        )
        logger.warning(
            "Index: recall@%d stops at %.3f from nprobe %d of %d lists, under the "
            "target %.3f, so the classifier may miss some true neighbours. %s",
            k,
            recall,
            nprobe,
            inverted.nlist,
            recall_target,
            advice,
        )
    logger.info(
        "Index: nprobe %d of %d lists gives recall@%d %.3f on %d held-out queries",
        nprobe,
        inverted.nlist,
        k,
        recall,
        len(queries),
    )
    return nprobe, recall
