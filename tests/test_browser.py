"""The page as people use it: Debian's Chromium (headless, via Playwright) against the real server.

Every request the page makes is recorded and must go to the loopback server: the page works offline.
A screenshot with a result is saved under artifacts/ (``UPDATE_SCREENSHOT=1`` also refreshes
docs/screenshot.png for the README).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from space.serving.explain import DEFAULT
from space.web.ui import find_examples
from tests.conftest import PHOTOS, REPO, Photo, Server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
RESULT_TIMEOUT_MS = 60_000
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), "Debian's chromium is needed: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


class RecordedPage:
    """A page in its own context that records the URL of every request it makes."""

    def __init__(self, page: Page, server: Server) -> None:
        self.page = page
        self.server = server
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))

    def outside_requests(self) -> list[str]:
        local = (self.server.url + "/", "data:", "blob:")
        return [url for url in self.requests if not (url == self.server.url or url.startswith(local))]


@pytest.fixture
def open_page(browser: Browser, real_server: Server) -> Iterator[object]:
    contexts = []

    def open_(**context_options: object) -> RecordedPage:
        context = browser.new_context(**context_options)  # type: ignore[arg-type]
        contexts.append(context)
        recorded = RecordedPage(context.new_page(), real_server)
        recorded.page.goto(real_server.url, wait_until="networkidle")
        return recorded

    yield open_
    for context in contexts:
        context.close()


def photo(photos: list[Photo], name: str) -> Photo:
    return next(p for p in photos if p.path.name == name)


def example_button(page: Page, name: str) -> Locator:
    """The example thumbnail of ``name``: the server shows the photos folder, in the page's order."""
    names = [path.name for path in find_examples(PHOTOS)]
    return page.locator(".gallery-item").nth(names.index(name))


def top_class(page: Page) -> str:
    value = page.locator("#top-classes [data-testid='label-output-value']")
    expect(value).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    return value.inner_text().strip()


def shown_classes(page: Page) -> int:
    return page.locator("#top-classes .confidence-set").count()


def test_example_click_shows_top_class_model_and_time(open_page, photos: list[Photo]) -> None:
    recorded = open_page(viewport={"width": 1280, "height": 900})
    page = recorded.page
    # Filled in by the page's load event (its first render may still say "loading" on a slow machine).
    summary = page.locator("#model-summary")
    expect(summary).to_contain_text("revision", timeout=RESULT_TIMEOUT_MS)
    expect(summary).to_contain_text("efficientnet-lite0-imagenet")

    example_button(page, "lion.jpg").click()
    assert top_class(page) in photo(photos, "lion.jpg").accepted
    expect(page.locator("#inference-time")).to_have_text(re.compile(r"Inference time: \d+ ms"))
    expect(page.locator("#top-classes .confidence-set")).to_have_count(5)  # the configured default

    # The slider chooses how many classes are shown.
    page.locator("#top-k input[type='number']").fill("3")
    page.locator("#top-k input[type='number']").press("Enter")
    page.locator("#classify").click()
    expect(page.locator("#top-classes .confidence-set")).to_have_count(3, timeout=RESULT_TIMEOUT_MS)
    assert top_class(page) in photo(photos, "lion.jpg").accepted

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "screenshot.png"
    page.screenshot(path=shot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOT") == "1":  # the README's picture, palette PNG to keep it small
        small = Image.open(shot).convert("RGB").quantize(colors=128)
        small.save(REPO / "docs" / "screenshot.png", optimize=True)
    assert len(recorded.requests) > 10  # the recorder sees the page's scripts, styles, queue calls
    assert recorded.outside_requests() == []


def test_upload_from_disk(open_page, photos: list[Photo]) -> None:
    recorded = open_page(viewport={"width": 1280, "height": 900})
    page = recorded.page
    zebra = photo(photos, "zebra.jpg")
    page.locator("#image input[type='file']").set_input_files(zebra.path)
    expect(page.locator("#image img")).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    page.locator("#classify").click()
    assert top_class(page) in zebra.accepted
    expect(page.locator("#inference-time")).to_have_text(re.compile(r"Inference time: \d+ ms"))
    assert recorded.outside_requests() == []


def test_invalid_file_shows_readable_error(open_page, tmp_path: Path) -> None:
    recorded = open_page(viewport={"width": 1280, "height": 900})
    page = recorded.page
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is a text file, not a photo\n" * 20)
    page.locator("#image input[type='file']").set_input_files(fake)
    expect(page.locator("#image img")).to_be_attached(timeout=RESULT_TIMEOUT_MS)  # uploaded
    page.locator("#classify").click()
    toast = page.locator("[data-testid='toast-body']").first
    expect(toast).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    text = toast.inner_text()
    assert "not an image" in text and "JPEG" in text, text  # what is wrong, and what to send instead
    for leak in ("Traceback", 'File "', "/tmp/", "Exception"):
        assert leak not in text, text
    expect(page.locator("#top-classes [data-testid='label-output-value']")).to_have_count(0)
    assert recorded.outside_requests() == []


def test_phone_viewport(open_page, photos: list[Photo]) -> None:
    recorded = open_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = recorded.page
    example_button(page, "orange.jpg").tap()
    assert top_class(page) in photo(photos, "orange.jpg").accepted
    # Nothing wider than the phone: no sideways scrolling, the result fits the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#top-classes").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    page.screenshot(path=ARTIFACTS / "screenshot-phone.png", full_page=True)
    assert recorded.outside_requests() == []


def test_show_where_it_looked_overlays_a_heatmap(open_page, photos: list[Photo]) -> None:
    """Classify, then "Show where it looked": the map over the photo, with its legend, for the top class
    or another class of the result picked from the list. UPDATE_SCREENSHOT=1 refreshes docs/explain.png
    (the running cheetah: a photo where the map is on the animal, docs/explanations.md)."""
    recorded = open_page(viewport={"width": 1280, "height": 1300})
    page = recorded.page
    example_button(page, "cheetah.jpg").click()
    top = top_class(page)
    assert top in photo(photos, "cheetah.jpg").accepted
    picker = page.locator("#explain-target input")
    expect(picker).to_have_value(top, timeout=RESULT_TIMEOUT_MS)  # filled from the result, top first
    page.locator("#explain").click()
    heatmap = page.locator("#heatmap img")
    expect(heatmap).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    legend = page.locator("#explain-legend")
    expect(legend).to_contain_text("hiding this region lowers", timeout=RESULT_TIMEOUT_MS)
    expect(legend).to_contain_text(top)
    expect(legend).to_contain_text(DEFAULT.name)
    size = heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size[0] > 100 and size[1] > 50, size
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "explain.png"
    page.screenshot(path=shot)
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        small = Image.open(shot).convert("RGB").quantize(colors=128)
        small.save(REPO / "docs" / "explain.png", optimize=True)

    # Another class of the result: the legend names it.
    picker.click()
    options = page.locator("ul[role='listbox'] li")
    expect(options.nth(1)).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    second = options.nth(1).inner_text().strip()
    assert second and second != top
    options.nth(1).click()
    page.locator("#explain").click()
    expect(legend).to_contain_text(second, timeout=RESULT_TIMEOUT_MS)
    expect(heatmap).to_be_visible()
    assert recorded.outside_requests() == []


def test_many_images_give_a_table_and_a_csv(open_page, photos: list[Photo], tmp_path: Path) -> None:
    """The "Many images" tab: three files (one not an image) give three rows, best label and score for the
    photos and the error for the other, and the same rows as a CSV download."""
    recorded = open_page(viewport={"width": 1280, "height": 1100})
    page = recorded.page
    page.get_by_role("tab", name="Many images").click()
    chosen = [photo(photos, "lion.jpg"), photo(photos, "zebra.jpg")]
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo\n" * 10)
    page.locator("#bulk-files input[type='file']").set_input_files([p.path for p in chosen] + [fake])
    expect(page.locator("#bulk-files")).to_contain_text(
        "notes", timeout=RESULT_TIMEOUT_MS
    )  # all three uploaded
    page.locator("#bulk-classify").click()
    rows = page.locator("#bulk-table [role='row']")  # the header row, then one per file
    expect(rows).to_have_count(4, timeout=RESULT_TIMEOUT_MS)
    texts = [" ".join(text.split()) for text in rows.all_inner_texts()[1:]]
    for found, wanted in zip(texts, chosen, strict=False):
        assert wanted.path.name in found and any(label in found for label in wanted.accepted), found
    assert "notes.jpg" in texts[2] and "not an image" in texts[2], texts[2]
    link = page.locator("#bulk-csv a").first
    expect(link).to_be_visible(timeout=RESULT_TIMEOUT_MS)
    with page.expect_download() as download:
        link.click()
    rows_csv = list(csv.reader(Path(download.value.path()).read_text().splitlines()))
    assert rows_csv[0] == ["file", "top label", "score"] and len(rows_csv) == 4, rows_csv
    assert rows_csv[1][:2] == ["lion.jpg", texts[0].split(" ", 1)[1].rsplit(" ", 1)[0]], (rows_csv, texts)
    assert rows_csv[3][0] == "notes.jpg" and rows_csv[3][1].startswith("error: "), rows_csv
    page.screenshot(path=ARTIFACTS / "screenshot-many.png")
    assert recorded.outside_requests() == []
