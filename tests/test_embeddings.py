"""Tests of the shipped embedding model and the embedding cache."""

import numpy as np

from mkt.embeddings import EmbeddingCache, embed_with_cache, encode_titles


def test_shipped_model_encodes_offline_into_unit_vectors(encoder):
    embeddings = encode_titles(encoder, ["apple iphone 8 64gb", "bosch dishwasher"])

    assert embeddings.shape == (2, 384)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_cache_embeds_only_new_names(tmp_path, torch_encoder):
    model = "sentence-transformers/all-MiniLM-L6-v2"
    titles = ["apple iphone 8 64gb", "bosch dishwasher", "apple iphone 8 64gb"]

    first, first_new = embed_with_cache(titles, model, tmp_path)
    second, second_new = embed_with_cache([*titles, "sony bravia tv"], model, tmp_path)

    assert first_new == 2
    assert second_new == 1
    np.testing.assert_array_equal(first, second[:3])
    np.testing.assert_allclose(
        first[1], encode_titles(torch_encoder, ["bosch dishwasher"])[0], atol=1e-6
    )


def test_cache_ignores_vectors_of_another_dimension(tmp_path):
    cache = EmbeddingCache(tmp_path, "some-model", dimension=4)
    cache.put_many(["h1"], np.ones((1, 3), dtype=np.float32))

    found = cache.get_many(["h1"])
    cache.close()

    assert found == {}
