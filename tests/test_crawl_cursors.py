"""Resumable crawl tests against the local marketplace API, on SQLite and PostgreSQL."""

import itertools
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter

import pytest
from sqlmodel import select

from mkt.catalog import IngestResult, register_store, sync_category_tree
from mkt.crawl_cursors import (
    CrawlLimits,
    StopRequest,
    crawl_categories,
    plan_crawl,
    save_page,
)
from mkt.database import CrawlCursor, Product, QuarantinedRow, open_session, utc_now
from mkt.errors import ConnectorError
from mkt.stores.config import parse_store_config
from mkt.stores.connectors import create_connector
from tests.conftest import REPO_ROOT
from tests.marketplace import Faults, MarketplaceServer, build_catalogue, http_options

STORE_ID = "shop-api"
LIMITS = CrawlLimits(window_s=3600, revisit_after_s=3600, target=1000)


def register_http_store(engine, server, **options):
    config = parse_store_config(
        {
            "store_id": STORE_ID,
            "marketplace": "test",
            "connector": {"kind": "http", "options": http_options(server, **options)},
        }
    )
    register_store(engine, config)
    connector = create_connector("http", config.connector.options)
    sync_category_tree(engine, STORE_ID, connector.read_category_tree())
    return connector, config.connector.options


def stored_products(engine):
    with open_session(engine) as session:
        rows = session.exec(
            select(Product.external_id, Product.title, Product.category_external_id)
        ).all()
    return [tuple(row) for row in rows]


def served_products(server):
    return {
        (item["id"], item["title"], category_id)
        for category_id, items in server.catalogue.items()
        for item in items
        if isinstance(item, dict)
    }


def cursors_of(engine):
    with open_session(engine) as session:
        return {
            row.category_external_id: row for row in session.exec(select(CrawlCursor))
        }


def fake_clock(step_s=1.0):
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_crawl_with_faults_stores_every_product_once(engine):
    faults = Faults(too_many_requests=0.15, server_error=0.15, malformed=0.15)
    with MarketplaceServer(build_catalogue(20), faults=faults) as server:
        connector, _ = register_http_store(engine, server)

        result = crawl_categories(
            engine, STORE_ID, connector, limits=LIMITS, stop=StopRequest()
        )

    products = stored_products(engine)
    assert result.stop_reason == "done"
    assert result.completed_category_count == 6
    assert set(products) == served_products(server)
    assert len(products) == len(set(products))
    assert all(row.cursor is None for row in cursors_of(engine).values())
    assert all(row.pass_completed_at for row in cursors_of(engine).values())


def test_window_end_checkpoints_and_next_crawl_resumes(engine):
    limits = CrawlLimits(window_s=5, revisit_after_s=3600, target=1000)
    with MarketplaceServer(build_catalogue(20)) as server:
        connector, _ = register_http_store(engine, server)

        first = crawl_categories(
            engine,
            STORE_ID,
            connector,
            limits=limits,
            stop=StopRequest(),
            clock=fake_clock(),
        )
        after_first = len(stored_products(engine))
        second = crawl_categories(
            engine, STORE_ID, connector, limits=LIMITS, stop=StopRequest()
        )

    assert first.stop_reason == "window"
    assert 0 < after_first < len(served_products(server))
    assert second.stop_reason == "done"
    assert second.ingest.unchanged == 0
    assert set(stored_products(engine)) == served_products(server)


def test_stop_request_keeps_committed_pages(engine):
    stop = StopRequest()
    page_calls = itertools.count()

    def clock():
        # Call 0 sets the deadline; call 3 is the check before the third page.
        if next(page_calls) == 3:
            stop.request("SIGTERM")
        return 0.0

    with MarketplaceServer(build_catalogue(30)) as server:
        connector, _ = register_http_store(engine, server)

        result = crawl_categories(
            engine, STORE_ID, connector, limits=LIMITS, stop=stop, clock=clock
        )

    assert result.stop_reason == "SIGTERM"
    assert result.page_count == 3
    assert len(stored_products(engine)) == 3 * 7
    (cursor,) = [row for row in cursors_of(engine).values() if row.cursor]
    assert cursor.cursor == "c21"


def test_finished_categories_wait_until_stale(engine):
    with MarketplaceServer(build_catalogue(3)) as server:
        connector, _ = register_http_store(engine, server)
        crawl_categories(engine, STORE_ID, connector, limits=LIMITS, stop=StopRequest())

        fresh = plan_crawl(engine, STORE_ID, LIMITS, utc_now())
        stale_limits = CrawlLimits(window_s=3600, revisit_after_s=0.001, target=1000)
        stale = plan_crawl(engine, STORE_ID, stale_limits, utc_now())

    assert fresh == []
    assert len(stale) == 6


def test_incomplete_categories_come_first(engine):
    catalogue = build_catalogue(3)
    catalogue["12"] = catalogue["12"][:1]
    with MarketplaceServer(catalogue) as server:
        connector, _ = register_http_store(engine, server)
        crawl_categories(engine, STORE_ID, connector, limits=LIMITS, stop=StopRequest())
        limits = CrawlLimits(window_s=3600, revisit_after_s=0.001, target=2)

        plan = plan_crawl(engine, STORE_ID, limits, utc_now())

    assert plan[0].external_id == "12"
    assert {item.external_id for item in plan[1:]} == {"11", "13", "21", "22", "23"}


def test_moved_cursor_means_second_crawl(engine):
    with MarketplaceServer(build_catalogue(20)) as server:
        connector, _ = register_http_store(engine, server)
        page = connector.read_product_page("11", None)
        save_page(engine, STORE_ID, "11", None, page, IngestResult())

        with pytest.raises(ConnectorError, match="another crawl of the store"):
            save_page(engine, STORE_ID, "11", None, page, IngestResult())


def test_rejected_rows_are_quarantined_with_their_page(engine):
    catalogue = build_catalogue(2)
    catalogue["11"].append({"id": "blank", "title": ""})
    with MarketplaceServer(catalogue) as server:
        connector, _ = register_http_store(engine, server)

        result = crawl_categories(
            engine, STORE_ID, connector, limits=LIMITS, stop=StopRequest()
        )

    with open_session(engine) as session:
        reasons = session.exec(select(QuarantinedRow.reason)).all()
    assert result.ingest.rejected == Counter({"empty title": 1})
    assert reasons == ["empty title"]


def start_child(database_url, options):
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crawl_child",
            database_url,
            STORE_ID,
            json.dumps(options),
        ],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "started"
    return child


def finish_child(child):
    output, _ = child.communicate(timeout=120)
    return output


def crawl_with_interruptions(tmp_path, server, send_signal, interruptions, seed):
    """Crawl in child processes, signalling each at a random point, then crawl to the end.

    Returns the engine, how many children the signal reached while they ran, and each
    child's exit code and output.
    """
    from mkt.database import create_database_engine

    database_url = f"sqlite:///{tmp_path / 'crawl.db'}"
    engine = create_database_engine(database_url)
    _, options = register_http_store(engine, server)
    rng = random.Random(seed)
    interrupted_count, outputs = 0, []
    for _ in range(2 * interruptions):
        if interrupted_count == interruptions:
            break
        child = start_child(database_url, options)
        try:
            child.wait(timeout=rng.uniform(0.05, 0.3))
        except subprocess.TimeoutExpired:
            send_signal(child)
            interrupted_count += 1
        outputs.append((child.wait(timeout=120), finish_child(child)))
    child = start_child(database_url, options)
    outputs.append((child.wait(timeout=300), finish_child(child)))
    return engine, interrupted_count, outputs


SLOW_FAULTS = Faults(
    too_many_requests=0.1, server_error=0.1, malformed=0.1, delay_s=0.02
)


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path):
    with MarketplaceServer(build_catalogue(60), faults=SLOW_FAULTS) as server:
        engine, killed_count, outputs = crawl_with_interruptions(
            tmp_path, server, lambda child: child.kill(), interruptions=20, seed=11
        )

    products = stored_products(engine)
    assert killed_count == 20
    assert outputs[-1][0] == 0
    assert set(products) == served_products(server)
    assert len(products) == len(set(products))


def test_sigterm_stops_cleanly_and_resumes(tmp_path):
    with MarketplaceServer(build_catalogue(60), faults=SLOW_FAULTS) as server:
        engine, _, outputs = crawl_with_interruptions(
            tmp_path,
            server,
            lambda child: child.send_signal(signal.SIGTERM),
            interruptions=6,
            seed=5,
        )

    reasons = [
        json.loads(output.splitlines()[-1])["stop_reason"] for _, output in outputs
    ]
    products = stored_products(engine)
    assert [code for code, _ in outputs] == [0] * len(outputs)
    assert reasons.count("SIGTERM") == 6
    assert reasons[-1] == "done"
    assert set(products) == served_products(server)
    assert len(products) == len(set(products))
