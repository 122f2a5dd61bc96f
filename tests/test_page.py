"""The page at /, in a real browser (Debian's Chromium driven by Playwright): pick a painting, read the artist."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import DATASETS
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


def open_page(browser, server: Server, init_script: str | None = None, **options: object):
    """A new tab on the service's page, once it has read which artists the model knows."""
    page = browser.new_page(**options)
    if init_script:
        page.add_init_script(init_script)
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('classes').textContent.includes('Monet')")
    return page


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

    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1100, "height": 760})
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
    page = open_page(browser, torch_server, viewport={"width": 1100, "height": 760})
    page.set_input_files("#file", str(painting))
    button = page.locator("#explain")
    button.wait_for(state="visible", timeout=30_000)
    button.click()
    page.wait_for_function("document.getElementById('preview').dataset.view === 'heat'", timeout=60_000)
    page.wait_for_function(
        "document.getElementById('preview').complete && document.getElementById('preview').naturalWidth > 0"
    )
    assert button.inner_text() == "Show the painting"
    artist = page.locator("#artist").inner_text()
    assert page.locator("#view-note").inner_text() == f"Red: where the model looked for {artist}."
    page.screenshot(path=str(tmp_path / "heat.png"))
    button.click()
    assert page.locator("#preview").get_attribute("data-view") == "painting"
    assert button.inner_text() == "Where did it look?"
    page.close()


def test_a_slow_answer_about_an_earlier_painting_never_replaces_the_later_one(
    browser, onnx_server: Server, demo_data: Path, tmp_path: Path
) -> None:
    monet = sorted((demo_data / "Test" / "Claude_Monet").iterdir())[0]
    notes = tmp_path / "notes.jpg"  # not an image: refused at once
    notes.write_text("not a painting\n")
    # The first prediction is held back 1.5 s, as a slow network would.
    page = open_page(
        browser,
        onnx_server,
        init_script="""{
        const fetchNow = window.fetch;
        let first = true;
        window.fetch = (url, options) => {
          if (String(url).startsWith("/v1/predict") && first) {
            first = false;
            return new Promise((resolve) => setTimeout(resolve, 1500)).then(() => fetchNow(url, options));
          }
          return fetchNow(url, options);
        };
        }""",
    )
    page.set_input_files("#file", str(monet))
    page.set_input_files("#file", str(notes))
    page.locator("#error").wait_for(state="visible", timeout=30_000)
    page.wait_for_timeout(2500)  # the Monet answer has arrived by now, and must have been dropped
    assert page.locator("#status").inner_text() == notes.name
    assert page.locator("#answer").is_hidden()
    assert page.locator("#error").inner_text().startswith(f"{notes.name}: ")
    page.close()


@pytest.mark.parametrize("refusal", ["unknown", "not_a_painting"])
def test_a_refusal_is_said_so_with_the_closest_artist(
    browser, onnx_server: Server, demo_data: Path, refusal: str
) -> None:
    painting = sorted((demo_data / "Test" / "Claude_Monet").iterdir())[0]
    threshold = httpx.get(f"{onnx_server.url}/v1/model").json()["threshold"]
    scores = [("Rembrandt", 0.41), ("Claude_Monet", 0.35), ("Vincent_van_Gogh", 0.24)]
    answer = {
        "model": httpx.get(f"{onnx_server.url}/v1/model").json()["model"],
        "predictions": [
            {
                "filename": painting.name,
                "artist": refusal,
                "refusal": refusal,
                "closest": "Rembrandt",
                "probability": 0.41,
                "top_k": [{"artist": artist, "probability": p} for artist, p in scores],
            }
        ],
    }
    page = open_page(browser, onnx_server)
    page.route("**/v1/predict*", lambda route: route.fulfill(json=answer))
    page.set_input_files("#file", str(painting))
    page.locator("#artist").wait_for(state="visible", timeout=30_000)
    if refusal == "unknown":
        assert page.locator("#artist").inner_text() == "Not one of the artists I know"
        assert page.locator("#confidence").inner_text() == (
            f"closest: Rembrandt at 41.0%, under the {threshold * 100:.1f}% it needs to name an artist"
        )
    else:
        assert page.locator("#artist").inner_text() == "This does not look like a painting"
        assert page.locator("#confidence").inner_text() == "closest artist: Rembrandt at 41.0%"
    page.close()


def test_a_photo_is_said_not_to_be_a_painting(browser, onnx_server: Server) -> None:
    photos = sorted((DATASETS / "photos").glob("*.jpg"))[:1]
    if not photos:
        pytest.skip(f"everyday photos not found at {DATASETS / 'photos'}")
    page = open_page(browser, onnx_server)
    page.set_input_files("#file", str(photos[0]))
    artist = page.locator("#artist")
    artist.wait_for(state="visible", timeout=30_000)
    assert artist.inner_text() == "This does not look like a painting"
    assert artist.get_attribute("data-artist") == "not_a_painting"
    assert page.locator("#confidence").inner_text().startswith("closest artist: ")
    page.close()


def test_a_failed_explanation_keeps_the_prediction_on_show(browser, torch_server: Server, demo_data: Path) -> None:
    painting = sorted((demo_data / "Test" / "Claude_Monet").iterdir())[0]
    page = open_page(browser, torch_server)
    page.route(
        "**/v1/explain*",
        lambda route: route.fulfill(status=502, content_type="text/html", body="<html>Bad Gateway</html>"),
    )
    page.set_input_files("#file", str(painting))
    button = page.locator("#explain")
    button.wait_for(state="visible", timeout=30_000)
    button.click()
    page.locator("#explain-error").wait_for(state="visible", timeout=30_000)
    assert page.locator("#explain-error").inner_text().startswith("the service answered 502")
    assert page.locator("#answer").is_visible() and page.locator("#artist").inner_text()
    assert button.inner_text() == "Where did it look?" and button.is_enabled()
    assert page.locator("#preview").get_attribute("data-view") == "painting"
    page.close()


@pytest.fixture(scope="module")
def keyed_server(demo_onnx_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("page-keyed")
    (folder / "keys.txt").write_text("page-key-0123456789\n")
    server = Server(demo_onnx_path, "--api-key-file", str(folder / "keys.txt"), log=folder / "server.log")
    yield server
    server.stop()


def test_page_asks_for_the_key_when_the_service_needs_one(browser, keyed_server: Server, demo_data: Path) -> None:
    painting = sorted((demo_data / "Test" / "Claude_Monet").iterdir())[0]
    page = browser.new_page()
    page.goto(keyed_server.url + "/")
    form = page.locator("#key-form")
    form.wait_for(state="visible", timeout=30_000)
    page.fill("#key", "a-wrong-key")
    page.click("#key-form button")
    page.locator("#key-error").wait_for(state="visible", timeout=30_000)
    assert page.locator("#key-error").inner_text() == "The service refused that key."
    page.fill("#key", "page-key-0123456789")
    page.click("#key-form button")
    page.wait_for_function("document.getElementById('classes').textContent.includes('Monet')")
    assert form.is_hidden()
    page.set_input_files("#file", str(painting))
    page.locator("#artist").wait_for(state="visible", timeout=30_000)
    assert page.locator("#artist").get_attribute("data-artist")
    page.close()
