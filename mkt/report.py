"""A store's HTML report: coverage, per-level accuracy, confidence and confusions, as plots.

The report is one self-contained file: the plots are PNGs embedded as base64 data URIs, and
the same PNGs are logged to the champion's MLflow run under `report/`.
"""

import base64
import html
import io
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from sqlalchemy import Engine
from sqlmodel import select

from mkt.baseline import load_run_table, load_test_scores
from mkt.catalog import CategoryProgress, load_category_progress
from mkt.database import Category, open_session
from mkt.promotion import PromotionEvent, load_promotion_history, version_test_metrics
from mkt.registry import get_champion
from mkt.stores.config import StoreConfig

logger = logging.getLogger(__name__)

CONFUSION_ARTIFACT = "evaluation/confusion_pairs.json"
REPORT_ARTIFACT_DIR = "report"
CONFUSION_PAIRS_SHOWN = 10
LABEL_CHARACTERS = 40
FIGURE_SIZE = (8.0, 4.0)
FIGURE_DPI = 100

FIGURE_TITLES = {
    "coverage_histogram.png": "Products per category against the target",
    "level_accuracy.png": "Accuracy per level of the category path",
    "confidence.png": "Top score on the test split",
    "confusion_pairs.png": "Most frequent confusions on the test split",
}


@dataclass
class ReportData:
    """Everything a store report shows, gathered from the database and MLflow."""

    config: StoreConfig
    generated_at: datetime
    progress: list[CategoryProgress]
    champion_version: str | None = None
    champion_run_id: str | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    test_scores: pd.DataFrame | None = None
    confusion_pairs: pd.DataFrame | None = None
    category_paths: dict[str, str] = field(default_factory=dict)
    history: list[PromotionEvent] = field(default_factory=list)


@dataclass
class StoreReport:
    """A rendered report: its HTML and the PNG of each plot by file name."""

    store_id: str
    html: str
    figures: dict[str, bytes]
    champion_run_id: str | None


def load_report_data(
    engine: Engine, config: StoreConfig, generated_at: datetime
) -> ReportData:
    """Gather a store's report data; MLflow must already point at the registry."""
    store_id = config.store_id
    data = ReportData(
        config=config,
        generated_at=generated_at,
        progress=load_category_progress(
            engine, store_id, config.target_products_per_category
        ),
        category_paths=load_category_paths(engine, store_id),
        history=load_promotion_history(engine, store_id),
    )
    champion = get_champion(store_id)
    if champion is None:
        return data
    data.champion_version = str(champion.version)
    data.champion_run_id = champion.run_id
    data.champion_metrics = version_test_metrics(champion)
    data.test_scores = load_test_scores(champion.run_id)
    data.confusion_pairs = load_run_table(champion.run_id, CONFUSION_ARTIFACT)
    if data.confusion_pairs is None:
        logger.warning(
            "Store %r: champion version %s has no %s; the confusion plot is left out",
            store_id,
            champion.version,
            CONFUSION_ARTIFACT,
        )
    return data


def load_category_paths(engine: Engine, store_id: str) -> dict[str, str]:
    """Return the path of each of the store's categories by external id."""
    with open_session(engine) as session:
        rows = session.exec(
            select(Category.external_id, Category.path).where(
                Category.store_id == store_id
            )
        ).all()
    return dict(rows)


def build_store_report(data: ReportData) -> StoreReport:
    """Render the plots and the HTML page of a store's report."""
    figures = {"coverage_histogram.png": plot_coverage_histogram(data)}
    levels = level_accuracies(data.champion_metrics)
    if levels:
        figures["level_accuracy.png"] = plot_level_accuracy(levels)
    if data.test_scores is not None and len(data.test_scores):
        threshold = data.config.classifier.abstain_threshold
        if threshold is None:
            # Tuned per version at train time; evaluate logs the one it applied.
            threshold = data.champion_metrics.get("test_abstain_threshold", 0.0)
        figures["confidence.png"] = plot_confidence(data.test_scores, threshold)
    if data.confusion_pairs is not None and len(data.confusion_pairs):
        figures["confusion_pairs.png"] = plot_confusion_pairs(
            data.confusion_pairs, data.category_paths
        )
    return StoreReport(
        data.config.store_id,
        render_html(data, figures),
        figures,
        data.champion_run_id,
    )


def log_report_figures(report: StoreReport) -> list[str]:
    """Log the report's PNGs and HTML to the champion's MLflow run under `report/`.

    Returns the artifact paths logged, none when the store has no champion.
    """
    if report.champion_run_id is None:
        return []
    client = MlflowClient()
    logged = []
    with tempfile.TemporaryDirectory() as scratch:
        files = {**report.figures, "report.html": report.html.encode("utf-8")}
        for name, content in files.items():
            path = Path(scratch) / name
            path.write_bytes(content)
            client.log_artifact(report.champion_run_id, str(path), REPORT_ARTIFACT_DIR)
            logged.append(f"{REPORT_ARTIFACT_DIR}/{name}")
    return logged


def level_accuracies(metrics: dict[str, float]) -> dict[int, float]:
    """Return the accuracy per category path level found in test metrics."""
    levels = {}
    for key, value in metrics.items():
        parts = key.split("_")
        if len(parts) == 3 and parts[0] == "level" and parts[2] == "accuracy":
            levels[int(parts[1])] = value
    return dict(sorted(levels.items()))


def new_figure() -> tuple[Figure, object]:
    """Return a figure with one set of axes, drawn without a GUI backend."""
    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    return figure, figure.subplots()


def to_png(figure: Figure) -> bytes:
    """Return a figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def plot_coverage_histogram(data: ReportData) -> bytes:
    """Plot how many categories have how many products, with the target marked."""
    figure, axes = new_figure()
    counts = [item.product_count for item in data.progress]
    target = data.config.target_products_per_category
    if counts:
        axes.hist(counts, bins=min(30, max(5, len(counts))), color="#4c72b0")
    axes.axvline(target, color="#c44e52", linestyle="--", label=f"target {target:,}")
    complete = sum(item.is_complete for item in data.progress)
    axes.set_title(f"{complete} of {len(counts)} categories reach the target")
    axes.set_xlabel("products in the category")
    axes.set_ylabel("categories")
    axes.legend()
    return to_png(figure)


def plot_level_accuracy(levels: dict[int, float]) -> bytes:
    """Plot the champion's test accuracy at each level of the category path."""
    figure, axes = new_figure()
    names = [f"level {level}" for level in levels]
    bars = axes.bar(names, list(levels.values()), color="#55a868")
    axes.bar_label(bars, fmt="%.3f")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy")
    axes.set_title("Champion accuracy per level (level 1 = root)")
    return to_png(figure)


def plot_confidence(test_scores: pd.DataFrame, abstain_threshold: float) -> bytes:
    """Plot the top score of correct and wrong test predictions, with the abstain threshold."""
    figure, axes = new_figure()
    is_correct = test_scores["category_id"] == test_scores["predicted_id"]
    axes.hist(
        [test_scores.loc[is_correct, "score"], test_scores.loc[~is_correct, "score"]],
        bins=20,
        range=(0, 1),
        stacked=True,
        color=["#55a868", "#c44e52"],
        label=["correct", "wrong"],
    )
    axes.axvline(
        abstain_threshold,
        color="black",
        linestyle="--",
        label=f"abstain threshold {abstain_threshold:.2f}",
    )
    axes.set_xlabel("top score")
    axes.set_ylabel("test names")
    axes.set_title(f"Mean top score {test_scores['score'].mean():.3f}")
    axes.legend()
    return to_png(figure)


def plot_confusion_pairs(pairs: pd.DataFrame, category_paths: dict[str, str]) -> bytes:
    """Plot the most frequent (true, predicted) category pairs among the errors."""
    figure, axes = new_figure()
    top = pairs.sort_values("count", ascending=False).head(CONFUSION_PAIRS_SHOWN)
    labels = [
        f"{short_path(category_paths.get(true_id, true_id))} → "
        f"{short_path(category_paths.get(predicted_id, predicted_id))}"
        for true_id, predicted_id in zip(top["category_id"], top["predicted_id"])
    ]
    axes.barh(labels[::-1], top["count"].tolist()[::-1], color="#8172b3")
    axes.set_xlabel("test names")
    axes.set_title("true → predicted")
    return to_png(figure)


def short_path(path: str) -> str:
    """Return a category path cut to fit a plot label, keeping its leaf end."""
    text = str(path)
    if len(text) <= LABEL_CHARACTERS:
        return text
    return "…" + text[-(LABEL_CHARACTERS - 1) :]


# The inline script lets a headless browser confirm that every plot decoded: it sets
# data-rendered="true" on <body> once all images have loaded with a non-zero width.
RENDER_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (image) {
    return image.complete && image.naturalWidth > 0;
  });
  document.body.setAttribute("data-image-count", String(images.length));
  document.body.setAttribute("data-decoded-count", String(decoded.length));
  document.body.setAttribute(
    "data-rendered", String(images.length > 0 && decoded.length === images.length)
  );
});
</script>"""

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
.missing { color: #888; }
</style>"""


def render_html(data: ReportData, figures: dict[str, bytes]) -> str:
    """Return the report as one self-contained HTML page."""
    store_id = html.escape(data.config.store_id)
    champion = (
        f"version {html.escape(data.champion_version)}"
        if data.champion_version
        else "none yet"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>mkt report: {store_id}</title>",
        STYLE,
        "</head><body>",
        f"<h1>Store {store_id}</h1>",
        f"<p>Generated {data.generated_at:%Y-%m-%d %H:%M} UTC. Champion: {champion}.</p>",
        metrics_table_html(data.champion_metrics),
    ]
    for name, title in FIGURE_TITLES.items():
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if name in figures:
            encoded = base64.b64encode(figures[name]).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{encoded}" '
                f'alt="{html.escape(title)}"></figure>'
            )
        else:
            reason = html.escape(missing_figure_reason(data, name))
            parts.append(f'<p class="missing">{reason}</p>')
    parts.append(history_table_html(data.history))
    parts += [RENDER_CHECK_SCRIPT, "</body></html>"]
    return "\n".join(parts)


def missing_figure_reason(data: ReportData, name: str) -> str:
    """Return why a plot is not in the report."""
    if data.champion_version is None:
        return "No plot: the store has no champion yet."
    if name == "confusion_pairs.png" and data.confusion_pairs is not None:
        return "No plot: the champion made no errors on the test split."
    return (
        f"No plot: the evaluation of champion version {data.champion_version} did not "
        "record this data (evaluations by mkt before the report existed did not)."
    )


def metrics_table_html(metrics: dict[str, float]) -> str:
    """Return the champion's test metrics as an HTML table."""
    if not metrics:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{value:.4f}</td></tr>"
        for key, value in sorted(metrics.items())
    )
    return f"<h2>Champion test metrics</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def history_table_html(history: list[PromotionEvent]) -> str:
    """Return the latest promotion events, newest first, as an HTML table."""
    if not history:
        return '<h2>Promotion history</h2><p class="missing">No promotions yet.</p>'
    rows = "".join(
        "<tr>"
        f"<td>{event.at:%Y-%m-%d %H:%M}</td><td>{html.escape(event.action)}</td>"
        f"<td>{html.escape(event.from_version or '-')}</td>"
        f"<td>{html.escape(event.to_version)}</td>"
        f"<td>{html.escape(event.actor)}</td><td>{html.escape(event.reason)}</td>"
        "</tr>"
        for event in reversed(history[-20:])
    )
    header = "<tr><th>at (UTC)</th><th>action</th><th>from</th><th>to</th><th>actor</th><th>reason</th></tr>"
    return f"<h2>Promotion history</h2><table>{header}{rows}</table>"
