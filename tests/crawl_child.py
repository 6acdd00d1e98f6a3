"""Run one resumable crawl in its own process, as the kill and stop tests need.

Usage: python -m tests.crawl_child DATABASE_URL STORE_ID OPTIONS_JSON

Prints `started` once signals are handled, then the crawl's stop reason as JSON.
"""

import json
import sys

from mkt.crawl_cursors import (
    CrawlLimits,
    StopRequest,
    crawl_categories,
    stop_on_signals,
)
from mkt.database import create_database_engine
from mkt.stores.connectors import create_connector


def main() -> None:
    database_url, store_id, options_json = sys.argv[1:4]
    engine = create_database_engine(database_url)
    connector = create_connector("http", json.loads(options_json))
    limits = CrawlLimits(window_s=3600, revisit_after_s=3600, target=1000)
    stop = StopRequest()

    with stop_on_signals(stop):
        print("started", flush=True)
        result = crawl_categories(engine, store_id, connector, limits=limits, stop=stop)

    summary = {"stop_reason": result.stop_reason, "page_count": result.page_count}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
