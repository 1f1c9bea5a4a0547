"""The OpenAPI document as a contract for tools: a linter passes it, a generated client works.

Redocly CLI lints /openapi.json, without and with a token, against redocly.yaml
(its `recommended` rules): any error or any warning fails, and a rule that is off
says why there. openapi-python-client generates a client from a running gunicorn's
document, and the tests drive tasks through it: its functions are named from the
operationIds, and every field of an answer is set, typed and documented.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import typing
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
from flask import Flask

from tests.conftest import AppFactory
from tests.helpers import wait_for
from tests.server import ROOT, Server

TOKEN = "contract-test-token-0123456789"  # noqa: S105 - a test fixture, not a secret
OPERATION_IDS = {
    "create_task",
    "get_task",
    "list_tasks",
    "cancel_task",
    "get_health",
    "get_overview",
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

REDOCLY = ROOT / "node_modules" / ".bin" / "redocly"
# CI installs Node and sets this: there a missing linter fails instead of skipping.
REQUIRE_NODE = os.environ.get("TASKSERVICE_REQUIRE_NODE") == "1"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "taskservice_client"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The document does not depend on the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"


@pytest.fixture(params=[None, TOKEN], ids=["open", "token"])
def app(request: pytest.FixtureRequest, make_app: AppFactory) -> Flask:
    """The app without the pool, started without a token and then with one."""
    return make_app(start_pool=False, TASKSERVICE_API_TOKEN=request.param)


@pytest.fixture
def document(app: Flask) -> dict[str, Any]:
    """The app's OpenAPI document, as GET /openapi.json serves it."""
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def redocly() -> Path:
    """The linter that `npm ci` installed, or a skip (a failure in CI) that says what is missing."""
    if shutil.which("node") is None:
        reason = "Node.js is not on PATH: install Node.js 20.19+ and npm, then run `make test`"
    elif not REDOCLY.exists():
        reason = f"the OpenAPI linter is not installed at {REDOCLY}: run `npm ci` (make test does)"
    else:
        return REDOCLY
    if REQUIRE_NODE:
        pytest.fail(reason)
    pytest.skip(reason)


def lint(document: dict[str, Any], tmp_path: Path) -> list[str]:
    """Every problem Redocly finds in `document` under redocly.yaml, one line each."""
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document, indent=2))
    run = subprocess.run(
        [
            str(redocly()),
            "lint",
            f"--config={ROOT / 'redocly.yaml'}",
            "--lint-config=error",  # a misspelt rule in redocly.yaml fails too
            "--format=json",
            "--max-problems=1000",
            str(path),
        ],
        cwd=tmp_path,
        env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_NOTIFICATIONS": "true"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"redocly wrote no report (exit {run.returncode}):\n{run.stdout}{run.stderr}")
    problems = [
        f"{problem['severity']} {problem['ruleId']} at {problem['location'][0]['pointer']}:"
        f" {problem['message']}"
        for problem in report["problems"]
    ]
    assert problems or run.returncode == 0, run.stderr
    return problems


def test_the_document_passes_the_linter(document: dict[str, Any], tmp_path: Path):
    problems = lint(document, tmp_path)

    assert problems == [], "redocly lint found:\n" + "\n".join(problems)


def test_the_linter_reports_a_broken_document(document: dict[str, Any], tmp_path: Path):
    # The linter must be able to fail: an operation without responses is an error.
    broken = json.loads(json.dumps(document))
    broken["paths"]["/tasks"]["get"]["responses"] = {}

    problems = lint(broken, tmp_path)

    assert any("#/paths/~1tasks/get/responses" in problem for problem in problems), problems


def operations_of(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Each operation of the document: its path, its method and the operation object."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def test_every_operation_but_health_documents_a_client_error(document: dict[str, Any]):
    # What redocly.yaml's operation-4xx-response would check, less GET /health,
    # which takes no input and no token and so has no 4XX.
    missing = [
        f"{method.upper()} {path}"
        for path, method, operation in operations_of(document)
        if path != "/health" and not any(code.startswith("4") for code in operation["responses"])
    ]

    assert missing == []


def needs_credentials(document: dict[str, Any], operation: dict[str, Any]) -> bool:
    """Whether the document makes a client send credentials for `operation`."""
    requirements = operation.get("security", document.get("security", []))
    # An empty requirement ({}) among the alternatives makes them optional.
    return bool(requirements) and {} not in requirements


def test_the_declared_security_is_what_the_service_enforces(app: Flask, document: dict[str, Any]):
    # With a token the guarded operations must declare it and the open ones must
    # not; without one, no operation may ask a client for credentials.
    client = app.test_client()
    wrong = []
    for path, method, operation in operations_of(document):
        answer = client.open(path.replace("{task_id}", "1"), method=method.upper())
        refused = answer.status_code == 401
        if refused != needs_credentials(document, operation):
            wrong.append(f"{method.upper()} {path}: answers {answer.status_code} without a token")

    assert wrong == []
    if app.config["TASKSERVICE_API_TOKEN"]:
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "The token the service was started with (TASKSERVICE_API_TOKEN).",
        }


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start healthy gunicorn servers on this test's SQLite file; all are killed at its end."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        server = Server(f"sqlite:///{tmp_path / 'tasks.sqlite3'}", tmp_path / "gunicorn.log", **env)
        started.append(server.start())
        server.wait_healthy()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def generate_client(tmp_path: Path) -> Iterator[Callable[[Server], ModuleType]]:
    """Generate and import a client from a server's document; forgotten at the test's end."""

    def generate(server: Server) -> ModuleType:
        document = tmp_path / "openapi.json"
        with urllib.request.urlopen(f"{server.base}/openapi.json", timeout=10) as answer:
            document.write_bytes(answer.read())
        config = tmp_path / "generator.json"
        # No ruff run over the generated code: its formatting is not under test.
        config.write_text(json.dumps({"post_hooks": []}))
        run = subprocess.run(
            [
                str(GENERATOR),
                "generate",
                "--path",
                str(document),
                "--output-path",
                str(tmp_path / PACKAGE),
                "--meta",
                "none",
                "--config",
                str(config),
                "--fail-on-warning",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        sys.path.insert(0, str(tmp_path))
        importlib.invalidate_caches()
        return importlib.import_module(PACKAGE)

    yield generate
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
        del sys.modules[name]


def operations(client: ModuleType) -> dict[str, ModuleType]:
    """The generated client's endpoint modules by name, whatever tag they are filed under."""
    api = importlib.import_module(f"{client.__name__}.api")
    return {
        info.name.rpartition(".")[2]: importlib.import_module(info.name)
        for info in pkgutil.walk_packages(api.__path__, prefix=f"{api.__name__}.")
        if not info.ispkg
    }


def type_hints(client: ModuleType, owner: Any) -> dict[str, Any]:
    """The annotations of a generated function or model, resolved."""
    namespace = {**vars(client.models), "Unset": client.types.Unset}
    return typing.get_type_hints(owner, localns=namespace)


def enum_type(client: ModuleType, owner: Any, name: str) -> type[Enum]:
    """The enum that the generated `owner` (a function or a model) takes for `name`."""
    hint = type_hints(client, owner)[name]
    (choice,) = [
        arg
        for arg in typing.get_args(hint) or (hint,)
        if isinstance(arg, type) and issubclass(arg, Enum)
    ]
    return choice


def assert_complete(client: ModuleType, model: Any) -> None:
    """Every field of a generated model is required, so typed without Unset, and is set."""
    hints = type_hints(client, type(model))
    optional = [
        field.name
        for field in attrs.fields(type(model))
        if field.name != "additional_properties"
        and (
            client.types.Unset in typing.get_args(hints[field.name])
            or isinstance(getattr(model, field.name), client.types.Unset)
        )
    ]
    assert optional == [], f"{type(model).__name__}: not required in the document"
    # A schema with additionalProperties: false has no such attribute; schemathesis
    # checks that answers keep to it.
    extra = getattr(model, "additional_properties", {})
    assert extra == {}, f"{type(model).__name__}: fields the document does not declare"


def assert_error(client: ModuleType, response: Any, code: int) -> None:
    """`response` is the documented error `code`, parsed into the Error model."""
    assert response.status_code == code
    error = response.parsed
    assert isinstance(error, client.models.Error), error
    assert_complete(client, error)
    assert error.code == code
    assert isinstance(error.status, str)
    assert isinstance(error.message, str)
    assert error.message


def test_a_generated_client_drives_a_task(
    start_server: Callable[..., Server], generate_client: Callable[[Server], ModuleType]
):
    # Real time: two tasks of an hour hold both slots, so that a third stays queued.
    server = start_server(TASKSERVICE_TIME_SCALE="1")
    client = generate_client(server)
    found = operations(client)
    assert set(found) == OPERATION_IDS, "the client's functions are named from the operationIds"
    create, get, listing, cancel = (
        found[name] for name in ("create_task", "get_task", "list_tasks", "cancel_task")
    )
    models = client.models
    priority = enum_type(client, models.TaskCreate, "priority")
    status = enum_type(client, listing.sync, "status")

    with client.Client(base_url=server.base, raise_on_unexpected_status=True) as api:
        long = [
            create.sync(
                client=api,
                body=models.TaskCreate(name=f"long {n}", duration=3600, priority=priority("high")),
            )
            for n in range(2)
        ]
        for task in long:
            assert isinstance(task, models.Task)
            assert_complete(client, task)
            assert isinstance(task.id, int)
            assert not isinstance(task.id, bool)
            assert task.duration == 3600
            assert task.priority.value == "high"
            assert isinstance(task.create_time, datetime)
            assert task.create_time.tzinfo is not None
            assert isinstance(task.attempts, int)
        assert [task.name for task in long] == ["long 0", "long 1"]

        def running() -> list[Any]:
            tasks: list[Any] = listing.sync(client=api, status=status("Run"))
            return tasks

        wait_for(lambda: {task.id for task in running()} == {task.id for task in long}, 30)

        queued = create.sync(
            client=api, body=models.TaskCreate(name="queued", duration=1, priority=priority("low"))
        )
        assert_complete(client, queued)
        assert (queued.name, queued.priority.value, queued.status.value) == (
            "queued",
            "low",
            "In Queue",
        )
        assert (queued.start_time, queued.slot, queued.attempts) == (None, None, 0)
        assert get.sync(client=api, task_id=queued.id) == queued
        assert listing.sync(client=api, status=status("In Queue")) == [queued]

        cancelled = cancel.sync(client=api, task_id=queued.id)
        assert_complete(client, cancelled)
        assert cancelled.id == queued.id
        assert cancelled.status.value == "Cancelled"
        assert isinstance(cancelled.finish_time, datetime)
        assert listing.sync(client=api, status=status("Cancelled")) == [cancelled]
        assert_error(client, cancel.sync_detailed(client=api, task_id=queued.id), 409)
        assert_error(client, get.sync_detailed(client=api, task_id=999_999), 404)

        overview = found["get_overview"].sync(client=api)
        assert isinstance(overview, models.Overview)
        assert_complete(client, overview)
        assert [task.id for task in overview.running] == [task.id for task in long]
        assert all(isinstance(task, models.Task) for task in overview.running)
        health = found["get_health"].sync(client=api)
        assert isinstance(health, models.Health)
        assert_complete(client, health)
        assert health.status == "ok"


def test_a_generated_client_sends_the_token(
    start_server: Callable[..., Server], generate_client: Callable[[Server], ModuleType]
):
    server = start_server(TASKSERVICE_TIME_SCALE="0.001", TASKSERVICE_API_TOKEN=TOKEN)
    client = generate_client(server)
    found = operations(client)
    create, get = found["create_task"], found["get_task"]
    body = client.models.TaskCreate(name="guarded", duration=0)

    with client.AuthenticatedClient(
        base_url=server.base, token=TOKEN, raise_on_unexpected_status=True
    ) as api:
        task = create.sync(client=api, body=body)
        assert isinstance(task, client.models.Task)
        assert get.sync(client=api, task_id=task.id).name == "guarded"
        assert [listed.id for listed in found["list_tasks"].sync(client=api)] == [task.id]

    with client.Client(base_url=server.base, raise_on_unexpected_status=True) as anonymous:
        assert_error(client, create.sync_detailed(client=anonymous, body=body), 401)
        assert found["get_health"].sync(client=anonymous).status == "ok"

    with client.AuthenticatedClient(
        base_url=server.base, token="not-" + TOKEN, raise_on_unexpected_status=True
    ) as wrong:
        assert_error(client, get.sync_detailed(client=wrong, task_id=task.id), 401)
