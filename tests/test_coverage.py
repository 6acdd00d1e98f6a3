"""Tests of the category coverage histogram and the least covered list."""

from mkt.catalog import CategoryProgress
from mkt.coverage import coverage_histogram, least_covered


def progress_of(*counts, target=100):
    return [
        CategoryProgress(f"c{i}", f"Root > C{i}", count, target)
        for i, count in enumerate(counts)
    ]


def test_histogram_bins_counts_by_share_of_target():
    progress = progress_of(0, 1, 24, 25, 50, 74, 75, 99, 100, 250)

    histogram = {
        item.label: item.category_count for item in coverage_histogram(progress)
    }

    assert histogram == {
        "0": 1,
        "1-24%": 2,
        "25-49%": 1,
        "50-74%": 2,
        "75-99%": 2,
        "complete": 2,
    }


def test_least_covered_lists_incomplete_fewest_first():
    progress = progress_of(90, 0, 100, 40, 7)

    lowest = least_covered(progress, limit=3)

    assert [item.product_count for item in lowest] == [0, 7, 40]


def test_least_covered_is_empty_when_all_complete():
    assert least_covered(progress_of(100, 120), limit=5) == []
