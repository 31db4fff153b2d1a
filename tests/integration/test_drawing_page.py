"""The drawing page in real headless Chromium against a real gunicorn: strokes drawn with the mouse
(and with touch at phone width) are read as the right digits, the bars, the model's 28x28 input,
the model version and errors are shown."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from service.model.repository import ModelRepository
from tests.conftest import COMMITTED_MODELS
from tests.integration.chromium import (
    ANSWER_TIMEOUT_MS,
    ARTIFACTS,
    DIGIT_STROKES,
    Stroke,
    escape_mid_stroke,
    ink_near,
    ink_on,
    one_finger_touch,
    two_finger_touch,
)

EMPTY_ANSWER = "\N{EN DASH}"  # what #digit shows before anything is drawn


@pytest.fixture
def page(browser: Any, committed_server: Any) -> Iterator[object]:
    """A fresh desktop-sized page showing the drawing page of the committed model's server."""
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    page = context.new_page()
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    page.goto(f"{committed_server.url}/")
    yield page
    context.close()


def _pad_box(page: Any) -> dict[str, float]:
    box = page.locator("#pad").bounding_box()
    assert box is not None and box["width"] > 100, "the canvas is not visible"
    return dict(box)


def _draw_with_mouse(page: Any, strokes: list[Stroke]) -> None:
    box = _pad_box(page)
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=4)
        page.mouse.up()


def _answer(page: Any) -> int:
    """The digit the page shows once it has an answer for the current drawing."""
    # the page is "ready" only when the answer is for the drawing as it is now (see app.js)
    page.locator("body[data-state='ready']").wait_for(state="attached")
    return int(page.locator("#digit").inner_text())


def _screenshot(page: Any, name: str, record_property: Any) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    record_property("screenshot", str(path))
    print(f"\nscreenshot: {path}")
    return path


def test_page_and_assets_are_served_with_a_strict_policy(committed_server: Any) -> None:
    index = requests.get(f"{committed_server.url}/", timeout=10)
    assert index.status_code == 200 and index.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in index.headers["Content-Security-Policy"]
    assert '<canvas id="pad"' in index.text
    for name in ("token.js", "app.js"):
        script = requests.get(f"{committed_server.url}/page/{name}", timeout=10)
        assert script.status_code == 200 and "javascript" in script.headers["Content-Type"]
        assert f'src="page/{name}"' in index.text
    traversal = requests.get(f"{committed_server.url}/page/..%2Fpage.py", timeout=10)
    assert traversal.status_code == 404
    unknown = requests.get(f"{committed_server.url}/page/secret.txt", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"


@pytest.mark.browser
def test_drawn_digits_are_read(page: Any, committed_server: Any, record_property: Any) -> None:
    version = ModelRepository(COMMITTED_MODELS).latest()
    assert version is not None
    # nothing is loaded from anywhere but the service itself
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.reload()
    for digit, strokes in DIGIT_STROKES.items():
        page.locator("#clear").click()
        assert page.locator("#digit").inner_text() == EMPTY_ANSWER
        _draw_with_mouse(page, strokes)
        assert _answer(page) == digit, f"drew a {digit}"
        # the bars: ten of them, the drawn digit's is the highest and marked best
        widths = page.locator(".bar-fill").evaluate_all(
            "fills => fills.map(f => parseFloat(f.style.width))"
        )
        assert len(widths) == 10 and max(widths) == widths[digit] and widths[digit] > 40
        assert page.locator(f'.bar.best[data-digit="{digit}"]').count() == 1
        # the 28x28 image the model saw is shown, and decodes as a 28x28 image
        seen = page.locator("#seen")
        assert seen.is_visible()
        assert seen.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [28, 28]
        if digit == 7:
            _screenshot(page, "drawing-page-7", record_property)
    assert page.locator("#model-version").inner_text() == f"mnist version {version.version}"
    assert page.locator("#error").is_hidden()
    foreign = [url for url in requested if not url.startswith((committed_server.url, "data:"))]
    assert requested and not foreign, f"requests outside the service: {foreign}"


@pytest.mark.browser
def test_clear_resets_the_answer(page: Any) -> None:
    _draw_with_mouse(page, DIGIT_STROKES[1])
    assert _answer(page) == 1
    page.locator("#clear").click()
    assert page.locator("#digit").inner_text() == EMPTY_ANSWER
    assert page.locator("#seen").is_hidden()
    assert page.locator("body").get_attribute("data-state") == "empty"


@pytest.mark.browser
def test_escape_mid_stroke_clears_the_pad_and_ends_the_stroke(page: Any) -> None:
    escape_mid_stroke(page, "#pad")
    # the rest of the stroke, after Escape, drew nothing: the pad stays blank
    assert ink_on(page, "#pad") == 0
    assert page.locator("body").get_attribute("data-state") == "empty"
    assert page.locator("#digit").inner_text() == EMPTY_ANSWER
    # the next stroke draws again
    _draw_with_mouse(page, DIGIT_STROKES[1])
    assert _answer(page) == 1


@pytest.mark.browser
def test_a_refused_request_shows_the_services_message(page: Any) -> None:
    # the browser sends garbage instead of the PNG; the real service refuses it, the page says why
    page.route(
        "**/predict?*",
        lambda route: route.continue_(post_data=b"definitely not a png"),
    )
    _draw_with_mouse(page, DIGIT_STROKES[7])
    page.locator("body[data-state='error']").wait_for(state="attached")
    error = page.locator("#error")
    assert error.is_visible()
    assert "send PNG, JPEG" in error.inner_text()


@pytest.mark.browser
def test_touch_drawing_at_phone_width(
    browser: Any, committed_server: Any, record_property: Any
) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    try:
        page = context.new_page()
        page.set_default_timeout(ANSWER_TIMEOUT_MS)
        page.goto(f"{committed_server.url}/")
        box = _pad_box(page)
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, "the pad overflows a phone"
        # touch goes through Chromium's real touch -> pointer event path
        cdp = context.new_cdp_session(page)
        for stroke in DIGIT_STROKES[7]:
            points = [
                {"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]}
                for x, y in stroke
            ]
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [points[0]]})
            for start, end in itertools.pairwise(points):
                for i in range(1, 9):
                    point = {
                        "x": start["x"] + (end["x"] - start["x"]) * i / 8,
                        "y": start["y"] + (end["y"] - start["y"]) * i / 8,
                    }
                    cdp.send(
                        "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]}
                    )
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert _answer(page) == 7
        # nothing is wider than the phone's screen
        assert page.locator("html").evaluate("html => html.scrollWidth") <= 390
        _screenshot(page, "drawing-page-phone", record_property)
    finally:
        context.close()


@pytest.mark.browser
def test_a_second_finger_on_the_pad_draws_nothing(browser: Any, committed_server: Any) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    try:
        page = context.new_page()
        page.set_default_timeout(ANSWER_TIMEOUT_MS)
        page.goto(f"{committed_server.url}/")
        two_finger_touch(context, page, "#pad")
        assert ink_near(page, "#pad", 0.17, 0.15) > 0  # the first finger draws
        # no line from one finger to the other, nothing where the second finger moved
        assert ink_near(page, "#pad", 0.5, 0.5) == 0
        assert ink_near(page, "#pad", 0.82, 0.85) == 0
        # both lifted: the next finger draws again
        one_finger_touch(context, page, "#pad", [(0.4, 0.7), (0.5, 0.7), (0.6, 0.7)])
        assert ink_near(page, "#pad", 0.5, 0.7) > 0
    finally:
        context.close()


@pytest.mark.browser
def test_wrong_answers_are_corrected_with_a_tap(page: Any, committed_server: Any) -> None:
    assert page.locator("#wrong").is_hidden()  # nothing to correct before an answer
    _draw_with_mouse(page, DIGIT_STROKES[4])
    answered = _answer(page)
    assert page.locator("#wrong").is_visible()
    assert page.locator("#wrong-label").text_content() == "Wrong? Tap the right digit"
    assert page.locator(f'#digit-keys button.answered[data-digit="{answered}"]').count() == 1
    right = (answered + 1) % 10  # a person says it was another digit
    page.locator(f'#digit-keys button[data-digit="{right}"]').click()
    page.locator("body[data-feedback='sent']").wait_for(state="attached")
    assert page.locator("#feedback-status").inner_text() == f"Thank you: recorded as {right}."
    assert page.locator("#digit-keys button:enabled").count() == 0  # once per answer
    # the service recorded it against the version that answered
    version = ModelRepository(COMMITTED_MODELS).latest()
    assert version is not None
    metrics = requests.get(f"{committed_server.url}/metrics", timeout=30).text
    assert f'mnist_feedback_records{{version="{version.version}"}}' in metrics
    page.locator("#clear").click()
    assert page.locator("#wrong").is_hidden()
