"""The /docs page in real headless Chromium: it renders every operation of /openapi.json and asks
nothing of any host but ours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = REPO_ROOT / "test-artifacts" / "docs-page.png"


def _unavailable(reason: str) -> None:
    """Skip with the reason on a machine without a browser; under CI that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}")
    pytest.skip(reason)


def test_docs_page_renders_every_operation_from_this_server_only(committed_server: Any) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM}: install Debian's chromium package")
    document = requests.get(f"{committed_server.url}/openapi.json", timeout=30).json()
    operations = sum(
        method != "parameters" for item in document["paths"].values() for method in item
    )
    elsewhere: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on(
                "request",
                lambda sent: (
                    None
                    if sent.url.startswith((committed_server.url, "data:"))
                    else elsewhere.append(sent.url)
                ),
            )
            page.on(
                "console",
                lambda message: (
                    console_errors.append(message.text) if message.type == "error" else None
                ),
            )
            page.goto(f"{committed_server.url}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            assert page.locator(".opblock").count() == operations
            page.locator(".opblock-summary-path", has_text="/predict").first.click()
            page.wait_for_selector("text=Classify one or more digits")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            print(f"docs page screenshot: {SCREENSHOT}")
        finally:
            browser.close()
    assert elsewhere == []
    assert console_errors == []
