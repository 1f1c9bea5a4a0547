"""A flood of creates against a real gunicorn: every answer is a 201 or the designed 503."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import join_all
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
        # Tasks of duration 1 take 50 ms: two slots drain at most 40 a second,
        # far fewer than the flood creates even on a busy machine, so the queue
        # surely fills, and 400 drain while it runs.
        TASKSERVICE_TIME_SCALE="0.05",
    ).start()
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill()


def flood(
    connection: http.client.HTTPConnection, until: float, answers: Counter[str], created: list[int]
) -> None:
    """POST tasks on one keep-alive connection until `until`; tally the answers."""
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
    except Exception as error:
        # An answer too: the test reports it, rather than the thread to whichever test runs.
        answers[f"{type(error).__name__}: {error}"] += 1
    finally:
        connection.close()


def cut(connection: http.client.HTTPConnection) -> None:
    """End `connection` from another thread: a client waiting for an answer gets an error now."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # the client closed it meanwhile
            sock.shutdown(socket.SHUT_RDWR)


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
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(CLIENTS)
    ]
    until = time.monotonic() + FLOOD_SECONDS
    clients = [
        threading.Thread(
            target=flood, args=(connection, until, tally, created), name=f"flood-client-{n}"
        )
        for n, (connection, tally) in enumerate(zip(connections, tallies, strict=True))
    ]
    try:
        for client in clients:
            client.start()
        still_flooding = join_all(clients, timeout=until + 60 - time.monotonic())
    finally:
        # However the test ends (a failure, its timeout), no client outlives it.
        for connection in connections:
            cut(connection)
        join_all(clients, timeout=10)
    assert still_flooding == []
    answers = sum(tallies, Counter())

    assert set(answers) <= {"201", "503 The queue is full"}, answers
    assert answers["201"] > MAX_QUEUED  # the workers drained while the flood ran
    assert answers["503 The queue is full"] > 0  # and the flood did fill the queue
    assert len(set(created)) == len(created)
    assert stored_total(server) == len(created)  # every 201 is a task, and nothing else is
    log = server.log()
    assert "database is locked" not in log
    assert "Traceback" not in log
