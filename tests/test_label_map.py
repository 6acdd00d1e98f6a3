"""Tree-change tests: rename, move, delete with and without redirect, re-added ids.

After each change the label map records where old categories go, and a classifier trained
on the old tree never answers with a retired category.
"""

import numpy as np
from sqlmodel import select

from mkt.catalog import ingest_products, sync_category_tree
from mkt.classifier import Candidate, KnnClassifier, Prediction
from mkt.database import Category, CategoryChange, Product, open_session
from mkt.label_map import LabelMap, load_label_map, remap_prediction
from mkt.stores.connectors import CategoryRecord, ProductRecord

STORE_ID = "shop-de"
TREE = [
    CategoryRecord("1", "Electronics"),
    CategoryRecord("2", "Phones", "1"),
    CategoryRecord("3", "TVs", "1"),
    CategoryRecord("4", "Home"),
    CategoryRecord("5", "Kitchen", "4"),
    CategoryRecord("6", "Lamps", "4"),
]
PATHS = {
    "2": "Electronics > Phones",
    "3": "Electronics > TVs",
    "5": "Home > Kitchen",
    "6": "Home > Lamps",
}


def without(*removed_ids):
    return [record for record in TREE if record.external_id not in removed_ids]


def categories_of(engine):
    with open_session(engine) as session:
        return {row.external_id: row for row in session.exec(select(Category))}


def product_categories(engine):
    with open_session(engine) as session:
        rows = session.exec(select(Product.external_id, Product.category_external_id))
        return dict(rows.all())


def change_kinds(engine):
    with open_session(engine) as session:
        return [
            (row.change, row.external_id)
            for row in session.exec(select(CategoryChange).order_by(CategoryChange.id))
        ]


def test_rename_and_move_keep_ids_and_update_paths(engine):
    sync_category_tree(engine, STORE_ID, TREE)
    changed = without("5") + [CategoryRecord("5", "Cooking", "1")]

    result = sync_category_tree(engine, STORE_ID, changed)

    assert (result.renamed, result.moved) == (1, 1)
    assert categories_of(engine)["5"].path == "Electronics > Cooking"
    assert load_label_map(engine, STORE_ID).retired == frozenset()


def test_delete_with_redirect_moves_products(engine):
    sync_category_tree(engine, STORE_ID, TREE)
    ingest_products(
        engine,
        STORE_ID,
        [ProductRecord("a", "Plasma TV 42", "3"), ProductRecord("b", "Pixel 8", "2")],
        "test",
    )

    result = sync_category_tree(engine, STORE_ID, without("3"), {"3": "2"})

    label_map = load_label_map(engine, STORE_ID)
    assert result.redirected == 1
    assert product_categories(engine) == {"a": "2", "b": "2"}
    assert ("redirected", "3") in change_kinds(engine)
    assert label_map.redirects == {"3": ("2", "Electronics > Phones")}
    assert label_map.retired == frozenset()


def test_delete_without_redirect_retires_category(engine):
    sync_category_tree(engine, STORE_ID, TREE)
    ingest_products(engine, STORE_ID, [ProductRecord("l", "Desk lamp", "6")], "test")

    result = sync_category_tree(engine, STORE_ID, without("6"))

    label_map = load_label_map(engine, STORE_ID)
    assert (result.removed, result.redirected) == (1, 0)
    assert label_map.retired == frozenset({"6"})
    assert label_map.redirects == {}
    assert product_categories(engine) == {"l": "6"}


def test_redirect_to_unknown_category_retires_instead(engine):
    sync_category_tree(engine, STORE_ID, TREE)

    result = sync_category_tree(engine, STORE_ID, without("6"), {"6": "99"})

    assert result.redirected == 0
    assert load_label_map(engine, STORE_ID).retired == frozenset({"6"})


def test_re_added_id_is_active_again(engine):
    sync_category_tree(engine, STORE_ID, TREE)
    sync_category_tree(engine, STORE_ID, without("6"))
    retired_version = load_label_map(engine, STORE_ID).version

    result = sync_category_tree(engine, STORE_ID, TREE)

    label_map = load_label_map(engine, STORE_ID)
    assert result.added == 1
    assert categories_of(engine)["6"].removed_at is None
    assert label_map.retired == frozenset()
    assert label_map.version > retired_version


def test_label_map_version_grows_with_each_change(engine):
    first = load_label_map(engine, STORE_ID).version
    sync_category_tree(engine, STORE_ID, TREE)
    second = load_label_map(engine, STORE_ID).version
    sync_category_tree(engine, STORE_ID, TREE)
    third = load_label_map(engine, STORE_ID).version

    assert first == 0
    assert second > first
    assert third == second


def test_redirect_chain_follows_to_active_category(engine):
    sync_category_tree(engine, STORE_ID, TREE)
    sync_category_tree(engine, STORE_ID, without("3"), {"3": "5"})

    sync_category_tree(engine, STORE_ID, without("3", "5"), {"5": "6"})

    label_map = load_label_map(engine, STORE_ID)
    assert label_map.redirects["3"] == ("6", "Home > Lamps")
    assert label_map.redirects["5"] == ("6", "Home > Lamps")


def test_remap_drops_retired_and_merges_redirected_scores():
    label_map = LabelMap(
        version=3, redirects={"3": ("2", PATHS["2"])}, retired=frozenset({"6"})
    )
    prediction = Prediction(
        "6",
        PATHS["6"],
        0.5,
        [
            Candidate("6", PATHS["6"], 0.5),
            Candidate("3", PATHS["3"], 0.3),
            Candidate("2", PATHS["2"], 0.2),
        ],
    )

    remapped = remap_prediction(prediction, label_map)

    assert remapped.category_id == "2"
    assert remapped.score == 0.5
    assert [candidate.category_id for candidate in remapped.candidates] == ["2"]


def test_remap_abstains_when_every_candidate_is_retired():
    label_map = LabelMap(version=1, retired=frozenset({"6"}))
    prediction = Prediction("6", PATHS["6"], 1.0, [Candidate("6", PATHS["6"], 1.0)])

    remapped = remap_prediction(prediction, label_map)

    assert remapped.is_abstained
    assert remapped.candidates == []


def test_classifier_trained_before_changes_returns_no_retired_category(engine):
    sync_category_tree(engine, STORE_ID, TREE)
    rng = np.random.default_rng(0)
    centres = {"2": [1, 0, 0], "3": [0, 1, 0], "5": [0, 0, 1], "6": [1, 1, 1]}
    labels = [category for category in centres for _ in range(5)]
    embeddings = np.array([centres[label] for label in labels], dtype=np.float32)
    embeddings += rng.normal(0, 0.05, embeddings.shape).astype(np.float32)
    classifier = KnnClassifier.build(embeddings, labels, PATHS, k=5)
    sync_category_tree(engine, STORE_ID, without("3", "6"), {"3": "2"})
    label_map = load_label_map(engine, STORE_ID)
    queries = np.array(list(centres.values()), dtype=np.float32)

    predictions = [
        remap_prediction(prediction, label_map)
        for prediction in classifier.predict(queries, top_k=4)
    ]

    answered = [prediction.category_id for prediction in predictions]
    candidate_ids = {
        candidate.category_id
        for prediction in predictions
        for candidate in prediction.candidates
    }
    assert answered[:3] == ["2", "2", "5"]
    assert "3" not in candidate_ids
    assert "6" not in candidate_ids
    assert "6" not in answered


def test_label_map_cache_rereads_after_max_age(engine):
    from mkt.label_map import LabelMapCache

    now = [0.0]
    cache = LabelMapCache(engine, max_age_s=30.0, clock=lambda: now[0])
    sync_category_tree(engine, STORE_ID, TREE)
    first = cache.get(STORE_ID)
    sync_category_tree(engine, STORE_ID, without("6"))

    held = cache.get(STORE_ID)
    now[0] = 31.0
    fresh = cache.get(STORE_ID)

    assert held is first
    assert fresh.retired == frozenset({"6"})
    assert fresh.version > first.version
