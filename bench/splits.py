"""The labelled data sets of the accuracy benchmark and their leak-free train/test splits."""

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from mkt.titles import clean_title, title_key

logger = logging.getLogger(__name__)

SEED = 42
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DatasetSpec:
    """Location of a labelled product CSV under the data folder, and its split rule."""

    csv_path: str
    language: str
    has_official_split: bool


DATASETS = {
    "mwpd": DatasetSpec("mwpd2020_wdc_gs1/mwpd2020_task2_clean.csv", "English", True),
    "frisco": DatasetSpec("frisco_pl/frisco_products_clean.csv", "Polish", False),
    "pricerunner": DatasetSpec("pricerunner/pricerunner_clean.csv", "English", False),
}


@dataclass(frozen=True)
class Split:
    """Train and test rows of one data set, with cleaned titles and their keys."""

    dataset: str
    description: str
    train: pd.DataFrame
    test: pd.DataFrame
    empty_count: int


def find_missing_files(data_dir: Path, datasets: list[str]) -> list[Path]:
    """Return the CSV files of the chosen data sets that do not exist."""
    paths = [data_dir / DATASETS[name].csv_path for name in datasets]
    return [path for path in paths if not path.is_file()]


def load_products(csv_path: Path) -> tuple[pd.DataFrame, int]:
    """Read a labelled product CSV, clean its titles and drop the empty ones.

    Returns:
        The rows with a `key` column (the case-folded clean title) and the count dropped.
    """
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    frame["title"] = frame["title"].map(clean_title)
    is_empty = frame["title"] == ""
    frame = frame[~is_empty].reset_index(drop=True)
    frame["key"] = frame["title"].map(title_key)
    return frame, int(is_empty.sum())


def majority_category_per_key(frame: pd.DataFrame) -> pd.Series:
    """Return the most frequent category of each key (ties go to the lowest id)."""
    copies = frame.groupby(["key", "category_id"]).size().rename("copies")
    ranked = copies.reset_index().sort_values(
        ["key", "copies", "category_id"], ascending=[True, False, True]
    )
    return ranked.drop_duplicates("key").set_index("key")["category_id"]


def split_by_key(
    frame: pd.DataFrame, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows so that all copies of a name (by key) land on the same side.

    The test side gets `test_fraction` of the distinct keys, stratified by each key's
    most frequent category. A category with a single key keeps it in train, because a
    test name of a category absent from train is always wrong.
    """
    key_categories = majority_category_per_key(frame)
    key_counts = key_categories.map(key_categories.value_counts())
    stratifiable = key_categories[key_counts >= 2]
    _, test_keys = train_test_split(
        stratifiable.index.to_numpy(),
        test_size=round(len(key_categories) * test_fraction),
        random_state=seed,
        stratify=stratifiable.to_numpy(),
    )
    is_test = frame["key"].isin(set(test_keys))
    return frame[~is_test], frame[is_test]


def prepare_split(name: str, data_dir: Path, limit: int | None) -> Split:
    """Load one data set and split it, by its official split if any, else by key."""
    spec = DATASETS[name]
    frame, empty_count = load_products(data_dir / spec.csv_path)
    if spec.has_official_split:
        is_test = frame["split"] == "test"
        train, test = frame[~is_test], frame[is_test]
        description = "official (train + validation / test)"
    else:
        train, test = split_by_key(frame, TEST_FRACTION, SEED)
        test_percent = round(TEST_FRACTION * 100)
        description = f"{100 - test_percent}/{test_percent} by name, seed {SEED}"

    split = Split(name, description, train, test, empty_count)
    if limit is not None:
        split = replace(
            split, train=sample_rows(train, limit), test=sample_rows(test, limit)
        )
    logger.info(
        "Data set %r: %d train and %d test names",
        name,
        len(split.train),
        len(split.test),
    )
    return split


def sample_rows(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Return at most `limit` rows of a frame, drawn with the fixed seed."""
    if len(frame) <= limit:
        return frame
    return frame.sample(n=limit, random_state=SEED)


def summarise_split(split: Split) -> dict:
    """Return the sizes of a split and how much of its test side train already covers."""
    train_categories = set(split.train["category_id"])
    is_unseen = ~split.test["category_id"].isin(train_categories)
    is_repeated = split.test["key"].isin(set(split.train["key"]))
    return {
        "dataset": split.dataset,
        "language": DATASETS[split.dataset].language,
        "split": split.description,
        "train_count": len(split.train),
        "test_count": len(split.test),
        "category_count": len(train_categories),
        "unseen_test_count": int(is_unseen.sum()),
        "repeated_test_count": int(is_repeated.sum()),
        "empty_count": split.empty_count,
    }
