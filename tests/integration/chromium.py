"""What the browser tests share: Debian's headless Chromium, where screenshots go, and digits
drawn the way a person draws them. The ``browser`` fixture is in tests/integration/conftest.py."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
ANSWER_TIMEOUT_MS = 15_000

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Stroke:
    """Points along an elliptic arc, angles in degrees (0 = right, 90 = down), in pad fractions."""
    steps = max(8, int(abs(end - start) / 8))
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / steps)),
            cy + ry * math.sin(math.radians(start + (end - start) * i / steps)),
        )
        for i in range(steps + 1)
    ]


# Digits as a person draws them, in fractions of the pad (x right, y down), one list per stroke.
DIGIT_STROKES: dict[int, list[Stroke]] = {
    0: [_arc(0.5, 0.5, 0.2, 0.32, -90, 275)],
    1: [[(0.44, 0.24), (0.53, 0.15), (0.53, 0.85)]],
    2: [[*_arc(0.5, 0.33, 0.2, 0.17, 200, 360), (0.66, 0.45), (0.28, 0.84), (0.74, 0.84)]],
    3: [_arc(0.48, 0.31, 0.2, 0.15, 210, 450), _arc(0.48, 0.64, 0.22, 0.19, -90, 150)],
    4: [[(0.36, 0.15), (0.26, 0.58), (0.76, 0.58)], [(0.62, 0.3), (0.62, 0.86)]],
    7: [[(0.26, 0.2), (0.74, 0.2), (0.44, 0.86)]],
}


def unavailable(reason: str) -> None:
    """Skip with the reason on a machine without a browser; under CI that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def ink_near(page: Any, selector: str, fx: float, fy: float, half: int = 5) -> int:
    """Dark pixels of the canvas ``selector`` in a square of side 2*half around (fx, fy), in
    fractions of the canvas."""
    return int(
        page.locator(selector).evaluate(
            "(c, [fx, fy, h]) => { const x = Math.round(fx * c.width) - h;"
            " const y = Math.round(fy * c.height) - h;"
            " const d = c.getContext('2d').getImageData(x, y, 2 * h, 2 * h).data;"
            " let n = 0; for (let k = 0; k < d.length; k += 4) n += d[k] < 128; return n; }",
            [fx, fy, half],
        )
    )


def two_finger_touch(context: Any, page: Any, selector: str) -> None:
    """Through Chromium's touch -> pointer path: a finger lands at (0.15, 0.15) of the element, a
    second at (0.85, 0.85), both move a little towards each other, both lift."""
    box = page.locator(selector).bounding_box()
    assert box is not None
    cdp = context.new_cdp_session(page)

    def at(fx: float, fy: float, finger: int) -> dict[str, float]:
        return {"x": box["x"] + fx * box["width"], "y": box["y"] + fy * box["height"], "id": finger}

    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at(0.15, 0.15, 1)]})
    both = [at(0.15, 0.15, 1), at(0.85, 0.85, 2)]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": both})
    for k in range(1, 6):
        moved = [at(0.15 + k * 0.01, 0.15, 1), at(0.85 - k * 0.01, 0.85, 2)]
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": moved})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def one_finger_touch(context: Any, page: Any, selector: str, stroke: Stroke) -> None:
    """One finger along ``stroke`` (fractions of the element), through the touch path."""
    box = page.locator(selector).bounding_box()
    assert box is not None
    cdp = context.new_cdp_session(page)
    points = [
        {"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]} for x, y in stroke
    ]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": points[:1]})
    for point in points[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def escape_mid_stroke(page: Any, selector: str) -> None:
    """With the mouse: a stroke starts at (0.2, 0.2) of the canvas ``selector`` and goes to
    (0.4, 0.2); Escape is pressed with the button still down; the stroke goes on to (0.8, 0.8)
    and the button is released."""
    box = page.locator(selector).bounding_box()
    assert box is not None

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    page.mouse.move(*at(0.2, 0.2))
    page.mouse.down()
    page.mouse.move(*at(0.4, 0.2), steps=4)
    page.keyboard.press("Escape")
    page.mouse.move(*at(0.8, 0.8), steps=8)
    page.mouse.up()


def ink_on(page: Any, selector: str) -> int:
    """Dark pixels on the whole canvas ``selector``."""
    return int(
        page.locator(selector).evaluate(
            "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let k = 0; k < d.length; k += 4) n += d[k] < 128; return n; }"
        )
    )
