"""Tests of the usem3 encoder: the multilingual Universal Sentence Encoder v3."""

import numpy as np
import pytest

from mkt.encoders import load_encoder


@pytest.fixture(scope="module")
def usem3_encoder():
    return load_encoder("usem3")


def test_usem3_encodes_unit_vectors(usem3_encoder):
    embeddings = usem3_encoder.encode(
        ["apple iphone 8 64gb", "pralka bosch"], batch_size=2
    )

    assert embeddings.shape == (2, 512)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_usem3_keeps_polish_diacritics(usem3_encoder, torch_encoder):
    # "pączki" are doughnuts and "paczki" are parcels; all-MiniLM-L6-v2 strips the
    # ogonek and encodes both alike, usem3 must not.
    names = ["pączki z różą 6 szt", "paczki z roza 6 szt"]

    minilm_donuts, minilm_parcels = torch_encoder.encode(names, batch_size=8)
    donuts, parcels = usem3_encoder.encode(names, batch_size=8)

    assert float(minilm_donuts @ minilm_parcels) > 0.999
    assert float(donuts @ parcels) < 0.99


def test_usem3_puts_polish_names_near_their_translation(usem3_encoder):
    names = [
        "Ser żółty gouda w plastrach",
        "sliced gouda cheese",
        "pralka automatyczna",
    ]

    cheese_pl, cheese_en, washer_pl = usem3_encoder.encode(names, batch_size=8)

    assert float(cheese_pl @ cheese_en) > float(cheese_pl @ washer_pl)


def test_usem3_counts_no_names_over_length(usem3_encoder):
    long_name = " ".join(["ser żółty"] * 500)

    assert usem3_encoder.max_seq_length is None
    assert usem3_encoder.count_over_length([long_name]) == 0
