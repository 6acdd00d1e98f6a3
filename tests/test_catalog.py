"""Tests of the catalog on SQLite and PostgreSQL: registration, tree sync and ingest."""

import pytest
from sqlalchemy import text
from sqlmodel import select

from mkt.catalog import (
    ingest_products,
    list_store_rows,
    load_category_progress,
    load_store,
    refresh_category_counts,
    register_store,
    sync_category_tree,
)
from mkt.database import Category, CategoryChange, Product, QuarantinedRow, open_session
from mkt.errors import CategoryTreeError, StoreNotFound
from mkt.stores.config import parse_store_config
from mkt.stores.connectors import CategoryRecord, ProductRecord, RejectedRow

TREE = [
    CategoryRecord("1", "Electronics"),
    CategoryRecord("2", "Phones", "1"),
    CategoryRecord("3", "TVs", "1"),
    CategoryRecord("4", "Home"),
    CategoryRecord("5", "Kitchen", "4"),
]


def store_config(store_id="shop-de"):
    return parse_store_config(
        {
            "store_id": store_id,
            "marketplace": "test",
            "connector": {"kind": "file", "options": {"products": "p.csv"}},
            "target_products_per_category": 2,
        }
    )


def changes_of(engine, store_id="shop-de"):
    with open_session(engine) as session:
        rows = session.exec(
            select(CategoryChange).where(CategoryChange.store_id == store_id)
        )
        return sorted((row.change, row.external_id) for row in rows)


def test_register_and_load_store(engine):
    config = store_config()

    assert register_store(engine, config) is True
    assert register_store(engine, config) is False
    assert load_store(engine, "shop-de") == config
    assert [row.store_id for row in list_store_rows(engine)] == ["shop-de"]


def test_load_unknown_store_names_known_ones(engine):
    register_store(engine, store_config("shop-pl"))

    with pytest.raises(StoreNotFound) as caught:
        load_store(engine, "shop-de")

    assert "'shop-de'" in str(caught.value)
    assert "shop-pl" in str(caught.value)
    assert "mkt add-store" in str(caught.value)


def test_tree_sync_stores_paths_and_leaves(engine):
    result = sync_category_tree(engine, "shop-de", TREE)

    with open_session(engine) as session:
        rows = {row.external_id: row for row in session.exec(select(Category))}
    assert result.added == 5
    assert rows["2"].path == "Electronics > Phones"
    assert rows["2"].depth == 2
    assert rows["2"].is_leaf
    assert not rows["1"].is_leaf


def test_tree_sync_logs_renamed_moved_removed_and_added(engine):
    sync_category_tree(engine, "shop-de", TREE)
    changed = [
        CategoryRecord("1", "Electronics"),
        CategoryRecord("2", "Mobile Phones", "1"),
        CategoryRecord("4", "Home"),
        CategoryRecord("5", "Kitchen", "1"),
        CategoryRecord("6", "Garden", "4"),
    ]

    result = sync_category_tree(engine, "shop-de", changed)

    assert (result.added, result.removed, result.renamed, result.moved) == (1, 1, 1, 1)
    assert ("renamed", "2") in changes_of(engine)
    assert ("moved", "5") in changes_of(engine)
    assert ("removed", "3") in changes_of(engine)
    with open_session(engine) as session:
        kitchen = session.exec(
            select(Category).where(Category.external_id == "5")
        ).one()
        tvs = session.exec(select(Category).where(Category.external_id == "3")).one()
    assert kitchen.path == "Electronics > Kitchen"
    assert tvs.removed_at is not None


def test_tree_sync_twice_changes_nothing(engine):
    sync_category_tree(engine, "shop-de", TREE)

    result = sync_category_tree(engine, "shop-de", TREE)

    assert (result.added, result.removed, result.renamed, result.moved) == (0, 0, 0, 0)


def test_tree_with_cycle_is_rejected_and_nothing_written(engine):
    cyclic = [
        CategoryRecord("a", "A", "c"),
        CategoryRecord("b", "B", "a"),
        CategoryRecord("c", "C", "b"),
    ]

    with pytest.raises(CategoryTreeError, match="cycle"):
        sync_category_tree(engine, "shop-de", cyclic)

    with open_session(engine) as session:
        assert session.exec(select(Category)).all() == []


def test_tree_with_missing_parent_names_it(engine):
    orphaned = [CategoryRecord("1", "Home"), CategoryRecord("2", "Lamps", "99")]

    with pytest.raises(CategoryTreeError) as caught:
        sync_category_tree(engine, "shop-de", orphaned)

    assert "99" in str(caught.value)
    assert "2" in str(caught.value)


def test_tree_with_conflicting_duplicate_ids_is_rejected(engine):
    duplicated = [CategoryRecord("1", "Home"), CategoryRecord("1", "Garden")]

    with pytest.raises(CategoryTreeError, match="appears twice"):
        sync_category_tree(engine, "shop-de", duplicated)


def products():
    return [
        ProductRecord("p1", "Nokia 3310", "2"),
        ProductRecord("p2", "Sony Bravia 55", "3"),
        ProductRecord("p3", "Apple iPhone 8", "2"),
    ]


def test_ingest_twice_changes_nothing(engine):
    sync_category_tree(engine, "shop-de", TREE)

    first = ingest_products(engine, "shop-de", products(), "p.csv")
    second = ingest_products(engine, "shop-de", products(), "p.csv")

    assert (first.inserted, first.updated, first.unchanged) == (3, 0, 0)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 3)
    with open_session(engine) as session:
        assert len(session.exec(select(Product)).all()) == 3


def test_ingest_updates_changed_title_and_category(engine):
    sync_category_tree(engine, "shop-de", TREE)
    ingest_products(engine, "shop-de", products(), "p.csv")

    result = ingest_products(
        engine, "shop-de", [ProductRecord("p1", "Nokia 3310 blue", "3")], "p.csv"
    )

    assert result.updated == 1
    with open_session(engine) as session:
        row = session.exec(select(Product).where(Product.external_id == "p1")).one()
    assert (row.title, row.category_external_id) == ("Nokia 3310 blue", "3")


def test_ingest_quarantines_unknown_categories_and_bad_rows(engine):
    sync_category_tree(engine, "shop-de", TREE)
    rows = [
        *products(),
        ProductRecord("p4", "Garden hose", "404"),
        RejectedRow("p.csv", 7, "empty title", "''"),
    ]

    result = ingest_products(engine, "shop-de", rows, "p.csv")

    assert result.inserted == 3
    assert dict(result.rejected) == {"unknown category id": 1, "empty title": 1}
    with open_session(engine) as session:
        quarantined = session.exec(select(QuarantinedRow)).all()
    assert sorted(row.reason for row in quarantined) == [
        "empty title",
        "unknown category id",
    ]
    assert any("404" in row.raw for row in quarantined)


def test_ingest_counts_duplicate_rows_once(engine):
    sync_category_tree(engine, "shop-de", TREE)

    result = ingest_products(engine, "shop-de", [*products(), *products()], "p.csv")

    assert result.inserted == 3
    assert result.duplicates == 3


def test_progress_counts_products_against_target(engine):
    sync_category_tree(engine, "shop-de", TREE)
    ingest_products(engine, "shop-de", products(), "p.csv")

    refresh_category_counts(engine, "shop-de")
    progress = {
        item.external_id: item for item in load_category_progress(engine, "shop-de", 2)
    }

    assert progress["2"].product_count == 2
    assert progress["2"].is_complete
    assert progress["3"].product_count == 1
    assert not progress["3"].is_complete
    assert "1" not in progress


def test_sqlite_file_database_uses_wal(tmp_path):
    from mkt.database import create_database_engine

    engine = create_database_engine(
        f"sqlite:///{tmp_path / 'wal.db'}", busy_timeout_s=5
    )

    with engine.connect() as connection:
        journal_mode = connection.execute(text("PRAGMA journal_mode")).scalar()
        busy_timeout = connection.execute(text("PRAGMA busy_timeout")).scalar()
    assert journal_mode == "wal"
    assert busy_timeout == 5000
