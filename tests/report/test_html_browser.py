"""report.html in a real headless Chromium (issue 13): the whole page screenshotted, every chart
drawn, the summary table present, and no request leaving the file.

Debian's `chromium` (scripts/test.sh installs it when missing), driven by Playwright through
`executable_path`; Playwright's own browser download is never used. A chart is what
edgekd/report/html.py puts in a `<figure>`: one inline matplotlib SVG (or an image) before its
`<figcaption>`. Each check is a function that lists what it found wrong, and the tests at the end
feed each one a broken page, so none of them passes by accident.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekd.report import plots
from edgekd.report.html import FIGURES
from edgekd.stages.report import write_report
from tests.report.test_html import report

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
)

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (scripts/test.sh installs it: apt-get install "
    "chromium)",
)

# Root in a container: no sandbox, no GPU; and none of the browser's own traffic (QUIC probes,
# component updates, sync), so the requests seen are the page's. Playwright adds --headless and
# a fresh --user-data-dir of its own to every launch.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 900}

# Measured on test_html.py's crafted report (Chromium 156): each chart is 226 to 687 px a side, has
# 271 to 513 distinct colours (anti-aliased lines and text) and 9 to 63 % of its pixels off its
# background; an empty <svg> has 1 colour and 0 %. The thresholds sit well between the two.
MIN_CHART_SIDE_PX = 100
MIN_CHART_COLOURS = 16
MIN_CHART_INK = 0.02  # share of pixels not the chart's most common colour
# The whole page's grey levels: standard deviation 35 (text, tables, charts on white); blank 0.
MIN_PAGE_GREY_STD = 10.0

# A URL a browser would fetch: absolute http(s) or protocol-relative, in an attribute that loads
# (src, href and xlink:href, srcset, poster) or in CSS (url(), @import). Namespaces (xmlns) and
# matplotlib's RDF metadata name URLs too, but nothing loads them.
FETCHED_URL = re.compile(
    r"""(?:\b(?:src|href|srcset|poster)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)"""
    r"""\s*((?:https?:)?//[^\s"')>]*)""",
    re.IGNORECASE,
)

# What a chart's embedded images (the confusion matrix is a PNG inside its SVG) decode to: the
# source of each one the browser cannot decode.
UNDECODABLE_IMAGES_JS = """async () => {
  const bad = [];
  for (const el of document.querySelectorAll("figure img, figure svg image")) {
    const src = el instanceof SVGImageElement ? el.href.baseVal : el.currentSrc || el.src;
    const probe = new Image();
    probe.src = src;
    try { await probe.decode(); } catch (e) { bad.push(src.slice(0, 60)); }
  }
  return bad;
}"""

# Text a figure shows outside its caption and its SVG: an error message in place of a chart.
STRAY_TEXT_JS = """fig => [...fig.childNodes]
  .filter(n => n.nodeName !== "FIGCAPTION" && !(n instanceof SVGElement))
  .map(n => n instanceof HTMLElement ? n.innerText : n.textContent)
  .join("").trim()"""


@dataclass
class Opened:
    """A page opened from a file, with what it asked the network for and what it logged."""

    page: sync_api.Page
    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture()
def open_page(browser: sync_api.Browser) -> Iterator[Callable[[Path], Opened]]:
    contexts: list[sync_api.BrowserContext] = []

    def open_(path: Path) -> Opened:
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        contexts.append(context)
        opened = Opened(context.new_page(), path.as_uri())
        context.on("request", lambda request: opened.requests.append(request.url))
        # Recorded above, then refused: a test never sends a request off this machine.
        context.route(lambda url: not url.startswith(("file:", "data:")), lambda r: r.abort())
        opened.page.on(
            "console", lambda m: opened.errors.append(m.text) if m.type == "error" else None
        )
        opened.page.on("pageerror", lambda error: opened.errors.append(str(error)))
        opened.page.goto(opened.url, wait_until="load")
        return opened

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html as the report stage writes it, from a report with data for every chart."""
    folder = tmp_path_factory.mktemp("run")
    write_report(folder, report())
    return folder / "report.html"


def page_with(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "page.html"
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"></head><body>{body}</body>')
    return path


def external_requests(opened: Opened) -> list[str]:
    """Every request but the page's own file and data: URLs."""
    return [u for u in opened.requests if u != opened.url and not u.startswith("data:")]


def colours_and_ink(png: bytes) -> tuple[int, float]:
    """Distinct colours of a screenshot, and the share of its pixels not its commonest colour."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return len(counts), 1.0 - counts.max() / counts.sum()


def chart_problems(page: sync_api.Page) -> list[str]:
    """What is wrong with the page's charts: a figure without exactly one chart, a chart drawn
    too small or blank, an embedded image that does not decode, text in place of a chart."""
    problems = []
    for i, figure in enumerate(page.locator("figure").all()):
        charts = figure.locator(":scope > svg, :scope > img")
        if charts.count() != 1:
            problems.append(f"figure {i}: {charts.count()} charts")
        stray = figure.evaluate(STRAY_TEXT_JS)
        if stray:
            problems.append(f"figure {i}: shows {stray!r}")
        if charts.count() != 1:
            continue
        box = charts.bounding_box()
        if box is None or min(box["width"], box["height"]) < MIN_CHART_SIDE_PX:
            problems.append(f"figure {i}: chart drawn at {box}")
            continue
        colours, ink = colours_and_ink(charts.screenshot())
        if colours < MIN_CHART_COLOURS or ink < MIN_CHART_INK:
            problems.append(f"figure {i}: blank chart ({colours} colours, {ink:.1%} ink)")
    problems += [f"image does not decode: {src}" for src in page.evaluate(UNDECODABLE_IMAGES_JS)]
    return problems


def test_the_report_opens_in_chromium_with_every_chart_drawn_and_nothing_fetched(
    open_page, report_html, tmp_path
):
    html = report_html.read_text()
    assert FETCHED_URL.findall(html) == []
    opened = open_page(report_html)
    page = opened.page

    screenshot = tmp_path / "report.png"  # kept by pytest for a person to look at
    page.screenshot(path=screenshot, full_page=True)
    grey = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert grey.shape[0] > VIEWPORT["height"] and grey.std() > MIN_PAGE_GREY_STD

    # The crafted report has data for every picture edgekd draws.
    assert page.locator("figure").count() == len(FIGURES)
    assert chart_problems(page) == []
    assert page.get_by_text("Nothing measured to draw").count() == 0

    summary = page.locator("h2:text-is('Summary') + table")
    assert summary.is_visible()
    rows = summary.locator("tr:has(td)")
    assert rows.locator("td:first-child").all_inner_texts() == [
        "teacher",
        "final",
        "final ÷ teacher",
    ]
    assert "93.00" in rows.nth(0).inner_text() and "91.50" in rows.nth(1).inner_text()

    assert external_requests(opened) == [] and opened.requests == [opened.url]
    assert opened.errors == []


def test_the_network_checks_catch_an_external_image(open_page, tmp_path):
    url = "http://example.invalid/x.png"  # .invalid never resolves (RFC 6761)
    page = page_with(tmp_path, f'<figure><img src="{url}"><figcaption>c</figcaption></figure>')
    opened = open_page(page)
    assert external_requests(opened) == [url]
    assert opened.errors  # Chromium logs the failed load
    assert FETCHED_URL.findall(page.read_text()) == [url]
    for text in (
        "<style>body { background: url( 'https://cdn.example/a.png') }</style>",
        "<link rel=stylesheet href=//cdn.example/a.css>",
        '<svg><image xlink:href="https://cdn.example/a.png"/></svg>',
        "<style>@import 'https://cdn.example/a.css';</style>",
    ):
        assert FETCHED_URL.findall(text), text
    assert FETCHED_URL.findall('<svg xmlns="http://www.w3.org/2000/svg"><a href="#x"/>') == []


def _confusion_matrix_that_does_not_decode() -> str:
    svg = plots.confusion_matrix(report())
    assert svg is not None and "iVBORw0KGgo" in svg  # the matrix is a PNG inside the SVG
    return svg[svg.index("<svg") :].replace("iVBORw0KGgo", "AAAA")


@pytest.mark.parametrize(
    ("chart", "found"),
    [
        pytest.param(lambda: '<svg width="300" height="150"></svg>', "blank chart", id="empty-svg"),
        pytest.param(
            lambda: '<svg width="0" height="0"><circle r="9"/></svg>', "drawn at", id="zero-size"
        ),
        pytest.param(
            lambda: '<svg width="300" height="150" style="display:none"></svg>',
            "drawn at None",
            id="hidden",
        ),
        pytest.param(
            lambda: "<p>could not draw: ValueError</p>",
            "shows 'could not draw: ValueError'",
            id="error-text",
        ),
        pytest.param(
            lambda: '<img src="data:image/png;base64,AAAA" alt="">',
            "image does not decode",
            id="broken-image",
        ),
        pytest.param(
            _confusion_matrix_that_does_not_decode, "image does not decode", id="broken-svg-image"
        ),
    ],
)
def test_the_chart_check_catches_a_chart_not_drawn(open_page, tmp_path, chart, found):
    body = f"<figure>{chart()}<figcaption>c</figcaption></figure>"
    problems = chart_problems(open_page(page_with(tmp_path, body)).page)
    assert any(found in problem for problem in problems), problems
