"""SIGTERM while tasks run and a request is in flight: the request completes, the tasks rerun."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from contextlib import closing
from pathlib import Path

from tests.helpers import wait_for
from tests.server import Server

GRACEFUL_TIMEOUT = 10  # gunicorn.conf.py


def begin_post(port: int, body: bytes) -> socket.socket:
    """Send a POST's headers only; gunicorn's answer "100 Continue" shows a thread has it."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert connection.recv(1024).startswith(b"HTTP/1.1 100 Continue")
    return connection


def accepts_new_requests(port: int) -> bool:
    try:
        with closing(http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)) as connection:
            connection.request("GET", "/health")
            connection.getresponse().read()
            return True
    except (OSError, http.client.HTTPException):
        return False


def finish_post(connection: socket.socket, body: bytes) -> tuple[int, dict]:
    connection.sendall(body)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        answer += chunk
    connection.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_sigterm_finishes_requests_in_flight_and_running_tasks_rerun(tmp_path: Path):
    url, log = f"sqlite:///{tmp_path / 'tasks.sqlite3'}", tmp_path / "gunicorn.log"
    # Duration 10 at this scale runs 3 s: both slots are busy when the stop comes.
    server = Server(url, log, TASKSERVICE_TIME_SCALE="0.3").start()
    server.wait_healthy()
    try:
        ids = [server.request("POST", "/tasks", {"duration": 10})[1]["id"] for _ in range(3)]
        wait_for(lambda: len(server.request("GET", "/tasks?status=Run")[1]) == 2)
        body = json.dumps({"name": "in flight", "duration": 0}).encode()
        in_flight = begin_post(server.port, body)

        assert server.process is not None
        stopping = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)  # to the master, as a supervisor does
        # The worker is stopping once it takes no new request: only then send the body.
        wait_for(lambda: not accepts_new_requests(server.port), timeout=GRACEFUL_TIMEOUT)
        status, task = finish_post(in_flight, body)
        exit_code = server.process.wait(GRACEFUL_TIMEOUT + 5)
        stopped_in = time.monotonic() - stopping
    finally:
        server.kill()

    assert status == 201
    assert task["name"] == "in flight"
    assert exit_code == 0
    assert stopped_in < GRACEFUL_TIMEOUT
    assert "Traceback" not in server.log()

    restarted = Server(url, log, TASKSERVICE_TIME_SCALE="0.01").start()
    try:
        restarted.wait_healthy()
        everything = [*ids, task["id"]]

        def all_completed() -> list[dict] | None:
            tasks = [restarted.request("GET", f"/tasks/{task_id}")[1] for task_id in everything]
            return tasks if all(t["status"] == "Completed" for t in tasks) else None

        tasks = wait_for(all_completed, timeout=30, interval=0.05)
    finally:
        restarted.kill()
    attempts = sorted(task["attempts"] for task in tasks)
    assert attempts == [1, 1, 2, 2]  # the two cut short ran again, from the start
