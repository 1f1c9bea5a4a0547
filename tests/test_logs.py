"""Request ids and the logs: one line per request, LOG_FORMAT=json one object per line."""

from __future__ import annotations

import http.client
import json
import logging
import re
from contextlib import closing
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.helpers import wait_for
from tests.server import Server


def test_each_answer_carries_a_new_request_id(client: FlaskClient):
    first, second = client.get("/tasks"), client.get("/tasks")

    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_a_plain_caller_id_is_kept(client: FlaskClient):
    response = client.get("/tasks", headers={"X-Request-ID": "job-42.retry:1"})

    assert response.headers["X-Request-ID"] == "job-42.retry:1"


@pytest.mark.parametrize("given", ["two words", "x" * 129, "new\\nline", "é", ""])
def test_a_caller_id_unfit_for_a_log_line_is_replaced(client: FlaskClient, given: str):
    response = client.get("/tasks", headers={"X-Request-ID": given})

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_each_request_is_logged_with_its_id(client: FlaskClient, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="taskservice"):
        client.post("/tasks?x=1", headers={"X-Request-ID": "req-1"})

    lines = [r.getMessage() for r in caplog.records if r.name == "taskservice.api.requests"]
    assert len(lines) == 1
    assert re.fullmatch(r"POST /tasks\?x=\*\*\* 201 \d+\.\d ms \(request req-1\)", lines[0])


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        ("access_token=s3cr3t-t0ken", "access_token=***"),
        ("status=Run&api_key=s3cr3t-t0ken&page=2", "status=Run&api_key=***&page=2"),
        ("token=s3cr3t-t0ken&token=s3cr3t-t0ken", "token=***&token=***"),
        ("page_size=5&x=%73%33cr3t-t0ken", "page_size=5&x=***"),
    ],
)
def test_a_secret_in_the_query_string_never_reaches_the_log(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, query: str, logged: str
):
    with caplog.at_level(logging.INFO, logger="taskservice"):
        client.get(f"/tasks?{query}")

    assert "s3cr3t" not in caplog.text
    lines = [r.getMessage() for r in caplog.records if r.name == "taskservice.api.requests"]
    assert lines[0].startswith(f"GET /tasks?{logged} 200 ")


def test_json_logs_are_one_object_per_line_with_the_request_id(tmp_path: Path):
    log = tmp_path / "gunicorn.log"
    server = Server(f"sqlite:///{tmp_path / 'tasks.sqlite3'}", log, LOG_FORMAT="json")
    server.start().wait_healthy()
    try:
        with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as c:
            c.request("POST", "/tasks", headers={"X-Request-ID": "trace-7"})
            assert c.getresponse().status == 201
        wait_for(lambda: "trace-7" in log.read_text())
    finally:
        server.kill()

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"time", "level", "logger", "message", "request_id"} <= set(records[0])
    traced = [r["message"] for r in records if r["request_id"] == "trace-7"]
    assert traced[0].startswith("task 1 created")
    assert traced[1].startswith("POST /tasks 201")
