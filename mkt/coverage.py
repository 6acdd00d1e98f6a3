"""Category coverage: how close each category is to the store's product target."""

from dataclasses import dataclass

from mkt.catalog import CategoryProgress

# Upper bounds, as shares of the target, of the histogram bins below "complete".
COVERAGE_BIN_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class CoverageBin:
    """Categories whose product count falls in one range of shares of the target."""

    label: str
    category_count: int


def coverage_histogram(progress: list[CategoryProgress]) -> list[CoverageBin]:
    """Count categories by share of the target: none, under 25%, ..., complete."""
    labels = ["0", "1-24%", "25-49%", "50-74%", "75-99%", "complete"]
    counts = [0] * len(labels)
    for item in progress:
        counts[coverage_bin(item)] += 1
    return [CoverageBin(label, count) for label, count in zip(labels, counts)]


def coverage_bin(item: CategoryProgress) -> int:
    """Return the histogram bin of a category's progress."""
    if item.product_count == 0:
        return 0
    if item.is_complete:
        return len(COVERAGE_BIN_EDGES)
    share = item.product_count / item.target
    return next(
        position
        for position, edge in enumerate(COVERAGE_BIN_EDGES[1:], start=1)
        if share < edge
    )


def least_covered(
    progress: list[CategoryProgress], limit: int
) -> list[CategoryProgress]:
    """Return up to `limit` incomplete categories, fewest products first."""
    incomplete = [item for item in progress if not item.is_complete]
    return sorted(incomplete, key=lambda item: (item.product_count, item.path))[:limit]
