"""Tests of choosing, building, tuning and saving the classifier's FAISS index."""

import logging

import faiss
import numpy as np
import pytest

from mkt.classifier import KnnClassifier
from mkt.errors import IndexTooLarge
from mkt.index import (
    build_index,
    check_memory_budget,
    estimate_index_bytes,
    exact_neighbours,
    plan_index,
    recall_at_k,
    rerank_candidates,
)
from mkt.snapshot import open_embeddings_file

CATEGORY_COUNT = 40
NAMES_PER_CATEGORY = 100
DIMENSION = 32


def clustered_vectors(noise_seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Return unit vectors around one fixed centre per category, varying in 8 directions.

    Another `noise_seed` gives new names of the same categories.
    """
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CATEGORY_COUNT, DIMENSION))
    directions = rng.standard_normal((8, DIMENSION))
    labels = np.repeat(np.arange(CATEGORY_COUNT), NAMES_PER_CATEGORY)
    noise = np.random.default_rng(noise_seed).standard_normal((len(labels), 8))
    vectors = (centres[labels] + 0.4 * noise @ directions).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [f"c{label}" for label in labels]


def test_tiny_store_falls_back_to_flat_with_reason(caplog):
    caplog.set_level(logging.INFO, logger="mkt.index")

    plan = plan_index(500, 384, kind="ivfpq")

    assert plan.kind == "flat"
    assert "500 vectors" in plan.reasons[0]
    assert "falls back to exact search" in caplog.text


def test_too_few_points_per_centroid_uses_fewer_lists():
    plan = plan_index(1000, 384, kind="ivf", list_count=128)

    assert plan.kind == "ivf"
    assert plan.list_count == 1000 // 39
    assert "fewer than 39 training points" in plan.reasons[0]


@pytest.mark.parametrize(
    ("vector_count", "kind"),
    [(5_000, "flat"), (500_000, "ivf"), (27_600_000, "ivfpq")],
)
def test_auto_chooses_kind_by_size(vector_count, kind):
    plan = plan_index(vector_count, 384, memory_budget_gb=100)

    assert plan.kind == kind


def test_auto_compresses_when_ivf_exceeds_budget():
    plan = plan_index(1_000_000, 384, memory_budget_gb=1.0)

    assert plan.kind == "ivfpq"
    assert "over the memory budget of 1 GB" in plan.reasons[-1]


def test_memory_refusal_names_estimate_budget_and_fix():
    plan = plan_index(27_600_000, 384, kind="flat")

    with pytest.raises(IndexTooLarge) as caught:
        check_memory_budget(plan, 16)

    message = str(caught.value)
    assert "27,600,000 vectors" in message
    assert "needs an estimated 85.21 GB" in message
    assert "memory budget of 16 GB" in message
    assert "set classifier.index to ivfpq" in message


def test_classifier_build_rejects_index_over_budget():
    vectors, labels = clustered_vectors()

    with pytest.raises(IndexTooLarge, match="memory_budget_gb to at least 1"):
        KnnClassifier.build(vectors, labels, {}, memory_budget_gb=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_save_and_load_keep_index_kind_and_answers(tmp_path, kind):
    vectors, labels = clustered_vectors()
    classifier = KnnClassifier.build(vectors, labels, {}, index=kind, k=5)
    queries, _ = clustered_vectors(noise_seed=1)

    classifier.save(tmp_path)
    loaded = KnnClassifier.load(tmp_path)

    assert type(loaded.index) is type(classifier.index)
    if kind != "flat":
        saved_nprobe = faiss.extract_index_ivf(classifier.index).nprobe
        assert faiss.extract_index_ivf(loaded.index).nprobe == saved_nprobe
    expected = [p.category_id for p in classifier.predict(queries[:200])]
    assert [p.category_id for p in loaded.predict(queries[:200])] == expected


@pytest.mark.parametrize(("kind", "lowest_recall"), [("ivf", 0.95), ("ivfpq", 0.5)])
def test_tuned_index_recall_on_clustered_vectors(kind, lowest_recall):
    vectors, labels = clustered_vectors()
    classifier = KnnClassifier.build(vectors, labels, {}, index=kind, k=10)
    queries, _ = clustered_vectors(noise_seed=1)
    queries = queries[::20]

    true_positions = exact_neighbours(vectors, np.arange(len(vectors)), queries, 10)
    _, found = classifier.index.search(queries, 10)

    assert recall_at_k(found, true_positions, 10) >= lowest_recall


def test_ivfpq_accuracy_near_exact_on_clustered_vectors():
    vectors, labels = clustered_vectors()
    queries, query_labels = clustered_vectors(noise_seed=1)
    exact = KnnClassifier.build(vectors, labels, {}, index="flat")
    compressed = KnnClassifier.build(vectors, labels, {}, index="ivfpq")

    exact_ids = [p.category_id for p in exact.predict(queries)]
    compressed_ids = [p.category_id for p in compressed.predict(queries)]

    exact_accuracy = np.mean(np.array(exact_ids) == np.array(query_labels))
    compressed_accuracy = np.mean(np.array(compressed_ids) == np.array(query_labels))
    # Four 8-bit codes for 32 dimensions are coarse; real 384-dimensional embeddings
    # get 48 codes.
    assert compressed_accuracy >= exact_accuracy - 0.05


def test_estimate_covers_built_index_size():
    vectors, _ = clustered_vectors()
    plan = plan_index(len(vectors), DIMENSION, kind="ivf")
    classifier = KnnClassifier.build(vectors, [""] * len(vectors), {}, index="ivf")

    serialized_bytes = faiss.serialize_index(classifier.index).nbytes

    assert estimate_index_bytes(plan) >= serialized_bytes


def test_memory_mapped_rows_build_same_classifier_as_array(tmp_path):
    vectors, labels = clustered_vectors()
    embeddings_file = open_embeddings_file(tmp_path, len(vectors), DIMENSION)
    embeddings_file[:] = vectors
    embeddings_file.flush()
    rows = np.arange(0, len(vectors), 2)
    row_labels = [labels[i] for i in rows]
    queries, _ = clustered_vectors(noise_seed=1)

    streamed = KnnClassifier.build(
        embeddings_file, row_labels, {}, rows=rows, index="ivf"
    )
    in_memory = KnnClassifier.build(
        np.array(embeddings_file[rows]), row_labels, {}, index="ivf"
    )

    assert streamed.index.ntotal == len(rows)
    streamed_neighbours = streamed.index.search(queries[:100], 10)[1]
    in_memory_neighbours = in_memory.index.search(queries[:100], 10)[1]
    assert np.array_equal(streamed_neighbours, in_memory_neighbours)


def test_float16_file_moves_cosine_by_under_one_thousandth(tmp_path):
    vectors, _ = clustered_vectors()
    embeddings_file = open_embeddings_file(tmp_path, len(vectors), DIMENSION)
    embeddings_file[:] = vectors

    stored = np.asarray(embeddings_file, dtype=np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)

    assert embeddings_file.dtype == np.float16
    assert np.abs(stored @ vectors[:50].T - vectors @ vectors[:50].T).max() < 1e-3


def test_enough_categories_become_the_inverted_lists():
    vectors, _ = clustered_vectors()
    labels = np.repeat(np.arange(CATEGORY_COUNT), NAMES_PER_CATEGORY)
    plan = plan_index(
        len(vectors), DIMENSION, kind="ivfpq", category_count=CATEGORY_COUNT
    )

    index = build_index(vectors, plan, labels=labels)

    assert plan.lists_are_categories
    assert f"the {CATEGORY_COUNT} categories are the inverted lists" in plan.reasons[-1]
    inverted = faiss.extract_index_ivf(index)
    assert index.ntotal == len(vectors)
    for category in range(CATEGORY_COUNT):
        size = inverted.invlists.list_size(category)
        ids = faiss.rev_swig_ptr(inverted.invlists.get_ids(category), size)
        assert sorted(ids) == list(np.flatnonzero(labels == category))


def test_few_categories_keep_kmeans_lists():
    plan = plan_index(27_600_000, 384, kind="ivfpq", category_count=100)

    assert not plan.lists_are_categories
    assert plan.list_count == 16_384


def test_small_categories_keep_kmeans_lists():
    plan = plan_index(12_000, 384, kind="ivfpq", category_count=800)

    assert not plan.lists_are_categories
    assert plan.list_count == 12_000 // 39


def test_category_lists_without_labels_name_the_problem():
    vectors, _ = clustered_vectors()
    plan = plan_index(
        len(vectors), DIMENSION, kind="ivfpq", category_count=CATEGORY_COUNT
    )

    with pytest.raises(ValueError, match="needs one label per row: got none"):
        build_index(vectors, plan)


def test_rerank_candidates_sorts_by_exact_similarity_and_pads():
    vectors = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.8, 0.0, 0.6]], dtype=np.float32)
    query /= np.linalg.norm(query)

    similarities, positions = rerank_candidates(
        vectors.astype(np.float16), query, np.array([[0, 3, 1, -1]]), 3
    )
    _, short = rerank_candidates(vectors, query, np.array([[2, -1, -1, -1]]), 3)

    assert list(positions[0]) == [1, 3, 0]
    assert similarities[0, 0] == pytest.approx(0.8 / np.linalg.norm([0.1, 0.8, 0.6]))
    assert list(short[0]) == [2, -1, -1]


def test_reranking_lifts_compressed_recall(tmp_path):
    vectors, labels = clustered_vectors()
    queries, _ = clustered_vectors(noise_seed=1)
    queries = queries[::20]
    true_positions = exact_neighbours(vectors, np.arange(len(vectors)), queries, 10)
    codes_only = KnnClassifier.build(vectors, labels, {}, index="ivfpq", k=10)
    reranked = KnnClassifier.build(
        vectors, labels, {}, index="ivfpq", k=10, rerank_factor=10, work_dir=tmp_path
    )

    _, codes_found = codes_only.search_neighbours(queries, None, 10)
    _, reranked_found = reranked.search_neighbours(queries, None, 10)

    codes_recall = recall_at_k(codes_found, true_positions, 10)
    reranked_recall = recall_at_k(reranked_found, true_positions, 10)
    # Four codes of 8 bits for 32 dimensions rank neighbours coarsely; the float16
    # vectors then leave only the neighbours in lists that were not searched.
    assert codes_recall < 0.8
    assert reranked_recall >= 0.9
    assert codes_only.rerank_vectors is None


def test_save_and_load_keep_rerank_vectors(tmp_path):
    vectors, labels = clustered_vectors()
    queries, _ = clustered_vectors(noise_seed=1)
    classifier = KnnClassifier.build(
        vectors, labels, {}, index="ivfpq", rerank_factor=5, work_dir=tmp_path
    )

    classifier.save(tmp_path / "model")
    loaded = KnnClassifier.load(tmp_path / "model")

    assert isinstance(loaded.rerank_vectors, np.memmap)
    assert loaded.rerank_factor == 5
    np.testing.assert_allclose(loaded.rerank_vectors, vectors, atol=1e-3)
    expected = [p.category_id for p in classifier.predict(queries[:200])]
    assert [p.category_id for p in loaded.predict(queries[:200])] == expected
