"""Measure product ingest with deduplication and archive throughput on SQLite and PostgreSQL.

Each database gets a fresh store with a few categories. Products arrive in pages, as
the resumable crawl commits them: each page's products and the category's cursor in
one transaction (`mkt.crawl_cursors.save_page`). Three passes are timed:

- new: every product is new;
- repeat: the same pages again, so every product is a duplicate that deduplication
  finds and leaves unchanged;
- mixed: pages whose products are half new, half seen before.

Then the older half of the products is archived to the cold tier and the archive
throughput is timed. PostgreSQL runs in a database of its own, created and dropped by
the script. Without superuser rights both tiers use the `pg_default` tablespace, so
the archive figure measures the move, not a second disk. The report goes to stdout as
markdown, logs to stderr. From the repository root:

    .venv/bin/python -m bench.ingest --products 20000 --output /tmp/ingest.md
"""

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

logger = logging.getLogger(__name__)

ADMIN_URL = "postgresql+psycopg://mkt:mkt@127.0.0.1:5432/mkt_test"
STORE_ID = "bench-ingest"
CATEGORY_COUNT = 20


def build_pages(first: int, count: int, page_size: int) -> list[tuple[str, list]]:
    """Return pages of products `first` to `first + count`, spread over the categories."""
    from mkt.stores.connectors import ProductRecord

    pages = []
    for start in range(first, first + count, page_size):
        numbers = range(start, min(start + page_size, first + count))
        category_id = f"c{(start // page_size) % CATEGORY_COUNT}"
        rows = [
            ProductRecord(f"p{n}", f"Product {n} of {category_id}", category_id)
            for n in numbers
        ]
        pages.append((category_id, rows))
    return pages


def prepare_store(engine) -> None:
    """Register the benchmark store and its category tree."""
    from mkt.catalog import register_store, sync_category_tree
    from mkt.stores.config import parse_store_config
    from mkt.stores.connectors import CategoryRecord

    config = parse_store_config(
        {
            "store_id": STORE_ID,
            "marketplace": "bench",
            "connector": {"kind": "file", "options": {"products": "unused.csv"}},
        }
    )
    register_store(engine, config)
    tree = [CategoryRecord(f"c{i}", f"Category {i}") for i in range(CATEGORY_COUNT)]
    sync_category_tree(engine, STORE_ID, tree)


def ingest_pass(engine, pages: list[tuple[str, list]]) -> float:
    """Commit every page with a fresh cursor per category; return products per second."""
    from mkt.catalog import IngestResult
    from mkt.crawl_cursors import save_page
    from mkt.database import CrawlCursor
    from mkt.stores.connectors import ProductPage

    with engine.begin() as connection:
        connection.execute(CrawlCursor.__table__.delete())
    cursors: dict[str, str | None] = {}
    result = IngestResult()
    started = time.perf_counter()
    for position, (category_id, rows) in enumerate(pages):
        cursor = cursors.get(category_id)
        next_cursor = f"page-{position}"
        save_page(
            engine,
            STORE_ID,
            category_id,
            cursor,
            ProductPage(rows, next_cursor),
            result,
        )
        cursors[category_id] = next_cursor
    elapsed_s = time.perf_counter() - started
    product_count = sum(len(rows) for _, rows in pages)
    logger.info(
        "%d products in %.1f s: %d inserted, %d unchanged",
        product_count,
        elapsed_s,
        result.inserted,
        result.unchanged,
    )
    return product_count / elapsed_s


def archive_pass(engine, settings, product_count: int) -> float:
    """Age the older half of the products, archive them and return products per second."""
    from mkt.database import utc_now
    from mkt.tiers import archive_products

    old = (utc_now() - timedelta(days=400)).replace(tzinfo=None)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE product SET last_seen_at = :old WHERE id <= :half"),
            {"old": old, "half": product_count // 2},
        )
    started = time.perf_counter()
    result = archive_products(
        engine, STORE_ID, older_than=timedelta(days=30), settings=settings
    )
    elapsed_s = time.perf_counter() - started
    logger.info("%d products archived in %.1f s", result.product_count, elapsed_s)
    return result.product_count / elapsed_s


def measure(engine, settings, args: argparse.Namespace) -> dict[str, float]:
    """Run the three ingest passes and the archive on one database."""
    prepare_store(engine)
    half = args.products // 2
    pages = build_pages(0, args.products, args.page_size)
    mixed = build_pages(args.products - half, 2 * half, args.page_size)
    figures = {
        "new": ingest_pass(engine, pages),
        "repeat": ingest_pass(engine, pages),
        "mixed": ingest_pass(engine, mixed),
    }
    figures["archive"] = archive_pass(engine, settings, args.products + half)
    return figures


def measure_sqlite(args: argparse.Namespace) -> dict[str, float]:
    """Measure on a SQLite file with a cold file attached, both in a temporary folder."""
    from mkt.database import create_database_engine
    from mkt.tiers import TierSettings

    folder = Path(tempfile.mkdtemp(prefix="mkt-bench-ingest-"))
    engine = create_database_engine(f"sqlite:///{folder / 'mkt.db'}")
    settings = TierSettings(cold_path=folder / "cold" / "mkt-cold.db")
    try:
        return measure(engine, settings, args)
    finally:
        engine.dispose()


def measure_postgres(args: argparse.Namespace) -> dict[str, float]:
    """Measure in a new PostgreSQL database, dropped afterwards."""
    from mkt.database import create_database_engine
    from mkt.tiers import TierSettings

    name = f"mkt_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
    engine = create_database_engine(url)
    settings = TierSettings(
        hot_tablespace=args.hot_tablespace, cold_tablespace=args.cold_tablespace
    )
    try:
        return measure(engine, settings, args)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


def render_report(args: argparse.Namespace, results: dict[str, dict]) -> str:
    """Lay the figures out as a markdown table with the machine they ran on."""
    load_1, load_5, load_15 = os.getloadavg()
    lines = [
        f"Products: {args.products:,} in pages of {args.page_size}, "
        f"{CATEGORY_COUNT} categories",
        "",
        f"- CPU cores available: {len(os.sched_getaffinity(0))}; "
        f"Python {platform.python_version()}",
        f"- Load average at the end (1, 5, 15 min): {load_1:.2f}, {load_5:.2f}, "
        f"{load_15:.2f}",
        "",
        "| Database | New products/s | Repeated products/s | Half-new products/s "
        "| Archived products/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for database, figures in results.items():
        lines.append(
            f"| {database} | {figures['new']:,.0f} | {figures['repeat']:,.0f} | "
            f"{figures['mixed']:,.0f} | {figures['archive']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--products", type=int, default=20_000, help="Products per pass."
    )
    parser.add_argument("--page-size", type=int, default=100, help="Products per page.")
    parser.add_argument(
        "--databases",
        default="sqlite,postgres",
        help="Comma-separated: sqlite, postgres.",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MKT_TEST_POSTGRES_URL", ADMIN_URL),
        help="URL of a database whose role may create databases.",
    )
    parser.add_argument("--hot-tablespace", default="pg_default")
    parser.add_argument("--cold-tablespace", default="pg_default")
    parser.add_argument("--output", type=Path, help="Also write the report here.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its report."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    args = parse_arguments(argv)
    measurers = {"SQLite": measure_sqlite, "PostgreSQL 15": measure_postgres}
    database_names = {"sqlite": "SQLite", "postgres": "PostgreSQL 15"}
    results = {}
    for key in args.databases.split(","):
        database = database_names[key.strip()]
        logger.info("Measuring %s", database)
        results[database] = measurers[database](args)
    report = render_report(args, results)
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
