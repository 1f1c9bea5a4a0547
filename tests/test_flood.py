"""A flood of creates against a real gunicorn: every answer is a 201 or the designed 503."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server

CLIENTS = 64
FLOOD_SECONDS = 10
# Small enough that the flood fills the queue: back-pressure answers are part of the test.
MAX_QUEUED = 300


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(
        database_url,
        tmp_path / "gunicorn.log",
        TASKSERVICE_MAX_QUEUED=str(MAX_QUEUED),
        # Tasks of duration 1 take 10 ms: two slots drain at most 200 a second,
        # fewer than the flood creates, so the queue surely fills.
        TASKSERVICE_TIME_SCALE="0.01",
    ).start()
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill()


def flood(port: int, until: float, answers: Counter[str], created: list[int]) -> None:
    """POST tasks on one keep-alive connection until `until`; tally the answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"duration": 1})
    try:
        while time.monotonic() < until:
            connection.request("POST", "/tasks", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status == 201:
                created.append(answer["id"])
                answers["201"] += 1
            elif response.status == 503 and response.headers["Retry-After"] == "5":
                answers[f"503 {answer['message'].split(':')[0]}"] += 1
            else:
                answers[f"{response.status} {answer.get('message')}"] += 1
    finally:
        connection.close()


def stored_total(server: Server) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/tasks?page_size=1")
        response = connection.getresponse()
        response.read()
        return int(json.loads(response.headers["X-Pagination"])["total"])
    finally:
        connection.close()


def test_a_flood_of_creates_gets_201_or_back_pressure(server: Server):
    tallies: list[Counter[str]] = [Counter() for _ in range(CLIENTS)]  # one per thread
    created: list[int] = []  # list.append is atomic
    until = time.monotonic() + FLOOD_SECONDS
    clients = [
        threading.Thread(target=flood, args=(server.port, until, tally, created))
        for tally in tallies
    ]
    for client in clients:
        client.start()
    deadline = until + 60
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()))
    assert not any(client.is_alive() for client in clients)
    answers = sum(tallies, Counter())

    assert set(answers) <= {"201", "503 The queue is full"}, answers
    assert answers["201"] > MAX_QUEUED  # the workers drained while the flood ran
    assert answers["503 The queue is full"] > 0  # and the flood did fill the queue
    assert len(set(created)) == len(created)
    assert stored_total(server) == len(created)  # every 201 is a task, and nothing else is
    log = server.log()
    assert "database is locked" not in log
    assert "Traceback" not in log
