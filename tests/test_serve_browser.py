"""The playground page in a real browser: Debian's Chromium, driven by Playwright, against a server
this test starts on 127.0.0.1. It types a prompt, watches the text arrive in several steps, opens a
token's alternatives, draws an attention heatmap and checks that pixels were drawn, and saves a
screenshot (also to $TINYGPT_SERVE_SCREENSHOT when set; $TINYGPT_SERVE_SCREENSHOT_RUN serves that
trained run instead of the random one, as for the README's picture)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (FastAPI, uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from serving_helpers import LiveServer, make_run, serve  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def chromium() -> str:
    for path in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).is_file():
            return path
    pytest.skip("no Chromium installed (Debian: apt-get install chromium); CI installs it")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # a tiny model: see conftest
def test_playground_in_chromium(tmp_path):
    executable = chromium()
    run = os.environ.get("TINYGPT_SERVE_SCREENSHOT_RUN") or make_run(tmp_path / "shakespeare", block_size=64)
    app, served = serve([run])
    screenshot = tmp_path / "playground.png"
    with LiveServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            # under the page's own Content-Security-Policy (nothing from elsewhere), it runs and lists the model
            strict = browser.new_page()
            problems = []
            strict.on("pageerror", lambda e: problems.append(str(e)))
            strict.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            strict.goto(server.url + "/")
            sync_api.expect(strict.locator("#model option")).to_have_count(1)
            assert strict.locator("#model option").first.text_content() == served[0].id
            assert not problems, problems
            strict.close()

            # the test's own probes are scripts, which that policy would refuse
            page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 1")

            page.fill("#prompt", "ROMEO:\nBut soft, what light")
            page.fill("#max-tokens", "400")
            page.fill("#seed", "1")
            # count the generated tokens on the page every time it changes
            page.evaluate("""() => {
                window.tokenCounts = [];
                new MutationObserver(() => window.tokenCounts.push(document.querySelectorAll('#output .tok').length))
                    .observe(document.getElementById('output'), {childList: true, subtree: true});
            }""")
            page.click("#generate")
            page.wait_for_function("/^(done|stopped)|error/.test(document.getElementById('status').textContent) || "
                                   "document.getElementById('status').className === 'error'", timeout=60_000)
            assert page.inner_text("#status").startswith("done"), page.inner_text("#status")
            counts = page.evaluate("window.tokenCounts")
            final = page.locator("#output .tok").count()
            assert final >= 200  # characters; a few may share a span with the next
            steps = sorted(set(c for c in counts if 0 < c < final))
            assert len(steps) >= 3, f"the text arrived all at once: {counts[:20]}"

            # a token's alternatives, with their probabilities
            token = page.locator("#output .tok").nth(10)
            token.click()
            rows = page.locator("#alternatives tr")
            assert rows.count() == 5  # the page asks for 5 alternatives
            assert page.locator("#alternatives tr.chosen").count() <= 1
            assert "%" in page.inner_text("#alternatives")

            # the attention heatmap, drawn after the text arrived; then another layer and head
            page.wait_for_function("document.querySelectorAll('#attn-tokens .tok').length > 0")
            page.select_option("#layer", "1")
            page.select_option("#head", "1")
            page.wait_for_timeout(300)
            page.wait_for_function("document.querySelectorAll('#attn-tokens .tok').length > 0")
            drawn = page.evaluate("""() => {
                const c = document.getElementById('heatmap');
                const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let coloured = 0;
                for (let i = 0; i < data.length; i += 4) if (data[i] < 250 || data[i + 1] < 250) coloured++;
                return {coloured, total: data.length / 4};
            }""")
            assert drawn["coloured"] > drawn["total"] // 4  # the lower triangle, at least
            # a query token highlights the earlier tokens it attends to
            page.locator("#attn-tokens .tok").nth(20).click()
            highlighted = page.evaluate(
                "[...document.querySelectorAll('#attn-tokens .tok')].filter(s => s.style.background).length")
            assert 1 <= highlighted <= 21
            assert page.locator("#attn-tokens .tok.query").count() == 1
            assert not errors, errors
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("TINYGPT_SERVE_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["TINYGPT_SERVE_SCREENSHOT"])


BLANK_CANVAS = """() => {
    const c = document.getElementById('heatmap');
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] !== 0 && (data[i] < 250 || data[i + 1] < 250)) return false;
    return true;
}"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # a tiny model: see conftest
def test_playground_clears_the_map_labels_it_and_fits_a_phone(tmp_path):
    executable = chromium()
    app, _ = serve([make_run(tmp_path / "shakespeare", block_size=64)])
    with LiveServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 400, "height": 800}, bypass_csp=True)  # a phone
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 1")
            # one column, nothing wider than the window
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            prompt, output = page.locator("#prompt").bounding_box(), page.locator("#output").bounding_box()
            assert output["y"] > prompt["y"] + prompt["height"] and output["x"] + output["width"] <= 400

            page.fill("#prompt", "ROMEO:\nBut soft")
            page.fill("#max-tokens", "20")
            page.fill("#seed", "1")
            page.click("#generate")
            page.wait_for_function("document.querySelectorAll('#attn-tokens .tok').length > 0", timeout=60_000)
            assert not page.evaluate(BLANK_CANVAS)
            assert "%" in page.inner_text("#heatmap-max") and page.locator("#heatmap-legend").is_visible()
            # hovering over the lower-left cell names both tokens and the weight
            box = page.locator("#heatmap").bounding_box()
            page.locator("#heatmap").hover(position={"x": 2, "y": box["height"] - 2})  # scrolls it into view
            hover = page.inner_text("#heatmap-hover")
            assert hover.startswith("token ") and "→ token 0" in hover and hover.endswith("%"), hover
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

            # the text changes: the map of the old one goes
            page.fill("#prompt", "JULIET:")
            assert page.locator("#attn-tokens .tok").count() == 0 and page.evaluate(BLANK_CANVAS)

            # a generation that is stopped leaves no map of a text it no longer matches
            page.click("#draw-attention")
            page.wait_for_function("document.querySelectorAll('#attn-tokens .tok').length > 0")
            page.fill("#max-tokens", "2000")
            page.click("#generate")
            page.wait_for_function("document.querySelectorAll('#output .tok').length > 3", timeout=60_000)
            page.click("#stop-button")
            page.wait_for_function("/^stopped/.test(document.getElementById('status').textContent)", timeout=60_000)
            assert page.locator("#attn-tokens .tok").count() == 0 and page.evaluate(BLANK_CANVAS)
            assert not errors, errors
        finally:
            browser.close()
