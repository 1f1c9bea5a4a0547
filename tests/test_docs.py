"""The API docs at /docs (Swagger UI) in a real browser: Debian's Chromium, headless.

The page must show every operation of /openapi.json, and its 'Try it out' must
work against the running service, with the token when one is set, and without
any host but the service. Skipped like tests/test_browser.py where Chromium is
missing (a failure where TASKSERVICE_REQUIRE_CHROMIUM=1).
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Request, Response, expect

from tests.browser import launch_chromium, open_page, start_server
from tests.server import Server

TOKEN = "docs-test-token-0123456789"  # noqa: S105 - a test fixture, not a secret
# How long an expectation or a click waits; the page renders in well under a
# second, the margin is for a loaded machine.
WAIT_MS = 15_000
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
TASK_FIELDS = {"name": "from swagger", "duration": 1, "priority": "high"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for this module's tests."""
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A service open to all, as it starts by default."""
    server = start_server(tmp_path)
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture
def guarded_server(tmp_path: Path) -> Iterator[Server]:
    """A service started with an API token."""
    server = start_server(tmp_path, TASKSERVICE_API_TOKEN=TOKEN)
    yield server
    server.kill(signal.SIGTERM)


def read_document(server: Server) -> dict[str, Any]:
    """The service's OpenAPI document, as a client other than the page reads it."""
    with urllib.request.urlopen(server.base + "/openapi.json", timeout=10) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def operations_of(document: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


class Traffic:
    """The requests of a browser context: which hosts they went to, which failed or were refused."""

    def __init__(self, context: BrowserContext, base: str) -> None:
        self.base = base
        self.foreign: list[str] = []
        self.failed: list[str] = []
        self.refused: list[str] = []
        context.on("request", self._on_request)
        context.on("requestfailed", self._on_failed)
        context.on("response", self._on_response)

    def _on_request(self, request: Request) -> None:
        # data: and blob: URLs are the page's own bytes, fetched from no host.
        local = request.url.startswith(self.base + "/")
        if not local and urlsplit(request.url).scheme not in ("data", "blob"):
            self.foreign.append(request.url)

    def _on_failed(self, request: Request) -> None:
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            path = urlsplit(response.url).path
            self.refused.append(f"{response.status} {response.request.method} {path}")

    def __str__(self) -> str:
        return f"foreign: {self.foreign}, failed: {self.failed}, refused: {self.refused}"


@contextmanager
def open_docs(
    browser: Browser, server: Server, refused: tuple[str, ...] = (), console: str = "$^"
) -> Iterator[Page]:
    """/docs, rendered; at the end, the page must have asked only the service, and got answers.

    `refused` lists the answers of 400 or more the test expects ("401 GET /tasks"),
    `console` the console errors it expects (see open_page). The page links no
    icon, so Chromium asks for /favicon.ico, which the service must serve: a 404
    there is a console error too.
    """
    with open_page(browser, console, viewport={"width": 1280, "height": 900}) as page:
        page.set_default_timeout(WAIT_MS)
        traffic = Traffic(page.context, server.base)
        page.goto(server.base + "/docs")
        try:
            expect(page.locator(".opblock").first).to_be_visible(timeout=WAIT_MS)
        except AssertionError as error:
            shown = page.locator("body").inner_text()[:500]
            raise AssertionError(f"/docs shows no operation: {shown!r}; {traffic}") from error
        yield page
        expect_no_errors_shown(page)
        assert traffic.foreign == []
        assert traffic.failed == []
        assert traffic.refused == list(refused)


def expect_no_errors_shown(page: Page) -> None:
    """Swagger UI found no error in the document, shows none and did not refuse the document."""
    # Its state first: the errors block is drawn after the error is recorded.
    assert page.evaluate("window.ui.errSelectors.allErrors().toJS()") == []
    expect(page.locator(".errors-wrapper")).to_have_count(0)
    expect(page.get_by_text("Unable to render this definition")).to_have_count(0)


def operation(page: Page, method: str, path: str) -> Locator:
    """The block of one operation, found by the method and path it shows."""
    return (
        page.locator(".opblock")
        .filter(has=page.locator(".opblock-summary-method").get_by_text(method, exact=True))
        .filter(has=page.locator(".opblock-summary-path").get_by_text(path, exact=True))
        .first
    )


def wait_until_resolved(page: Page, method: str, path: str) -> None:
    """Wait until Swagger UI has resolved the references of an opened operation."""
    # window.ui is the page's Swagger UI (flask-smorest's page sets it); its
    # selectors are the plugin API Swagger UI documents.
    page.wait_for_function(
        "([path, method]) => window.ui.specSelectors"
        ".specResolvedSubtree(['paths', path, method]) !== undefined",
        arg=[path, method.lower()],
        timeout=WAIT_MS,
    )


def try_it_out(block: Locator) -> None:
    """Expand the operation and make its inputs editable."""
    block.locator(".opblock-summary-control").click()
    block.get_by_role("button", name="Try it out").click()


def execute(block: Locator, status: int) -> Any:
    """Send the operation's request; the JSON body of the answer, once it shows `status`."""
    block.get_by_role("button", name="Execute").click()
    answer = block.locator(".live-responses-table .response")
    expect(answer.locator(".response-col_status")).to_have_text(str(status), timeout=WAIT_MS)
    return json.loads(answer.locator(".highlight-code pre").inner_text())


def test_the_page_shows_every_operation_of_the_document(server: Server, browser: Browser):
    expected = operations_of(read_document(server))
    assert ("POST", "/tasks") in expected  # the document was read, not an empty one
    with open_docs(browser, server) as page:
        for method, path in sorted(expected):
            block = operation(page, method, path)
            expect(block).to_be_visible(timeout=WAIT_MS)
            # Swagger UI resolves an operation's references when it is opened,
            # and only then shows what it could not resolve.
            block.locator(".opblock-summary-control").click()
            wait_until_resolved(page, method, path)
        blocks = page.locator(".opblock")
        shown = {
            (
                block.locator(".opblock-summary-method").inner_text(),
                block.locator(".opblock-summary-path").inner_text(),
            )
            for block in blocks.all()
        }
        assert shown == expected


def test_a_task_created_with_try_it_out_is_read_back(server: Server, browser: Browser):
    with open_docs(browser, server) as page:
        create = operation(page, "POST", "/tasks")
        try_it_out(create)
        create.locator("textarea.body-param__text").fill(json.dumps(TASK_FIELDS))
        created = execute(create, 201)
        assert {key: created[key] for key in TASK_FIELDS} == TASK_FIELDS
        task_id = created["id"]

        read = operation(page, "GET", "/tasks/{task_id}")
        try_it_out(read)
        read.locator("tr[data-param-name='task_id'] input").fill(str(task_id))
        task = execute(read, 200)
        assert (task["id"], task["name"]) == (task_id, TASK_FIELDS["name"])

    status, task = server.request("GET", f"/tasks/{task_id}")
    assert status == 200
    assert {key: task[key] for key in TASK_FIELDS} == TASK_FIELDS


def test_try_it_out_sends_the_token_given_to_authorize(guarded_server: Server, browser: Browser):
    schemes = read_document(guarded_server).get("components", {}).get("securitySchemes", {})
    assert [(scheme["type"], scheme.get("scheme")) for scheme in schemes.values()] == [
        ("http", "bearer")
    ]
    refused = rf"^{re.escape(guarded_server.base)}/tasks(\?\S*)?: .* status of 401 "
    with open_docs(browser, guarded_server, ("401 GET /tasks",), console=refused) as page:
        authorize = page.locator(".scheme-container").get_by_role("button", name="Authorize")
        expect(authorize).to_be_visible(timeout=WAIT_MS)
        listing = operation(page, "GET", "/tasks")
        try_it_out(listing)
        assert execute(listing, 401)["code"] == 401

        authorize.click()
        dialog = page.locator(".modal-ux")
        scheme = dialog.locator(".auth-container").filter(has_text="bearerAuth")
        scheme.get_by_role("textbox").fill(TOKEN)
        scheme.get_by_role("button", name="Apply credentials").click()
        expect(scheme.get_by_role("heading", name="Authorized")).to_be_visible(timeout=WAIT_MS)
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_be_hidden(timeout=WAIT_MS)

        assert execute(listing, 200) == []
