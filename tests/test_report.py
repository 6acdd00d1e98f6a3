"""Tests of the store report: its plots, its HTML, a headless browser, and MLflow."""

import base64
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from mkt.catalog import CategoryProgress
from mkt.promotion import PROMOTE, PromotionEvent
from mkt.report import ReportData, build_store_report
from mkt.stores.config import parse_store_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_PATTERN = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
CHROMIUM_TIMEOUT_S = 120


def crafted_data(with_champion: bool = True) -> ReportData:
    config = parse_store_config(
        {
            "store_id": "shop-test",
            "marketplace": "test",
            "connector": {"kind": "file", "options": {"products": "/p.csv"}},
            "target_products_per_category": 50,
        }
    )
    paths = {"a": "Phones > Mobile", "b": "Phones > Cases", "c": "TVs <&> Audio"}
    data = ReportData(
        config=config,
        generated_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        progress=[
            CategoryProgress(key, path, count, 50)
            for (key, path), count in zip(paths.items(), (80, 20, 50))
        ],
        category_paths=paths,
    )
    if not with_champion:
        return data
    rng = np.random.default_rng(1)
    data.champion_version = "3"
    data.champion_metrics = {
        "weighted_f1": 0.9,
        "level_1_accuracy": 0.97,
        "level_2_accuracy": 0.9,
    }
    data.test_scores = pd.DataFrame(
        {
            "category_id": ["a"] * 30 + ["b"] * 30,
            "predicted_id": ["a"] * 27 + ["b"] * 3 + ["b"] * 28 + ["c"] * 2,
            "score": rng.uniform(0.2, 1.0, 60),
            "is_abstained": [False] * 60,
        }
    )
    data.confusion_pairs = pd.DataFrame(
        {"category_id": ["a", "b"], "predicted_id": ["b", "c"], "count": [3, 2]}
    )
    data.history = [
        PromotionEvent(
            store_id="shop-test",
            action=PROMOTE,
            to_version="3",
            reason="first <version>",
            actor="pipeline",
            at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    ]
    return data


def test_report_embeds_four_png_plots():
    report = build_store_report(crafted_data())

    images = IMAGE_PATTERN.findall(report.html)
    assert len(images) == 4
    assert set(report.figures) == {
        "coverage_histogram.png",
        "level_accuracy.png",
        "confidence.png",
        "confusion_pairs.png",
    }
    for encoded in images:
        assert base64.b64decode(encoded).startswith(PNG_SIGNATURE)


def test_report_escapes_text():
    report = build_store_report(crafted_data())

    assert "first &lt;version&gt;" in report.html
    assert "<version>" not in report.html


def test_report_without_champion_has_coverage_only():
    report = build_store_report(crafted_data(with_champion=False))

    assert list(report.figures) == ["coverage_histogram.png"]
    assert len(IMAGE_PATTERN.findall(report.html)) == 1
    assert "no champion yet" in report.html
    assert report.champion_run_id is None


def find_chromium() -> str:
    """Return the chromium executable, or skip (or fail) saying why it is missing."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not on PATH; install it: apt-get install -y chromium"
        if os.environ.get("MKT_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{reason} (MKT_REQUIRE_CHROMIUM=1 requires it)")
        pytest.skip(reason)
    return path


def render_in_chromium(chromium: str, page, profile, *extra: str) -> str:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,2000",
        *extra,
        page.as_uri(),
    ]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished.stdout


def test_report_renders_plots_in_chromium(tmp_path):
    chromium = find_chromium()
    page = tmp_path / "report.html"
    page.write_text(build_store_report(crafted_data()).html, encoding="utf-8")
    screenshot = tmp_path / "report.png"

    dom = render_in_chromium(
        chromium,
        page,
        tmp_path / "profile",
        "--virtual-time-budget=10000",
        "--dump-dom",
    )
    render_in_chromium(
        chromium, page, tmp_path / "profile-2", f"--screenshot={screenshot}"
    )

    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-image-count="4"' in body
    assert 'data-decoded-count="4"' in body
    assert 'data-rendered="true"' in body
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)
