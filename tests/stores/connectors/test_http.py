"""Tests of the http connector against a local marketplace API with injected faults."""

import logging

import pytest

from mkt.errors import ConfigError, ConnectorError
from mkt.stores.config import parse_store_config
from mkt.stores.connectors import (
    ProductRecord,
    RejectedRow,
    connector_classes,
    create_connector,
)
from mkt.stores.connectors.http import HttpConnector
from tests.marketplace import Faults, MarketplaceServer, build_catalogue, http_options


def read_all_pages(connector, category_id):
    rows, cursor = [], None
    while True:
        page = connector.read_product_page(category_id, cursor)
        rows.extend(page.rows)
        cursor = page.next_cursor
        if cursor is None:
            return rows


def expected_products(server, category_id):
    return {
        (item["id"], item["title"], category_id)
        for item in server.catalogue[category_id]
    }


def as_tuples(rows):
    return {(row.external_id, row.title, row.category_id) for row in rows}


def test_flat_tree_is_read_with_parents():
    with MarketplaceServer(build_catalogue(3)) as server:
        connector = create_connector("http", http_options(server))

        tree = {record.external_id: record for record in connector.read_category_tree()}

    assert len(tree) == 8
    assert tree["11"].name == "Phones"
    assert tree["11"].parent_id == "1"
    assert tree["1"].parent_id is None


def test_nested_tree_is_flattened():
    with MarketplaceServer(build_catalogue(3)) as server:
        options = http_options(
            server, categories_path="/tree", tree_shape="nested", categories_key="root"
        )
        connector = create_connector("http", options)

        tree = {record.external_id: record for record in connector.read_category_tree()}

    assert len(tree) == 8
    assert tree["23"].parent_id == "2"
    assert tree["2"].parent_id is None


@pytest.mark.parametrize("pagination", ["cursor", "page", "offset"])
def test_every_pagination_reads_each_product_once(pagination):
    param = {"cursor": "cursor", "page": "page", "offset": "offset"}[pagination]
    with MarketplaceServer(build_catalogue(15)) as server:
        options = http_options(server, pagination=pagination, cursor_param=param)
        connector = create_connector("http", options)

        rows = read_all_pages(connector, "12")

    assert len(rows) == 15
    assert as_tuples(rows) == expected_products(server, "12")


def test_page_pagination_ends_on_exact_multiple_with_empty_page():
    with MarketplaceServer(build_catalogue(14)) as server:
        options = http_options(server, pagination="page", cursor_param="page")
        connector = create_connector("http", options)

        rows = read_all_pages(connector, "21")

    assert len(rows) == 14


def test_faults_are_retried_until_every_product_arrives():
    faults = Faults(too_many_requests=0.2, server_error=0.2, malformed=0.2, slow=0.1)
    with MarketplaceServer(build_catalogue(30), faults=faults) as server:
        connector = create_connector("http", http_options(server))

        rows = read_all_pages(connector, "13")

    assert as_tuples(rows) == expected_products(server, "13")
    for kind in ("429", "500", "malformed", "slow"):
        assert server.responses.get(kind, 0) > 0, kind


def test_slow_response_times_out_and_is_retried():
    faults = Faults(slow=0.5, slow_s=0.5)
    with MarketplaceServer(build_catalogue(10), faults=faults) as server:
        connector = create_connector("http", http_options(server, timeout_s=0.2))

        rows = read_all_pages(connector, "11")

    assert as_tuples(rows) == expected_products(server, "11")
    assert server.responses.get("slow", 0) > 0


def test_retries_used_up_raise_connector_error():
    faults = Faults(server_error=1.0, max_consecutive_faults=100)
    with MarketplaceServer(build_catalogue(3), faults=faults) as server:
        connector = create_connector("http", http_options(server, max_retries=2))

        with pytest.raises(ConnectorError, match="failed 3 times, last with HTTP 500"):
            connector.read_product_page("11", None)

    assert server.responses["500"] == 3


def test_unknown_path_fails_without_retrying():
    with MarketplaceServer(build_catalogue(3)) as server:
        options = http_options(server, products_path="/nowhere/{category_id}")
        connector = create_connector("http", options)

        with pytest.raises(ConnectorError, match="HTTP 404"):
            connector.read_product_page("11", None)

    assert server.responses["404"] == 1


def test_token_is_sent_and_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    faults = Faults(server_error=0.5)
    with MarketplaceServer(
        build_catalogue(5), faults=faults, token="s3cr3t-token"
    ) as server:
        options = http_options(server, auth_credential="api_token")
        connector = create_connector("http", options, {"api_token": "s3cr3t-token"})

        rows = read_all_pages(connector, "22")

    assert len(rows) == 5
    assert "401" not in server.responses
    assert "s3cr3t-token" not in caplog.text


def test_wrong_token_names_the_credential_fix():
    with MarketplaceServer(build_catalogue(3), token="right") as server:
        options = http_options(server, auth_credential="api_token")
        connector = create_connector("http", options, {"api_token": "wrong"})

        with pytest.raises(
            ConnectorError, match="HTTP 401. Check the store's credential"
        ):
            connector.read_category_tree()


def test_missing_credential_names_it():
    options = {"base_url": "http://127.0.0.1:9", "auth_credential": "api_token"}

    with pytest.raises(ConfigError, match="credential 'api_token'"):
        create_connector("http", options, {})


def test_untitled_items_are_rejected_with_reason():
    catalogue = build_catalogue(2)
    catalogue["11"].append({"id": "blank", "title": "   "})
    catalogue["11"].append("not an object")
    with MarketplaceServer(catalogue) as server:
        connector = create_connector("http", http_options(server))

        rows = read_all_pages(connector, "11")

    rejected = [row for row in rows if isinstance(row, RejectedRow)]
    assert sorted(row.reason for row in rejected) == ["empty title", "not an object"]
    assert sum(isinstance(row, ProductRecord) for row in rows) == 2


def test_next_link_to_another_host_is_not_followed():
    with MarketplaceServer(build_catalogue(3)) as server:
        connector = create_connector("http", http_options(server))

        with pytest.raises(ConnectorError, match="leaves the API host"):
            connector.read_product_page("11", "http://elsewhere.example/page2")


def test_http_and_file_are_registered_kinds():
    assert connector_classes()["http"] is HttpConnector
    assert "file" in connector_classes()


def test_store_config_validates_http_options():
    document = {
        "store_id": "shop-api",
        "marketplace": "test",
        "connector": {"kind": "http", "options": {"base_url": "ftp://x", "pages": 3}},
    }

    with pytest.raises(ConfigError) as error:
        parse_store_config(document)

    assert "base_url" in str(error.value)
    assert "pages" in str(error.value)


def test_unknown_connector_kind_lists_known_ones():
    with pytest.raises(
        ConfigError, match="Unknown connector kind 'ftp' \\(known: file, http"
    ):
        create_connector("ftp", {})


def test_plugin_connector_loads_from_entry_point(tmp_path, monkeypatch):
    package = tmp_path / "mkt_echo.py"
    package.write_text(
        "from pydantic import BaseModel\n"
        "class EchoOptions(BaseModel):\n"
        "    greeting: str\n"
        "class EchoConnector:\n"
        "    options_model = EchoOptions\n"
        "    def __init__(self, options, secrets):\n"
        "        self.options = options\n"
    )
    dist_info = tmp_path / "mkt_echo-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Name: mkt-echo\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[mkt.connectors]\necho = mkt_echo:EchoConnector\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    connector_classes.cache_clear()

    try:
        connector = create_connector("echo", {"greeting": "hi"})
    finally:
        connector_classes.cache_clear()

    assert type(connector).__name__ == "EchoConnector"
    assert connector.options.greeting == "hi"


def test_redirects_endpoint_is_read():
    with MarketplaceServer(build_catalogue(1), redirects={"14": "11"}) as server:
        options = http_options(server, redirects_path="/redirects")
        connector = create_connector("http", options)

        redirects = connector.read_category_redirects()

    assert redirects == {"14": "11"}


def test_redirects_without_endpoint_are_empty():
    options = {"base_url": "http://127.0.0.1:9"}

    assert create_connector("http", options).read_category_redirects() == {}


def test_categories_file_replaces_tree_endpoint(tmp_path):
    tree_file = tmp_path / "tree.csv"
    tree_file.write_text("id,parent_id,name\n1,,Root\n11,1,Phones\n")
    options = {"base_url": "http://127.0.0.1:9", "categories_file": str(tree_file)}

    tree = create_connector("http", options).read_category_tree()

    assert [(record.external_id, record.parent_id) for record in tree] == [
        ("1", None),
        ("11", "1"),
    ]
