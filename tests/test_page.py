"""The page at /, in a real browser (Debian's Chromium driven by Playwright): pick a painting, read the artist."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest_serve import Server

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
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


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Installed by `make test` (scripts/install-test-deps.sh); a missing browser is a failure, not a skip.
    assert CHROMIUM.exists() or shutil.which("chromium"), "Chromium is missing: run `make test-deps`"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_page_names_the_artist_of_a_chosen_painting(
    browser,
    onnx_server: Server,
    demo_data: Path,
    tmp_path: Path,
) -> None:
    # A painting the model gets right, so that the page must show the true artist.
    for painting in sorted((demo_data / "Test" / "Vincent_van_Gogh").iterdir()):
        expected = httpx.post(
            f"{onnx_server.url}/v1/predict", files={"files": (painting.name, painting.read_bytes())}
        ).json()["predictions"][0]
        if expected["artist"] == "Vincent_van_Gogh":
            break
    else:
        pytest.fail("the demo model names no Van Gogh test painting correctly")

    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(onnx_server.url + "/")
    page.wait_for_function("document.getElementById('classes').textContent.includes('Monet')")
    page.set_input_files("#file", str(painting))
    artist = page.locator("#artist")
    artist.wait_for(state="visible", timeout=30_000)

    assert artist.get_attribute("data-artist") == expected["artist"]
    assert artist.inner_text() == "Vincent van Gogh"
    bars = page.locator("#chart .bar")
    assert bars.count() == 3  # one per artist the model knows
    assert bars.first.get_attribute("data-artist") == expected["artist"]
    assert page.locator("#preview").evaluate("img => img.complete && img.naturalWidth > 0")
    assert "efficientnet_lite0" in page.locator("#model").inner_text()
    screenshot = page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    assert not errors
    page.close()


def test_page_shows_why_a_file_was_refused(browser, onnx_server: Server, tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a painting\n" * 20)
    page = browser.new_page()
    page.goto(onnx_server.url + "/")
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert error.inner_text() == "notes.jpg: not an image Pillow can read"
    assert page.locator("#answer").is_hidden()
    page.close()


def test_api_docs_render_offline(browser, onnx_server: Server) -> None:
    # Swagger UI is served from the installed package, not a CDN: this machine has no internet.
    page = browser.new_page()
    page.goto(onnx_server.url + "/docs")
    page.get_by_text("/v1/predict").first.wait_for(timeout=30_000)
    assert "cdn." not in page.content()
    page.close()


def test_page_shows_where_the_model_looked(browser, torch_server: Server, demo_data: Path, tmp_path: Path) -> None:
    painting = sorted((demo_data / "Test" / "Claude_Monet").iterdir())[0]
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(torch_server.url + "/")
    page.wait_for_function("document.getElementById('classes').textContent.includes('Monet')")
    page.set_input_files("#file", str(painting))
    button = page.locator("#explain")
    button.wait_for(state="visible", timeout=30_000)
    button.click()
    page.wait_for_function("document.getElementById('preview').dataset.view === 'heat'", timeout=60_000)
    page.wait_for_function(
        "document.getElementById('preview').complete && document.getElementById('preview').naturalWidth > 0"
    )
    assert button.inner_text() == "Show the painting"
    page.screenshot(path=str(tmp_path / "heat.png"))
    button.click()
    assert page.locator("#preview").get_attribute("data-view") == "painting"
    assert button.inner_text() == "Where did it look?"
    page.close()
