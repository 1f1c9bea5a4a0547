"""What the browser tests share: Debian's Chromium, headless, driven by Playwright.

A test module turns these into its fixtures. Where Chromium is missing the
tests are skipped; CI installs it and sets TASKSERVICE_REQUIRE_CHROMIUM=1,
which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.server import Server

CHROMIUM = Path(os.environ.get("TASKSERVICE_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_CHROMIUM = os.environ.get("TASKSERVICE_REQUIRE_CHROMIUM") == "1"
# Headless on a machine without a display server or outside network: no
# sandbox (tests may run as root), no GPU, no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def skip_or_fail(reason: str) -> None:
    """Skip the test, or fail it where Chromium is required."""
    if REQUIRE_CHROMIUM:
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium, closed at the end; a skip (or failure) if there is none."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def start_server(tmp_path: Path, **env: str) -> Server:
    """gunicorn on a fresh SQLite file in `tmp_path`, healthy; killed if it does not get there."""
    server = Server(f"sqlite:///{tmp_path / 'tasks.sqlite3'}", tmp_path / "gunicorn.log", **env)
    try:
        server.start().wait_healthy()
    except BaseException:
        server.kill()
        raise
    return server


@contextmanager
def open_page(browser: Browser, expected_errors: str = "$^", **options: Any) -> Iterator[Page]:
    """A page in a fresh context; the test fails on a script error or an error on the console.

    Console errors that match `expected_errors` (a regular expression, searched
    in "<url>: <text>", the url being where the error came from, such as the
    resource that failed to load) are let through.
    """
    context = browser.new_context(**options)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        where_and_what = f"{message.location.get('url', '')}: {message.text}"
        if message.type == "error" and not re.search(expected_errors, where_and_what):
            problems.append(f"console: {where_and_what}")

    page.on("console", on_console)
    try:
        yield page
    finally:
        context.close()
    assert problems == []
