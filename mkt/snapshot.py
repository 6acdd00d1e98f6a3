"""Training snapshots: the cleaned, capped and split product names a classifier learns from."""

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import Engine
from sqlmodel import col, select

from mkt.database import Category, open_session
from mkt.errors import NotEnoughData
from mkt.stores.config import StoreConfig
from mkt.tiers import tiered_products
from mkt.titles import clean_title, hash_text, title_key

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "snapshot.json"
PARTIAL_EMBEDDINGS_FILE = "embeddings.partial.npy"
# Half precision halves the file; cosine similarities move by about 1e-3 at most.
EMBEDDINGS_DTYPE = np.float16


@dataclass
class SnapshotStats:
    """What building a snapshot kept and dropped, and why."""

    product_count: int = 0
    empty_count: int = 0
    duplicate_count: int = 0
    conflicting_label_count: int = 0
    capped_count: int = 0
    rare_category_count: int = 0
    rare_product_count: int = 0
    train_count: int = 0
    test_count: int = 0
    category_count: int = 0


def load_labelled_products(engine: Engine, store_id: str) -> pd.DataFrame:
    """Return the titles of a store's products in both tiers with their category id and path."""
    products = tiered_products(engine)
    with open_session(engine) as session:
        rows = session.exec(
            select(products.c.title, products.c.category_external_id, Category.path)
            .join(
                Category,
                (Category.store_id == products.c.store_id)
                & (Category.external_id == products.c.category_external_id),
            )
            .where(products.c.store_id == store_id, col(Category.removed_at).is_(None))
        ).all()
    return pd.DataFrame(rows, columns=["title", "category_id", "category_path"])


def build_training_snapshot(
    products: pd.DataFrame, config: StoreConfig
) -> tuple[pd.DataFrame, SnapshotStats]:
    """Clean, deduplicate, cap and split a store's labelled titles.

    Identical names (after cleaning and case-folding) are kept once, under the category
    most of their copies carry, so the same name never lands in both train and test.

    Raises:
        NotEnoughData: if fewer than two categories reach the minimum product count.
    """
    stats = SnapshotStats(product_count=len(products))
    frame = products.assign(title=products["title"].map(clean_title))
    stats.empty_count = int((frame["title"] == "").sum())
    frame = frame[frame["title"] != ""]

    frame, stats.duplicate_count, stats.conflicting_label_count = drop_duplicate_titles(
        frame
    )
    frame, stats.capped_count = cap_per_category(frame, config)
    frame, stats.rare_category_count, stats.rare_product_count = drop_rare_categories(
        frame, config.min_products_per_category
    )
    check_enough_categories(frame, config)

    frame = split_stratified(
        frame, config.evaluation.test_fraction, config.evaluation.seed
    )
    frame["text_hash"] = frame["title"].map(hash_text)
    stats.train_count = int((frame["split"] == "train").sum())
    stats.test_count = int((frame["split"] == "test").sum())
    stats.category_count = int(frame["category_id"].nunique())
    return frame.reset_index(drop=True), stats


def drop_duplicate_titles(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Keep one row per name under its most frequent category; return it and the counts dropped."""
    keyed = frame.assign(key=frame["title"].map(title_key))
    label_counts = (
        keyed.groupby(["key", "category_id"]).size().rename("copies").reset_index()
    )
    conflicting = int((label_counts.groupby("key").size() > 1).sum())
    best = label_counts.sort_values(
        ["key", "copies", "category_id"], ascending=[True, False, True]
    )
    best = best.drop_duplicates("key")[["key", "category_id"]]

    kept = keyed.merge(best, on=["key", "category_id"]).sort_values(["key", "title"])
    kept = kept.drop_duplicates("key").drop(columns="key")
    return kept, len(frame) - len(kept), conflicting


def cap_per_category(
    frame: pd.DataFrame, config: StoreConfig
) -> tuple[pd.DataFrame, int]:
    """Keep at most the target number of names per category, chosen reproducibly."""
    target = config.target_products_per_category
    order = frame["title"].map(lambda t: hash_text(f"{config.evaluation.seed}:{t}"))
    ranked = frame.assign(order=order).sort_values(["category_id", "order"])
    capped = (
        ranked.groupby("category_id", sort=False).head(target).drop(columns="order")
    )
    return capped, len(frame) - len(capped)


def drop_rare_categories(
    frame: pd.DataFrame, minimum: int
) -> tuple[pd.DataFrame, int, int]:
    """Drop categories with fewer than `minimum` names; return the rest and what was dropped."""
    sizes = frame.groupby("category_id")["title"].transform("size")
    rare = frame[sizes < minimum]
    if len(rare):
        logger.warning(
            "%d categories have fewer than %d names and are left out of training "
            "(%d names); they cannot be predicted until they have more",
            rare["category_id"].nunique(),
            minimum,
            len(rare),
        )
    return frame[sizes >= minimum], int(rare["category_id"].nunique()), len(rare)


def check_enough_categories(frame: pd.DataFrame, config: StoreConfig) -> None:
    """Raise NotEnoughData unless at least two categories remain."""
    category_count = frame["category_id"].nunique()
    if category_count < 2:
        raise NotEnoughData(
            f"Store {config.store_id!r} has {category_count} categor"
            f"{'y' if category_count == 1 else 'ies'} with at least "
            f"{config.min_products_per_category} distinct names; a classifier needs two or "
            "more. Crawl more products, or lower min_products_per_category in the store config."
        )


def split_stratified(
    frame: pd.DataFrame, test_fraction: float, seed: int
) -> pd.DataFrame:
    """Mark each row train or test, holding out the fraction within every category.

    Every category keeps at least one training name and, having two or more, gives at
    least one to the test split.
    """
    rng = np.random.default_rng(seed)
    frame = frame.sort_values(["category_id", "title"]).reset_index(drop=True)
    split = np.full(len(frame), "train", dtype=object)
    for _, positions in frame.groupby("category_id", sort=True).indices.items():
        shuffled = rng.permutation(positions)
        test_count = min(
            max(1, round(len(positions) * test_fraction)), len(positions) - 1
        )
        split[shuffled[:test_count]] = "test"
    return frame.assign(split=split)


def open_embeddings_file(store_dir: Path, row_count: int, dimension: int) -> np.memmap:
    """Create a memory-mapped float16 .npy for a snapshot's embeddings, to fill in place.

    The file is written beside the current one and replaces it in `save_snapshot`, so an
    interrupted embed stage leaves the previous snapshot readable.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(
        store_dir / PARTIAL_EMBEDDINGS_FILE,
        mode="w+",
        dtype=EMBEDDINGS_DTYPE,
        shape=(row_count, dimension),
    )


def save_snapshot(
    store_dir: Path,
    snapshot: pd.DataFrame,
    embeddings: np.ndarray,
    metadata: dict,
) -> None:
    """Write a snapshot, its embeddings and metadata; the metadata is written last.

    Embeddings from `open_embeddings_file` are flushed and moved into place; any other
    array is written whole.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    snapshot.to_parquet(store_dir / SNAPSHOT_FILE, index=False)
    partial_path = store_dir / PARTIAL_EMBEDDINGS_FILE
    if (
        isinstance(embeddings, np.memmap)
        and Path(embeddings.filename).resolve() == partial_path.resolve()
    ):
        embeddings.flush()
        partial_path.replace(store_dir / EMBEDDINGS_FILE)
    else:
        np.save(store_dir / EMBEDDINGS_FILE, embeddings)
    (store_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))


def load_snapshot(
    store_dir: Path, store_id: str
) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Read a store's latest snapshot and metadata, with its embeddings memory-mapped.

    Raises:
        NotEnoughData: if the store has no snapshot yet.
    """
    metadata_path = store_dir / METADATA_FILE
    if not metadata_path.is_file():
        raise NotEnoughData(
            f"Store {store_id!r} has no training snapshot yet. Build one: "
            f"mkt run {store_id} --stage embed"
        )
    metadata = json.loads(metadata_path.read_text())
    snapshot = pd.read_parquet(store_dir / SNAPSHOT_FILE)
    embeddings = np.load(store_dir / EMBEDDINGS_FILE, mmap_mode="r")
    return snapshot, embeddings, metadata


def stats_dict(stats: SnapshotStats) -> dict:
    """Return snapshot stats as a plain dict."""
    return asdict(stats)
