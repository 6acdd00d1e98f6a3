"""Store health alerts: what the monitor flow raised, and when each was resolved."""

import logging
from datetime import datetime

from sqlalchemy import Column, Engine, Text
from sqlmodel import Field, SQLModel, col, select

from mkt.database import open_session

logger = logging.getLogger(__name__)

WARNING = "warning"
CRITICAL = "critical"


class Alert(SQLModel, table=True):
    """One condition the monitor found on a store; open until `resolved_at` is set."""

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(index=True, max_length=63)
    kind: str = Field(
        index=True,
        description=(
            "confidence_drop, abstain_rise, centroid_shift, category_tree_changed, "
            "below_target or stale_crawl"
        ),
    )
    severity: str = Field(description="warning or critical")
    message: str = Field(sa_column=Column(Text, nullable=False))
    value: float | None = Field(default=None, description="The measured value.")
    threshold: float | None = Field(
        default=None, description="The configured limit the value crossed."
    )
    raised_at: datetime
    resolved_at: datetime | None = None


def create_alert_table(engine: Engine) -> None:
    """Create the alert table if the database lacks it."""
    SQLModel.metadata.create_all(engine, tables=[Alert.__table__])


def load_open_alerts(engine: Engine, store_id: str | None = None) -> list[Alert]:
    """Return the unresolved alerts of one store, or of every store, oldest first."""
    create_alert_table(engine)
    query = select(Alert).where(col(Alert.resolved_at).is_(None))
    if store_id is not None:
        query = query.where(Alert.store_id == store_id)
    with open_session(engine) as session:
        return list(session.exec(query.order_by(Alert.id)).all())
