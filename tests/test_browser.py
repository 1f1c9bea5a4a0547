"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

Skipped where Chromium is missing; CI installs it and sets
TASKSERVICE_REQUIRE_CHROMIUM=1, which turns the skip into a failure.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import launch_chromium, open_page, start_server
from tests.server import Server

TOKEN = "browser-test-token-0123456789"  # noqa: S105 - a test fixture, not a secret
# How long the tasks that keep both slots busy run: the page must be loaded,
# the form sent and a queued task cancelled before they end, which takes about
# a second; the margin is for a loaded machine.
BLOCKER_SECONDS = 10
# How long an expectation waits: more than a blocker runs.
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for this module's tests."""
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # Real time: a task of duration 2 runs for 2 s, which the page, polling
    # every second, cannot miss.
    server = start_server(tmp_path, TASKSERVICE_TIME_SCALE="1")
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A laptop-sized page."""
    with open_page(browser, viewport={"width": 1280, "height": 900}) as page:
        yield page


def create(server: Server, **fields: Any) -> int:
    status, body = server.request("POST", "/tasks", fields)
    assert status == 201, body
    task_id: int = body["id"]
    return task_id


def test_a_task_created_with_the_form_runs_and_a_queued_one_is_cancelled(
    server: Server, page: Page, tmp_path: Path
):
    # Both slots busy, so the next tasks wait where the page can see them.
    blockers = [create(server, name=f"blocker {n}", duration=BLOCKER_SECONDS) for n in (1, 2)]
    victim = create(server, name="to cancel", duration=1, priority="low")
    page.goto(server.base + "/")
    expect(page.locator("#connection")).to_have_class("connection live", timeout=WAIT_MS)
    for blocker in blockers:
        expect(page.locator(f"#slots [data-task-id='{blocker}']")).to_be_visible(timeout=WAIT_MS)

    page.fill("#create-form [name=name]", "from the form")
    page.fill("#create-form [name=duration]", "2")
    page.select_option("#create-form [name=priority]", "high")
    page.click("#create-form button[type=submit]")
    expect(page.locator("#create-result")).to_contain_text("created", timeout=WAIT_MS)
    task_id = int(page.locator("#create-result").inner_text().split("#")[1].split(" ")[0])

    queued = page.locator(f"#queue tr[data-task-id='{task_id}']")
    expect(queued).to_have_attribute("data-status", "In Queue", timeout=WAIT_MS)
    expect(queued).to_contain_text("from the form")
    expect(queued.locator("td.source")).to_have_text("http")
    # High priority: it is first in line, ahead of the low-priority task queued before it.
    expect(page.locator("#queue tbody tr").first).to_have_attribute("data-task-id", str(task_id))

    page.click(f"#queue tr[data-task-id='{victim}'] button.cancel")
    expect(page.locator("#cancel-result")).to_have_text(f"Task #{victim} cancelled.")
    expect(page.locator(f"#queue tr[data-task-id='{victim}']")).to_have_count(0, timeout=WAIT_MS)
    assert server.request("GET", f"/tasks/{victim}")[1]["status"] == "Cancelled"

    running = page.locator(f"#slots [data-task-id='{task_id}']")
    expect(running).to_be_visible(timeout=WAIT_MS)
    expect(running).to_contain_text("from the form")
    expect(page.locator(f"#timeline rect[data-task-id='{task_id}']")).to_have_attribute(
        "data-status", "Run"
    )

    finished = page.locator(f"#recent tr[data-task-id='{task_id}']")
    expect(finished).to_have_attribute("data-status", "Completed", timeout=WAIT_MS)
    expect(finished).to_contain_text("from the form")
    expect(finished.locator("td.source")).to_have_text("http")
    expect(page.locator(".count[data-status='Completed'] .number")).to_have_text("3")
    expect(page.locator(".count[data-status='Cancelled'] .number")).to_have_text("1")
    expect(page.locator("#peak")).to_have_text("Most running at once in this window: 2 (limit 2).")

    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_page_fits_a_phone(server: Server, browser: Browser):
    # Two run and the third waits, each with a name too long for a phone.
    for _ in range(3):
        create(server, name="a task with a name too long for a phone's screen", duration=60)
    width = 390  # a phone's CSS pixels
    phone = {"viewport": {"width": width, "height": 844}, "is_mobile": True}
    with open_page(browser, **phone) as page:
        page.goto(server.base + "/")
        page.locator("#queue tbody tr[data-task-id]").wait_for(timeout=WAIT_MS)
        expect(page.locator("#slots [data-task-id]")).to_have_count(2)

        # A mobile browser widens its layout to fit wider content, and then
        # shows it all smaller: the page must fit in the phone's width itself.
        assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_a_page_of_a_guarded_service_asks_for_the_token(browser: Browser, tmp_path: Path):
    server = start_server(tmp_path, TASKSERVICE_TIME_SCALE="1", TASKSERVICE_API_TOKEN=TOKEN)
    # Until it has the token, the page's polls are refused, which Chromium logs.
    refused = r"status of 401"
    try:
        with open_page(browser, expected_errors=refused) as page:
            page.goto(server.base + "/")
            expect(page.locator("#token-form")).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#connection")).to_have_class("connection down")

            page.fill("#token", TOKEN)
            page.click("#token-form button[type=submit]")

            expect(page.locator("#connection")).to_have_class("connection live", timeout=WAIT_MS)
            expect(page.locator("#token-form")).to_be_hidden()
            page.fill("#create-form [name=duration]", "0")
            page.click("#create-form button[type=submit]")
            expect(page.locator("#create-result")).to_have_text("Task #1 created.", timeout=WAIT_MS)
    finally:
        server.kill(signal.SIGTERM)


@pytest.mark.postgresql
def test_the_replicas_panel_shows_each_replica_and_its_slots(
    browser: Browser, postgres_url: str, tmp_path: Path
):
    """On PostgreSQL: a replica that runs tasks and an API-only one, seen from the API-only one."""
    worker = Server(postgres_url, tmp_path / "worker.log", TASKSERVICE_TIME_SCALE="1")
    api = Server(postgres_url, tmp_path / "api.log", TASKSERVICE_RUN_TASKS="false")
    started: list[Server] = []
    try:
        for server in (worker, api):
            started.append(server.start())
            server.wait_healthy()
        running = create(api, name="held", duration=BLOCKER_SECONDS)
        worker_id = worker.request("GET", "/health")[1]["replica"]["id"]
        api_id = api.request("GET", "/health")[1]["replica"]["id"]
        with open_page(browser, viewport={"width": 1280, "height": 900}) as page:
            page.goto(api.base + "/")
            panel = page.locator("#replicas-panel")
            expect(panel).to_be_visible(timeout=WAIT_MS)
            expect(panel.locator(f"tr[data-replica-id='{worker_id}']")).to_contain_text(
                f"(#{running})", timeout=WAIT_MS
            )
            expect(panel.locator(f"tr[data-replica-id='{worker_id}']")).to_contain_text(
                "runs tasks"
            )
            api_row = panel.locator(f"tr[data-replica-id='{api_id}']")
            expect(api_row).to_contain_text("API only")
            expect(api_row).to_contain_text("none")
    finally:
        for server in reversed(started):
            server.kill(signal.SIGTERM)


def test_the_replicas_panel_stays_hidden_on_sqlite(server: Server, page: Page):
    page.goto(server.base + "/")
    expect(page.locator("#connection")).to_have_class("connection live", timeout=WAIT_MS)
    expect(page.locator("#replicas-panel")).to_be_hidden()
