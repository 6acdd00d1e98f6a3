"""A store's catalog in the database: its registration, category tree and products."""

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, delete, func, update
from sqlmodel import Session, col, select

from mkt.database import (
    Category,
    CategoryChange,
    CrawlCursor,
    Product,
    QuarantinedRow,
    Store,
    open_session,
    utc_now,
)
from mkt.errors import CategoryTreeError, StoreNotFound
from mkt.stores.config import StoreConfig
from mkt.stores.connectors import CategoryRecord, ProductRecord, RejectedRow
from mkt.tiers import tiered_products

logger = logging.getLogger(__name__)

PATH_SEPARATOR = " > "
WRITE_BATCH_ROWS = 1000


def register_store(engine: Engine, config: StoreConfig) -> bool:
    """Insert or update a store's config; return True if the store is new."""
    config_json = config.model_dump_json()
    with open_session(engine) as session:
        store = session.get(Store, config.store_id)
        is_new = store is None
        if is_new:
            store = Store(
                store_id=config.store_id,
                marketplace=config.marketplace,
                config_json=config_json,
            )
        elif store.config_json != config_json:
            store.marketplace = config.marketplace
            store.config_json = config_json
            store.updated_at = utc_now()
        session.add(store)
        session.commit()
    return is_new


def load_store(engine: Engine, store_id: str) -> StoreConfig:
    """Return the registered config of a store.

    Raises:
        StoreNotFound: naming the known stores and how to register one.
    """
    with open_session(engine) as session:
        store = session.get(Store, store_id)
        if store is None:
            known = session.exec(select(Store.store_id).order_by(Store.store_id)).all()
    if store is None:
        known_text = ", ".join(known) if known else "none registered"
        raise StoreNotFound(
            f"Store {store_id!r} not found (known: {known_text}). "
            f"Register it: mkt add-store {store_id} --config FILE"
        )
    return StoreConfig.model_validate_json(store.config_json)


def list_store_rows(engine: Engine) -> list[Store]:
    """Return every registered store, ordered by id."""
    with open_session(engine) as session:
        return list(session.exec(select(Store).order_by(Store.store_id)).all())


@dataclass
class TreeSyncResult:
    """Counts of what a category tree sync changed."""

    category_count: int = 0
    added: int = 0
    removed: int = 0
    renamed: int = 0
    moved: int = 0
    redirected: int = 0


@dataclass(frozen=True)
class ResolvedCategory:
    """A category with its path and depth computed from the tree."""

    record: CategoryRecord
    path: str
    depth: int
    is_leaf: bool


def resolve_category_tree(records: Iterable[CategoryRecord]) -> list[ResolvedCategory]:
    """Check a category tree and compute each category's path, depth and leaf flag.

    Raises:
        CategoryTreeError: on conflicting duplicate ids, missing parents or cycles.
    """
    by_id: dict[str, CategoryRecord] = {}
    for record in records:
        known = by_id.get(record.external_id)
        if known is not None and known != record:
            raise CategoryTreeError(
                f"Category id {record.external_id!r} appears twice with different data "
                f"({known.name!r} under {known.parent_id!r}, {record.name!r} under "
                f"{record.parent_id!r}). Give each category one row."
            )
        by_id[record.external_id] = record

    missing = sorted(
        {
            r.parent_id
            for r in by_id.values()
            if r.parent_id and r.parent_id not in by_id
        }
    )
    if missing:
        orphans = [r.external_id for r in by_id.values() if r.parent_id in set(missing)]
        raise CategoryTreeError(
            f"Category tree has {len(missing)} missing parent id(s): {', '.join(missing[:5])} "
            f"(referenced by {', '.join(orphans[:5])}). Add the parents or clear parent_id."
        )

    parent_ids = {r.parent_id for r in by_id.values() if r.parent_id}
    paths: dict[str, list[str]] = {}
    for external_id in by_id:
        paths[external_id] = category_path_names(external_id, by_id, paths)
    return [
        ResolvedCategory(
            record=record,
            path=PATH_SEPARATOR.join(paths[record.external_id]),
            depth=len(paths[record.external_id]),
            is_leaf=record.external_id not in parent_ids,
        )
        for record in by_id.values()
    ]


def category_path_names(
    external_id: str, by_id: dict[str, CategoryRecord], known: dict[str, list[str]]
) -> list[str]:
    """Return the names from the root down to a category, reusing paths already computed.

    Raises:
        CategoryTreeError: if following parents returns to a category already visited.
    """
    chain: list[str] = []
    seen: set[str] = set()
    current: str | None = external_id
    while current is not None and current not in known:
        if current in seen:
            cycle = " -> ".join([*chain[chain.index(current) :], current])
            raise CategoryTreeError(
                f"Category tree has a cycle: {cycle}. Fix the parent_id of one of these."
            )
        seen.add(current)
        chain.append(current)
        current = by_id[current].parent_id
    names = list(known[current]) if current is not None else []
    for category_id in reversed(chain):
        names = [*names, by_id[category_id].name]
        known[category_id] = names
    return known[external_id]


def sync_category_tree(
    engine: Engine,
    store_id: str,
    records: Iterable[CategoryRecord],
    redirects: Mapping[str, str] | None = None,
) -> TreeSyncResult:
    """Make the stored tree match the source's, logging added, removed, renamed and moved ones.

    A removed category that `redirects` maps to a category of the new tree has its
    products moved there and a `redirected` change logged; one without is retired.

    Raises:
        CategoryTreeError: if the source tree is inconsistent; nothing is written then.
    """
    resolved = resolve_category_tree(records)
    active_ids = {item.record.external_id for item in resolved}
    result = TreeSyncResult(category_count=len(resolved))
    now = utc_now()
    with open_session(engine) as session:
        existing = {
            row.external_id: row
            for row in session.exec(
                select(Category).where(Category.store_id == store_id)
            )
        }
        changes: list[CategoryChange] = []
        for item in resolved:
            row = existing.pop(item.record.external_id, None)
            changes.extend(apply_category(session, store_id, item, row, now))
        for row in existing.values():
            if row.removed_at is None:
                row.removed_at = now
                session.add(row)
                changes.append(
                    change_of(store_id, row.external_id, "removed", row.path, None, now)
                )
                target = (redirects or {}).get(row.external_id)
                if target in active_ids:
                    changes.append(
                        redirect_products(session, store_id, row, target, now)
                    )
        session.add_all(changes)
        session.commit()

    counts = Counter(change.change for change in changes)
    result.added, result.removed = counts["added"], counts["removed"]
    result.renamed, result.moved = counts["renamed"], counts["moved"]
    result.redirected = counts["redirected"]
    return result


def redirect_products(
    session: Session, store_id: str, row: Category, target_id: str, now
) -> CategoryChange:
    """Move the products of a removed category to its redirect target; return the change."""
    # NOTE: archived products in the cold tier keep the removed category's id, so
    # training snapshots, which read only active categories, leave them out.
    session.exec(
        update(Product)
        .where(
            Product.store_id == store_id,
            Product.category_external_id == row.external_id,
        )
        .values(category_external_id=target_id)
    )
    return change_of(
        store_id, row.external_id, "redirected", row.external_id, target_id, now
    )


def apply_category(
    session, store_id: str, item: ResolvedCategory, row: Category | None, now
) -> list[CategoryChange]:
    """Insert or update one category row; return the changes it makes."""
    record = item.record
    if row is None:
        session.add(
            Category(
                store_id=store_id,
                external_id=record.external_id,
                parent_external_id=record.parent_id,
                name=record.name,
                path=item.path,
                depth=item.depth,
                is_leaf=item.is_leaf,
                first_seen_at=now,
                last_seen_at=now,
            )
        )
        return [change_of(store_id, record.external_id, "added", None, item.path, now)]

    changes = []
    if row.removed_at is not None:
        changes.append(
            change_of(store_id, row.external_id, "added", None, item.path, now)
        )
        row.removed_at = None
    if row.name != record.name:
        changes.append(
            change_of(store_id, row.external_id, "renamed", row.name, record.name, now)
        )
    if row.parent_external_id != record.parent_id:
        changes.append(
            change_of(
                store_id,
                row.external_id,
                "moved",
                row.parent_external_id,
                record.parent_id,
                now,
            )
        )
    row.name, row.parent_external_id = record.name, record.parent_id
    row.path, row.depth, row.is_leaf = item.path, item.depth, item.is_leaf
    row.last_seen_at = now
    session.add(row)
    return changes


def change_of(
    store_id, external_id, change, old_value, new_value, now
) -> CategoryChange:
    """Build one change-log row."""
    return CategoryChange(
        store_id=store_id,
        external_id=external_id,
        change=change,
        old_value=old_value,
        new_value=new_value,
        changed_at=now,
    )


@dataclass
class IngestResult:
    """Counts of what a product ingest did."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def rejected_count(self) -> int:
        """Rows quarantined, for any reason."""
        return sum(self.rejected.values())


def ingest_products(
    engine: Engine,
    store_id: str,
    rows: Iterable[ProductRecord | RejectedRow],
    source: str,
) -> IngestResult:
    """Upsert a source's products; quarantine unusable rows and those of unknown categories.

    Loading the same rows twice changes no product: the second run counts them unchanged.
    The quarantine of each source is replaced on every ingest, so it lists current problems.
    """
    result = IngestResult()
    known_categories = active_category_ids(engine, store_id)
    seen_ids: set[str] = set()
    rejected: list[RejectedRow] = []
    for batch in batched(rows, WRITE_BATCH_ROWS):
        products: list[ProductRecord] = []
        for row in batch:
            if isinstance(row, RejectedRow):
                rejected.append(row)
            elif row.category_id not in known_categories:
                raw = f"{row.category_id}: {row.title[:200]}"
                rejected.append(RejectedRow(source, 0, "unknown category id", raw))
            elif row.external_id in seen_ids:
                result.duplicates += 1
            else:
                seen_ids.add(row.external_id)
                products.append(row)
        write_product_batch(engine, store_id, products, result)

    result.rejected.update(row.reason for row in rejected)
    replace_quarantine(engine, store_id, rejected)
    return result


def batched(rows: Iterable, size: int) -> Iterator[list]:
    """Yield lists of at most `size` items."""
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def active_category_ids(engine: Engine, store_id: str) -> set[str]:
    """Return the external ids of a store's categories that are not removed."""
    with open_session(engine) as session:
        query = select(Category.external_id).where(
            Category.store_id == store_id, col(Category.removed_at).is_(None)
        )
        return set(session.exec(query).all())


def write_product_batch(
    engine: Engine, store_id: str, products: list[ProductRecord], result: IngestResult
) -> None:
    """Insert new products, update changed ones and mark the rest as seen, in one transaction."""
    if not products:
        return
    with open_session(engine) as session:
        stage_product_batch(session, store_id, products, result)
        session.commit()


def stage_product_batch(
    session: Session,
    store_id: str,
    products: list[ProductRecord],
    result: IngestResult,
) -> None:
    """Add the inserts and updates of a batch to a session; the caller commits them.

    The crawl commits a page's products and its cursor together this way.
    """
    if not products:
        return
    now = utc_now()
    existing = {
        row.external_id: row
        for row in session.exec(
            select(Product).where(
                Product.store_id == store_id,
                col(Product.external_id).in_([p.external_id for p in products]),
            )
        )
    }
    touched_categories: set[str] = set()
    unchanged_ids: list[str] = []
    for product in products:
        row = existing.get(product.external_id)
        if row is None:
            session.add(
                Product(
                    store_id=store_id,
                    external_id=product.external_id,
                    title=product.title,
                    category_external_id=product.category_id,
                    first_seen_at=now,
                    last_seen_at=now,
                )
            )
            result.inserted += 1
            touched_categories.add(product.category_id)
        elif (
            row.title != product.title
            or row.category_external_id != product.category_id
        ):
            touched_categories.update({row.category_external_id, product.category_id})
            row.title, row.category_external_id = product.title, product.category_id
            row.last_seen_at = now
            session.add(row)
            result.updated += 1
        else:
            unchanged_ids.append(product.external_id)
    result.unchanged += len(unchanged_ids)

    if unchanged_ids:
        session.exec(
            update(Product)
            .where(
                Product.store_id == store_id,
                col(Product.external_id).in_(unchanged_ids),
            )
            .values(last_seen_at=now)
        )
    if touched_categories:
        session.exec(
            update(Category)
            .where(
                Category.store_id == store_id,
                col(Category.external_id).in_(sorted(touched_categories)),
            )
            .values(products_updated_at=now)
        )


def replace_quarantine(
    engine: Engine, store_id: str, rejected: list[RejectedRow]
) -> None:
    """Replace a store's quarantined rows with those of the latest ingest."""
    with open_session(engine) as session:
        session.exec(delete(QuarantinedRow).where(QuarantinedRow.store_id == store_id))
        session.add_all(quarantined_row(store_id, row) for row in rejected)
        session.commit()


def quarantined_row(store_id: str, row: RejectedRow) -> QuarantinedRow:
    """Build the quarantine table row of a rejected source row."""
    return QuarantinedRow(
        store_id=store_id,
        source=row.source,
        position=row.position,
        reason=row.reason,
        raw=row.raw,
    )


def refresh_category_counts(engine: Engine, store_id: str) -> None:
    """Store each category's product count over the hot and cold tiers."""
    products = tiered_products(engine)
    with open_session(engine) as session:
        counts = dict(
            session.exec(
                select(products.c.category_external_id, func.count())
                .where(products.c.store_id == store_id)
                .group_by(products.c.category_external_id)
            ).all()
        )
        for row in session.exec(select(Category).where(Category.store_id == store_id)):
            count = counts.get(row.external_id, 0)
            if row.product_count != count:
                row.product_count = count
                session.add(row)
        session.commit()


@dataclass(frozen=True)
class CategoryProgress:
    """How many products a category has against the store's target."""

    external_id: str
    path: str
    product_count: int
    target: int
    products_updated_at: datetime | None = None

    @property
    def is_complete(self) -> bool:
        """Whether the category has reached the target."""
        return self.product_count >= self.target


def load_category_progress(
    engine: Engine, store_id: str, target: int
) -> list[CategoryProgress]:
    """Return the progress of each active leaf category and of each category with products."""
    with open_session(engine) as session:
        rows = session.exec(
            select(Category).where(
                Category.store_id == store_id, col(Category.removed_at).is_(None)
            )
        ).all()
    return [
        CategoryProgress(
            row.external_id,
            row.path,
            row.product_count,
            target,
            row.products_updated_at,
        )
        for row in rows
        if row.is_leaf or row.product_count > 0
    ]


def remove_store(engine: Engine, store_id: str, *, is_purge: bool = False) -> None:
    """Unregister a store; with `is_purge`, also delete its categories, products and logs."""
    with open_session(engine) as session:
        store = session.get(Store, store_id)
        if store is not None:
            session.delete(store)
        if is_purge:
            for table in (
                Product,
                Category,
                CategoryChange,
                QuarantinedRow,
                CrawlCursor,
            ):
                session.exec(delete(table).where(table.store_id == store_id))
        session.commit()
