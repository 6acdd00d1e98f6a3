"""Crawl flow tests on messy files, on SQLite and on PostgreSQL."""

import pytest
from sqlmodel import select

from mkt.catalog import register_store
from mkt.database import Category, Product, QuarantinedRow, open_session
from mkt.errors import CategoryTreeError
from mkt.flows.context import open_database
from mkt.settings import Settings
from mkt.stores.config import load_store_config
from tests.conftest import POSTGRES_URL, connect_postgres, write_store_config

MESSY_ROWS = (
    b"product_id,title,category_id,category_path\n"
    b"1,Apple iPhone 8 64GB,10,Electronics > Phones\n"
    b"2,   ,10,Electronics > Phones\n"
    b"3,,10,Electronics > Phones\n"
    b"4,Samsung\x07 Galaxy\x00 S9,10,Electronics > Phones\n"
    b"5,Sch\xf6ne Lampe \xf0\x9f\x92\xa1,20,Home > Lamps\n"
    b"6,Garden hose,,\n"
    b"1,Apple iPhone 8 64GB,10,Electronics > Phones\n"
    b"7," + b"x" * 10_000 + b",20,Home > Lamps\n"
)


def register(tmp_path, products, **extra):
    config = load_store_config(write_store_config(tmp_path, products, **extra))
    register_store(open_database(Settings()), config)
    return config.store_id


def test_crawl_quarantines_bad_rows_and_counts_them(
    mkt_home, tmp_path, prefect_harness
):
    from mkt.flows.crawl import crawl_store

    products = tmp_path / "messy.csv"
    products.write_bytes(MESSY_ROWS)
    store_id = register(tmp_path, products)

    summary = crawl_store(store_id)

    assert summary["products"]["inserted"] == 4
    assert summary["products"]["duplicates"] == 1
    assert summary["products"]["rejected"] == {"empty title": 2, "missing category": 1}
    with open_session(open_database(Settings())) as session:
        titles = set(session.exec(select(Product.title)))
        quarantined = session.exec(select(QuarantinedRow)).all()
    assert "Samsung Galaxy S9" in titles
    assert "Sch\ufffdne Lampe 💡" in titles
    assert len(quarantined) == 3


def test_crawl_rejects_tree_with_cycle_and_writes_nothing(
    mkt_home, tmp_path, prefect_harness
):
    from mkt.flows.crawl import crawl_store

    categories = tmp_path / "tree.csv"
    categories.write_text("id,parent_id,name\n1,3,A\n2,1,B\n3,2,C\n")
    products = tmp_path / "p.csv"
    products.write_text("title,category_id\nLamp,2\n")
    store_id = register(tmp_path, products)
    config = load_store_config(tmp_path / f"{store_id}.yaml")
    config.connector.options["categories"] = str(categories)
    register_store(open_database(Settings()), config)

    with pytest.raises(CategoryTreeError, match="cycle"):
        crawl_store(store_id)

    with open_session(open_database(Settings())) as session:
        assert session.exec(select(Category)).all() == []


@pytest.mark.slow
def test_crawl_and_embed_on_postgres(mkt_home, tmp_path, prefect_harness, monkeypatch):
    from sqlmodel import SQLModel

    from mkt.flows.crawl import crawl_store
    from mkt.flows.embed import embed_store
    from tests.conftest import write_sample_products

    engine = connect_postgres()
    SQLModel.metadata.drop_all(engine)
    engine.dispose()
    monkeypatch.setenv("MKT_DATABASE_URL", POSTGRES_URL)
    store_id = register(tmp_path, write_sample_products(tmp_path, per_category=10))

    first = crawl_store(store_id)
    second = crawl_store(store_id)
    embedded = embed_store(store_id)

    assert first["products"]["inserted"] == 40
    assert second["products"]["unchanged"] == 40
    assert embedded["name_count"] == 40
    assert open_database(Settings()).dialect.name == "postgresql"


def register_http_store(server, store_id="shop-api", **extra):
    from mkt.stores.config import parse_store_config
    from tests.marketplace import http_options

    config = parse_store_config(
        {
            "store_id": store_id,
            "marketplace": "test",
            "connector": {"kind": "http", "options": http_options(server)},
            **extra,
        }
    )
    register_store(open_database(Settings()), config)
    return store_id


def stored_product_keys():
    with open_session(open_database(Settings())) as session:
        rows = session.exec(
            select(Product.external_id, Product.category_external_id)
        ).all()
    return [tuple(row) for row in rows]


def served_product_keys(server):
    return {
        (item["id"], category_id)
        for category_id, items in server.catalogue.items()
        for item in items
    }


def test_crawl_flow_pages_through_http_store(mkt_home, prefect_harness):
    from mkt.flows.crawl import crawl_store
    from tests.marketplace import Faults, MarketplaceServer, build_catalogue

    faults = Faults(too_many_requests=0.2, server_error=0.1)
    with MarketplaceServer(build_catalogue(10), faults=faults) as server:
        store_id = register_http_store(server, target_products_per_category=10)

        first = crawl_store(store_id)
        second = crawl_store(store_id)

    assert first["tree"]["added"] == 8
    assert first["products"]["inserted"] == 60
    assert first["products"]["stop_reason"] == "done"
    assert first["coverage"]["complete_count"] == 6
    assert second["products"]["page_count"] == 0
    assert set(stored_product_keys()) == served_product_keys(server)


def test_prefect_cancellation_checkpoints_and_next_crawl_resumes(
    mkt_home, prefect_harness
):
    import os
    import subprocess
    import sys
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    from mkt.database import CrawlCursor
    from mkt.flows.crawl import crawl_store
    from tests.conftest import REPO_ROOT
    from tests.marketplace import Faults, MarketplaceServer, build_catalogue

    with MarketplaceServer(build_catalogue(60), faults=Faults(delay_s=0.1)) as server:
        store_id = register_http_store(server, store_id="shop-cancel")
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from mkt.flows.crawl import crawl_store; crawl_store({store_id!r})",
            ],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "PYTHONPATH": str(REPO_ROOT),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        engine = open_database(Settings())
        for _ in range(600):
            with open_session(engine) as session:
                if session.exec(select(CrawlCursor)).first() is not None:
                    break
            time.sleep(0.1)
        with get_client(sync_client=True) as client:
            name_filter = FlowRunFilter(
                name=FlowRunFilterName(any_=[f"crawl-{store_id}"])
            )
            (flow_run,) = client.read_flow_runs(flow_run_filter=name_filter)
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        output, _ = child.communicate(timeout=120)
        after_cancel = stored_product_keys()

        resumed = crawl_store(store_id)

    assert "stopped: cancelled" in output
    assert 0 < len(after_cancel) < len(served_product_keys(server))
    assert resumed["products"]["stop_reason"] == "done"
    assert resumed["products"]["inserted"] == 360 - len(after_cancel)
    assert set(stored_product_keys()) == served_product_keys(server)
