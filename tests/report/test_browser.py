"""The report in a real headless Chromium (Debian's, driven by Playwright): it loads offline without errors or
requests, every image decodes, the tables show the JSON's numbers; a screenshot goes to build/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from advrobust.report import Report

BUILD = Path(__file__).resolve().parents[2] / "build"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("ADVROBUST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        reason = "no Chromium: `apt-get install chromium` and `pip install playwright` (CI installs both)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_report_in_chromium(page: Any, report: Report) -> None:
    problems: list[str] = []
    requests: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    url = report.html_path.resolve().as_uri()
    page.goto(url, wait_until="load")
    assert problems == []
    assert requests == [url], "the report fetched something besides itself"

    images = page.evaluate(
        "Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt}))"
    )
    assert len(images) >= 4
    assert all(i["complete"] and i["width"] > 0 for i in images), [i for i in images if not i["width"]]
    figures = page.evaluate("Array.from(document.querySelectorAll('figure img')).map(i => i.naturalWidth)")
    assert len(figures) == 4 and min(figures) > 300

    rows = page.evaluate(
        "Array.from(document.querySelectorAll('#summary-table tbody tr')).map(r => "
        "[r.dataset.model, ...Array.from(r.cells).map(c => c.innerText.trim())])"
    )
    assert headline_numbers(report) == {row[0]: (row[3], row[4]) for row in rows}

    BUILD.mkdir(exist_ok=True)
    page.screenshot(path=str(BUILD / "report-screenshot.png"), full_page=True)
    assert (BUILD / "report-screenshot.png").stat().st_size > 10_000


def headline_numbers(report: Report) -> dict[str, tuple[str, str]]:
    """What the summary table should show, computed from report.json: clean and robust with their intervals."""
    assert report.headline is not None
    out = {}
    for entry in report.data.models:
        result = entry.by_eps(report.headline.norm)[report.headline.eps].result
        cells = []
        for acc in (result.clean, result.robust):
            low, high = acc.interval
            cells.append(f"{100 * acc.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]")
        out[entry.name] = (cells[0], cells[1])
    return out
