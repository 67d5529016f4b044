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


def open_playground(browser, server, height: int, max_tokens: int):
    """A page of the playground (without its Content-Security-Policy, so the test's probes run) with
    the model listed and a prompt, max tokens and seed filled in; and the list its errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": height}, bypass_csp=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 1")
    page.fill("#prompt", "ROMEO:\nBut soft, what light")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#seed", "1")
    return page, errors


@pytest.mark.slow
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
            page, errors = open_playground(browser, server, height=900, max_tokens=400)
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


INSIDE_TABS = ("lens", "heads", "step", "ablate", "embeddings")


@pytest.mark.slow
def test_inside_panel_in_chromium(tmp_path):
    """Every tab of the Inside panel draws, in Chromium, over a generated text; a screenshot of each
    (also copied to $TINYGPT_INSIDE_SCREENSHOTS/playground-inside-TAB.png when set, as for docs/inside.md;
    $TINYGPT_SERVE_SCREENSHOT_RUN serves a trained run instead of the random one)."""
    executable = chromium()
    run = os.environ.get("TINYGPT_SERVE_SCREENSHOT_RUN") or make_run(tmp_path / "shakespeare", block_size=64)
    app, served = serve([run])
    c = served[0].model.config
    with LiveServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page, errors = open_playground(browser, server, height=1000, max_tokens=24)
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
            shots = {}

            def shoot(tab):
                shots[tab] = tmp_path / f"playground-inside-{tab}.png"
                page.locator("#inside-panel").screenshot(path=str(shots[tab]))

            # the logit lens: one row per layer and the embeddings, one column per token (and a header)
            page.click("#inside-tabs button[data-tab=lens]")
            page.wait_for_function("document.querySelectorAll('#lens-table tr').length > 0")
            assert page.locator("#lens-table tr").count() == c.n_layer + 2
            assert "%" in page.locator("#lens-table td").first.get_attribute("title")
            shoot("lens")

            # the head gallery: one drawn pattern per head; clicking one opens it in the attention view
            page.click("#inside-tabs button[data-tab=heads]")
            page.wait_for_function(f"document.querySelectorAll('#gallery figure').length === {c.n_layer * c.n_head}")
            coloured = page.evaluate("""() => {
                const c = document.querySelector('#gallery canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 250) n++; return n / (d.length / 4); }""")
            assert coloured > 0.3  # the lower triangle, at least
            assert page.locator("#head-scores tr").count() == c.n_layer * c.n_head + 1
            shoot("heads")
            page.locator("#gallery figure").last.click()
            sync_api.expect(page.locator("#layer")).to_have_value(str(c.n_layer - 1))
            sync_api.expect(page.locator("#head")).to_have_value(str(c.n_head - 1))

            # attention step by step for a clicked token: one row per key (and a header), future keys masked
            page.click("#inside-tabs button[data-tab=step]")
            page.wait_for_function("document.querySelectorAll('#step-tokens .tok').length > 0")
            page.locator("#step-tokens .tok").nth(10).click()
            page.wait_for_function("document.querySelectorAll('#step-table tr').length > 0")
            n_tokens = page.locator("#step-tokens .tok").count()
            assert page.locator("#step-table tr").count() == n_tokens + 1
            assert page.locator("#step-table tr.masked").count() == n_tokens - 11
            shoot("step")

            # the ablation heatmap, computed on request with progress
            page.click("#inside-tabs button[data-tab=ablate]")
            page.click("#ablate-run")
            page.wait_for_function("document.getElementById('ablate-status').textContent.startsWith('baseline')",
                                   timeout=60_000)
            assert page.evaluate("document.getElementById('ablate-progress').value") == c.n_layer
            assert page.locator("#ablate-table tr").count() == c.n_layer * c.n_head + 1
            shoot("ablate")

            # nearest tokens by cosine similarity and by dot product
            page.click("#inside-tabs button[data-tab=embeddings]")
            page.fill("#embedding-token", "e")
            page.click("#embedding-search")
            page.wait_for_function("document.querySelectorAll('#neighbours table').length === 2")
            assert page.locator("#neighbours table").first.locator("tr").count() == 10
            shoot("embeddings")
            assert not errors, errors
        finally:
            browser.close()
    for tab in INSIDE_TABS:
        assert shots[tab].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("TINYGPT_INSIDE_SCREENSHOTS"):
            shutil.copyfile(shots[tab], Path(os.environ["TINYGPT_INSIDE_SCREENSHOTS"]) / f"playground-inside-{tab}.png")


@pytest.mark.slow
def test_chat_mode_in_chromium(tmp_path):
    """A chat model gets the chat mode: a message is sent with the history to /v1/chat/completions,
    the reply arrives as an assistant turn of shaded tokens with their alternatives, the attention view
    draws the conversation in the chat template's tokens, and a model without the template keeps the
    completion mode."""
    executable = chromium()
    app, served = serve([make_run(tmp_path / "chatty", block_size=64, chat=True), make_run(tmp_path / "plain")])
    with LiveServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, bypass_csp=True)
            errors, sent = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: sent.append((r.url, r.post_data_json)) if r.method == "POST" else None)
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 2")
            assert page.locator("#model").input_value() == "chatty"
            sync_api.expect(page.locator("#mode-box")).to_be_visible()
            sync_api.expect(page.locator("#generate")).to_have_text("Send")
            page.fill("#system", "Be brief.")
            page.fill("#prompt", "Hello there")
            page.fill("#max-tokens", "20")
            page.fill("#seed", "1")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done') || "
                                   "document.getElementById('status').className === 'error'", timeout=60_000)
            assert page.inner_text("#status").startswith("done"), page.inner_text("#status")
            body = [b for u, b in sent if u.endswith("/v1/chat/completions")][-1]
            assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
            assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["stream"] is True
            # the conversation as turns; the reply's tokens shaded by their probability
            assert page.locator("#output .turn.system").inner_text() == "Be brief."
            assert page.locator("#output .turn.user").inner_text() == "Hello there"
            reply = page.locator("#output .turn.assistant .tok")
            assert 1 <= reply.count() <= 20
            assert all(reply.nth(i).evaluate("s => s.style.background !== ''") for i in range(reply.count()))
            assert page.input_value("#prompt") == ""  # the message box is ready for the next one
            reply.first.click()
            assert page.locator("#alternatives tr").count() == 5
            # the attention view over the conversation, special tokens included
            page.wait_for_function("document.querySelectorAll('#attn-tokens .tok').length > 0")
            tokens = page.locator("#attn-tokens .tok").all_inner_texts()
            assert tokens[:2] == ["<|system|>", "B"] and "<|user|>" in tokens and "<|assistant|>" in tokens
            # the Inside panel looks at the same tokens
            page.wait_for_function("document.querySelectorAll('#lens-table tr').length > 0")
            assert page.locator("#lens-table th").nth(1).inner_text() == "<|system|>"
            # a conversation wider than the window scrolls inside its panel; the page keeps the window's width
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280

            # a second message goes with the history; Enter sends it
            first_reply = body["messages"]
            page.fill("#prompt", "And now?")
            page.press("#prompt", "Enter")
            page.wait_for_function("document.querySelectorAll('#output .turn.assistant').length === 2 && "
                                   "document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
            body = [b for u, b in sent if u.endswith("/v1/chat/completions")][-1]
            assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
            assert body["messages"][:2] == first_reply and body["messages"][3]["content"] == "And now?"
            assert page.locator("#output .turn.user").count() == 2
            page.click("#new-chat")
            assert page.locator("#output .turn").count() == 0

            # a model without a chat template: completion mode only
            page.select_option("#model", "plain")
            sync_api.expect(page.locator("#mode-box")).to_be_hidden()
            sync_api.expect(page.locator("#generate")).to_have_text("Generate")
            page.fill("#prompt", "ROMEO:")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
            assert page.locator("#output .turn").count() == 0 and page.locator("#output .tok").count() >= 10
            assert [u for u, _ in sent if u.endswith("completions")][-1].endswith("/v1/completions")
            assert not errors, errors
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        finally:
            browser.close()
