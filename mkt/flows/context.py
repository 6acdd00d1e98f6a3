"""What every stage opens first: the settings and the product database."""

from sqlalchemy import Engine

from mkt.database import get_engine
from mkt.settings import Settings


def open_database(settings: Settings) -> Engine:
    """Return the product database engine of the settings, creating the data dir if needed."""
    if settings.database_url is None:
        settings.ensure_home()
    return get_engine(
        settings.resolved_database_url, busy_timeout_s=settings.sqlite_busy_timeout_s
    )
