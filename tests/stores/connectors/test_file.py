"""Tests of the file connector on CSV, JSON Lines and Parquet, including bad rows."""

import json

import pandas as pd
import pytest

from mkt.errors import ConnectorError
from mkt.stores.connectors import ProductRecord, RejectedRow, create_connector
from mkt.titles import MAX_TITLE_CHARS


def connector_for(path, **options):
    return create_connector("file", {"products": str(path), **options})


def split_rows(rows):
    products = [row for row in rows if isinstance(row, ProductRecord)]
    rejected = [row for row in rows if isinstance(row, RejectedRow)]
    return products, rejected


def test_csv_products_and_tree_from_paths(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "title,category_id,category_path,product_id\n"
        "Nokia 3310,10,Electronics > Phones,p1\n"
        "Bosch SMS46,20,Home > Dishwashers,p2\n"
    )
    connector = connector_for(path)

    tree = {record.external_id: record for record in connector.read_category_tree()}
    products, rejected = split_rows(list(connector.iter_products()))

    assert tree["10"].name == "Phones"
    assert tree["10"].parent_id == "Electronics"
    assert tree["Electronics"].parent_id is None
    assert [p.external_id for p in products] == ["p1", "p2"]
    assert rejected == []


def test_jsonl_products_with_null_title_are_rejected(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [
        {"title": "Apple iPhone 8", "category_id": "1", "category_path": "Phones"},
        {"title": None, "category_id": "1", "category_path": "Phones"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines))

    products, rejected = split_rows(list(connector_for(path).iter_products()))

    assert [p.title for p in products] == ["Apple iPhone 8"]
    assert [r.reason for r in rejected] == ["empty title"]
    assert rejected[0].position == 2


def test_parquet_products_with_nan_title_are_rejected(tmp_path):
    path = tmp_path / "p.parquet"
    frame = pd.DataFrame(
        {
            "title": ["Samsung TV", float("nan")],
            "category_id": [5, 5],
            "category_path": ["TVs"] * 2,
        }
    )
    frame.to_parquet(path)

    products, rejected = split_rows(list(connector_for(path).iter_products()))

    assert products[0].category_id == "5"
    assert [r.reason for r in rejected] == ["empty title"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("   ", None),
        ("\t\n", None),
        ("Phone\x00case\x07 red", "Phone case red"),
        ("Mug ☕ with 🐈 print", "Mug ☕ with 🐈 print"),
        ("ＡＢＣ  wide", "ABC wide"),
    ],
)
def test_titles_are_cleaned_or_rejected(tmp_path, raw, expected):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"title": raw, "category_id": "1"}))

    (row,) = list(connector_for(path).iter_products())

    if expected is None:
        assert isinstance(row, RejectedRow)
    else:
        assert row.title == expected


def test_very_long_title_is_cut(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("title,category_id\n" + "x" * 10_000 + ",1\n")

    (row,) = list(connector_for(path).iter_products())

    assert len(row.title) == MAX_TITLE_CHARS


def test_invalid_utf8_bytes_become_replacement_characters(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"title,category_id\nCaf\xe9 cup,1\nTea pot,1\n")

    products, rejected = split_rows(list(connector_for(path).iter_products()))

    assert products[0].title == "Caf\ufffd cup"
    assert products[1].title == "Tea pot"
    assert rejected == []


def test_missing_category_is_rejected(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("title,category_id\nLamp,\n")

    (row,) = list(connector_for(path).iter_products())

    assert row.reason == "missing category"


def test_rows_without_product_id_get_stable_ids(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("title,category_id\nLamp,1\nlamp,1\nLamp,2\n")

    first = [row.external_id for row in connector_for(path).iter_products()]
    second = [row.external_id for row in connector_for(path).iter_products()]

    assert first == second
    assert first[0] == first[1]
    assert first[0] != first[2]


def test_missing_products_file_names_the_path(tmp_path):
    missing = tmp_path / "missing.csv"

    with pytest.raises(ConnectorError) as caught:
        list(connector_for(missing).iter_products())

    assert str(missing) in str(caught.value)


def test_products_file_without_title_column_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("name,category_id\nLamp,1\n")

    with pytest.raises(ConnectorError, match="no 'title' column"):
        list(connector_for(path).iter_products())


def test_unknown_suffix_asks_for_format(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("title,category_id\nLamp,1\n")

    with pytest.raises(ConnectorError, match="format"):
        list(connector_for(path).iter_products())

    rows = list(connector_for(path, format="csv").iter_products())
    assert rows[0].title == "Lamp"


def test_category_csv_is_read(tmp_path):
    categories = tmp_path / "c.csv"
    categories.write_text("category_id,parent_id,name\n1,,Home\n2,1,Kitchen\n")
    products = tmp_path / "p.csv"
    products.write_text("title,category_id\nPan,2\n")

    tree = create_connector(
        "file", {"products": str(products), "categories": str(categories)}
    ).read_category_tree()

    assert [(r.external_id, r.parent_id, r.name) for r in tree] == [
        ("1", None, "Home"),
        ("2", "1", "Kitchen"),
    ]


def test_category_csv_without_name_column_is_an_error(tmp_path):
    categories = tmp_path / "c.csv"
    categories.write_text("id,parent_id\n1,\n")

    connector = create_connector(
        "file", {"products": str(tmp_path / "p.csv"), "categories": str(categories)}
    )

    with pytest.raises(ConnectorError, match="name"):
        connector.read_category_tree()
