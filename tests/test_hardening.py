"""Nothing a client or an operator's environment does exposes internals or secrets."""

from __future__ import annotations

import http.client
import re
from contextlib import closing
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from taskservice.extension import EXTENSION_KEY
from tests.server import ROOT, Server

TOKEN = "hardening-test-token-0123456789"  # noqa: S105 - a test fixture, not a secret


def test_an_unexpected_error_is_a_json_500_without_details(
    make_app, monkeypatch: pytest.MonkeyPatch
):
    app: Flask = make_app(start_pool=False, TESTING=False)
    service = app.extensions[EXTENSION_KEY].service

    def broken(_task_id: int) -> None:
        raise RuntimeError("internal detail: /srv/secret/path")

    monkeypatch.setattr(service, "get", broken)
    response = app.test_client().get("/tasks/1")

    assert response.status_code == 500
    assert response.json == {
        "code": 500,
        "status": "Internal Server Error",
        "message": (
            "The server encountered an internal error and was unable to complete your request."
            " Either the server is overloaded or there is an error in the application."
        ),
        "errors": {},
    }
    assert b"internal detail" not in response.data
    assert b"Traceback" not in response.data


def test_flask_debug_in_the_environment_does_not_turn_on_debug_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'tasks.sqlite3'}")

    app = create_app(start_pool=False)
    try:
        assert app.debug is False
    finally:
        app.extensions[EXTENSION_KEY].close()


def test_the_token_never_reaches_the_log(tmp_path: Path):
    log = tmp_path / "gunicorn.log"
    server = Server(f"sqlite:///{tmp_path / 'tasks.sqlite3'}", log, TASKSERVICE_API_TOKEN=TOKEN)
    server.start().wait_healthy()
    try:
        for authorization in (f"Bearer {TOKEN}", f"Bearer {TOKEN}-wrong", TOKEN):
            with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as c:
                c.request("POST", "/tasks", headers={"Authorization": authorization})
                assert c.getresponse().status in (201, 401)
    finally:
        server.kill()

    assert "POST /tasks" in server.log()
    assert TOKEN not in server.log()


def test_the_container_runs_as_an_unprivileged_user():
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)

    assert users
    assert users[-1] not in ("root", "0", "0:0")
