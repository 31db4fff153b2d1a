"""Both pages in real headless Chromium against a gunicorn whose state changes under them: the
lesson follows a promoted model of another shape and a model that becomes ready after the page
opened; with API_TOKENS set, a 401 asks for a token that both pages then send."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.chromium import ANSWER_TIMEOUT_MS, DIGIT_STROKES, Stroke
from tests.service.conftest import committed_parts, publish_copy, set_state

DESKTOP = {"width": 1280, "height": 900}
TOKEN = "page-token-0123456789"


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


def _served_version(url: str, headers: dict[str, str] | None = None) -> int | None:
    digit = {"images": [committed_parts()[2]["images"][0]]}
    response = requests.post(f"{url}/predict", json=digit, headers=headers or {}, timeout=10)
    return int(response.json()["model"]["version"]) if response.status_code == 200 else None


def _draw(page: Any, selector: str, strokes: list[Stroke]) -> None:
    box = page.locator(selector).bounding_box()
    assert box is not None and box["width"] > 100
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=4)
        page.mouse.up()


def _explain_sample(page: Any) -> dict[str, Any]:
    """Draw the sample digit, wait for its explanation; what the page then shows of part 5."""
    page.locator("#learn-sample").click()
    page.locator("body[data-explain='ready']").wait_for(state="attached")
    return {
        "explanation": page.evaluate("learnPage.explanation()"),
        "weights": page.evaluate("learnPage.weights()"),
        "header": page.locator("#inside-model").inner_text(),
        "status": page.locator("#explain-status").inner_text(),
        "unit": page.locator("#unit-info").inner_text(),
    }


def _open_learn(browser: Any, url: str) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/learn")
    page.locator("body[data-ready='true']").wait_for(state="attached")
    return context, page, errors


@pytest.mark.browser
def test_the_lesson_follows_a_promoted_model_of_another_shape(
    browser: Any, gunicorn_server: Any, tiny_trained_run: Any, tmp_path: Path
) -> None:
    from training.pipeline import publish_run

    root = tmp_path / "models"
    publish_copy(root)  # version 1: the committed 784-800-10 model
    server = gunicorn_server({"MODEL_DIR": str(root), "MODEL_POLL_SECONDS": "0.5"}, workers=1)
    context, page, errors = _open_learn(browser, server.url)
    try:
        before = _explain_sample(page)
        assert before["weights"]["units"] == 800 and before["weights"]["model"]["version"] == 1
        assert "version 1, 784 → 800 → 10" in before["header"]
        # version 2: the tiny 784-32-10 model, promoted while the page stays open
        publish_run(tiny_trained_run, root, min_accuracy=0.0)
        set_state(root, stable=2, history=(1,))
        _wait_until(lambda: _served_version(server.url) == 2, "version 2 serves")
        after = _explain_sample(page)
        assert after["explanation"]["model"]["version"] == 2
        assert len(after["explanation"]["explanations"][0]["hidden"][0]) == 32
        # the weights, the header and the unit details are version 2's, like the activations
        assert after["weights"]["units"] == 32 and after["weights"]["model"]["version"] == 2
        assert "version 2, 784 → 32 → 10" in after["header"], after["header"]
        assert "of 32 hidden units" in after["status"]
        assert "(rank " in after["unit"] and " of 32)" in after["unit"], after["unit"]
        assert page.locator("#weights-grid").evaluate("c => c.width") == 6 * (28 + 6)  # 6x6 tiles
    finally:
        context.close()
    assert not errors, errors


@pytest.mark.browser
def test_the_lesson_loads_the_weights_once_the_model_becomes_ready(
    browser: Any, gunicorn_server: Any, tmp_path: Path
) -> None:
    broken = publish_copy(tmp_path)
    card = broken.card_path.read_text()
    broken.card_path.write_text("{not json")
    server = gunicorn_server(
        {"MODEL_DIR": str(tmp_path), "MODEL_POLL_SECONDS": "0.5"}, workers=1, wait=False
    )
    _wait_until(lambda: "no valid model in" in server.log(), "the server says it has no model")
    context, page, errors = _open_learn(browser, server.url)
    try:
        header = page.locator("#inside-model")
        _wait_until(lambda: header.inner_text().startswith("unavailable"), "unavailable shown")
        assert page.evaluate("learnPage.weights()") is None
        broken.card_path.write_text(card)
        _wait_until(lambda: _served_version(server.url) == 1, "version 1 serves")
        shown = _explain_sample(page)  # no reload of the page
        assert shown["weights"] is not None and shown["weights"]["units"] == 800
        assert "version 1, 784 → 800 → 10" in shown["header"], shown["header"]
        assert shown["unit"].startswith("Unit ") and "(rank " in shown["unit"]
    finally:
        context.close()
    assert not errors, errors


@pytest.mark.browser
def test_with_api_tokens_both_pages_ask_for_a_token_after_a_401_and_send_it(
    browser: Any, gunicorn_server: Any
) -> None:
    server = gunicorn_server({"API_TOKENS": TOKEN}, workers=1)
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    try:
        page = context.new_page()
        page.set_default_timeout(ANSWER_TIMEOUT_MS)
        page.goto(f"{server.url}/")
        form = page.locator("#token-form")
        assert form.is_hidden()  # nothing asked before the service refuses
        _draw(page, "#pad", DIGIT_STROKES[7])
        page.locator("body[data-token='needed']").wait_for(state="attached")
        assert form.is_visible()
        assert "Authorization" in page.locator("#error").inner_text()
        page.locator("#token").fill("not-the-token")
        # the answer to the request sent with the token (a debounced request of the drawing,
        # sent without one, may still be answered after the click)
        with page.expect_response(
            lambda response: (
                "/predict" in response.url and "authorization" in response.request.headers
            )
        ) as refused:
            page.get_by_role("button", name="Use the token").click()
        assert refused.value.status == 401
        assert refused.value.request.headers["authorization"] == "Bearer not-the-token"
        page.locator("body[data-state='error']").wait_for(state="attached")
        assert "Authorization" in page.locator("#error").inner_text()  # a wrong one: refused
        page.locator("#token").fill(TOKEN)
        page.get_by_role("button", name="Use the token").click()
        page.locator("body[data-state='ready']").wait_for(state="attached")
        assert page.locator("#digit").inner_text() == "7"
        assert page.locator("#error").is_hidden()
        assert page.evaluate("sessionStorage.getItem('mnist.token')") == TOKEN
        # the lesson in the same tab uses the stored token: weights and explanation, no form
        page.locator("#learn-link").click()
        page.wait_for_url("**/learn")
        page.locator("body[data-explain='ready']").wait_for(state="attached")
        assert page.evaluate("learnPage.explanation()")["explanations"][0]["digit"] == 7
        assert page.evaluate("learnPage.weights()")["units"] == 800
        assert page.locator("#token-form").is_hidden()
    finally:
        context.close()
    # a new tab of the lesson alone: refused, asked, then answered
    context, page, errors = _open_learn(browser, server.url)
    try:
        page.locator("body[data-token='needed']").wait_for(state="attached")  # the weights: 401
        assert page.evaluate("learnPage.weights()") is None
        page.locator("#learn-sample").click()
        page.locator("body[data-explain='error']").wait_for(state="attached")
        assert "Authorization" in page.locator("#explain-status").inner_text()
        page.locator("#token").fill(TOKEN)
        page.locator("#token").press("Enter")
        page.locator("body[data-explain='ready']").wait_for(state="attached")
        assert page.locator("#explain-digit").inner_text().isdigit()
        _wait_until(lambda: page.evaluate("learnPage.weights()") is not None, "weights loaded")
        assert "784 → 800 → 10" in page.locator("#inside-model").inner_text()
    finally:
        context.close()
    assert not errors, errors
