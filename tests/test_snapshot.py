"""Tests of training snapshots: cleaning, deduplication, caps, rare categories and the split."""

import pandas as pd
import pytest

from mkt.errors import NotEnoughData
from mkt.snapshot import build_training_snapshot, split_stratified
from mkt.stores.config import parse_store_config
from mkt.titles import title_key


def config(**overrides):
    document = {
        "store_id": "shop",
        "marketplace": "test",
        "connector": {"kind": "file", "options": {"products": "p.csv"}},
        "min_products_per_category": 2,
    }
    document.update(overrides)
    return parse_store_config(document)


def labelled(rows):
    return pd.DataFrame(rows, columns=["title", "category_id", "category_path"])


def phones_and_tvs(count=10):
    phones = [(f"phone model {i}", "p", "Phones") for i in range(count)]
    tvs = [(f"tv model {i}", "t", "TVs") for i in range(count)]
    return phones + tvs


def test_snapshot_drops_empty_and_duplicate_names():
    rows = phones_and_tvs() + [("  ", "p", "Phones"), ("PHONE MODEL 1", "p", "Phones")]

    snapshot, stats = build_training_snapshot(labelled(rows), config())

    assert stats.empty_count == 1
    assert stats.duplicate_count == 1
    assert len(snapshot) == 20


def test_duplicate_name_keeps_majority_category_and_never_straddles_split():
    rows = phones_and_tvs() + [
        ("tv model 1", "p", "Phones"),
        ("Tv Model 1", "t", "TVs"),
    ]

    snapshot, stats = build_training_snapshot(labelled(rows), config())

    keys = snapshot.assign(key=snapshot["title"].map(title_key))
    assert keys["key"].is_unique
    assert keys.loc[keys["key"] == "tv model 1", "category_id"].tolist() == ["t"]
    assert stats.conflicting_label_count == 1


def test_snapshot_caps_names_per_category_reproducibly():
    rows = phones_and_tvs(count=50)

    first, stats = build_training_snapshot(
        labelled(rows), config(target_products_per_category=10)
    )
    second, _ = build_training_snapshot(
        labelled(rows), config(target_products_per_category=10)
    )

    assert first.groupby("category_id").size().tolist() == [10, 10]
    assert stats.capped_count == 80
    assert first["title"].tolist() == second["title"].tolist()


def test_rare_categories_are_left_out():
    rows = phones_and_tvs() + [("garden hose", "g", "Garden")]

    snapshot, stats = build_training_snapshot(
        labelled(rows), config(min_products_per_category=3)
    )

    assert "g" not in set(snapshot["category_id"])
    assert stats.rare_category_count == 1
    assert stats.rare_product_count == 1


def test_single_category_store_is_rejected():
    rows = [(f"phone {i}", "p", "Phones") for i in range(20)]

    with pytest.raises(NotEnoughData) as caught:
        build_training_snapshot(labelled(rows), config())

    assert "1 category" in str(caught.value)
    assert "min_products_per_category" in str(caught.value)


def test_split_holds_out_fraction_per_category_with_at_least_one_train_name():
    frame = labelled(
        phones_and_tvs(count=10)
        + [("radio a", "r", "Radio"), ("radio b", "r", "Radio")]
    )

    split = split_stratified(frame, test_fraction=0.2, seed=1)

    counts = split.groupby(["category_id", "split"]).size().to_dict()
    assert counts[("p", "test")] == 2
    assert counts[("t", "train")] == 8
    assert counts[("r", "test")] == 1
    assert counts[("r", "train")] == 1


def test_split_is_deterministic_for_a_seed():
    frame = labelled(phones_and_tvs(count=30))

    first = split_stratified(frame, test_fraction=0.3, seed=7)
    second = split_stratified(
        frame.sample(frac=1, random_state=3), test_fraction=0.3, seed=7
    )
    other = split_stratified(frame, test_fraction=0.3, seed=8)

    assert first["split"].tolist() == second["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
