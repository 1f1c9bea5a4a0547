"""End to end through a real gunicorn process: kill it, restart it, lose nothing."""

from __future__ import annotations

import json
import random
import signal
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.server import Server


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Servers a test starts; all are killed at its end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def start(servers: list[Server], database_url: str, log: Path, **env: str) -> Server:
    server = Server(database_url, log, **{"TASKSERVICE_TIME_SCALE": "0.02", **env}).start()
    servers.append(server)
    return server


def test_every_accepted_task_survives_sigkill(
    servers: list[Server], database_url: str, tmp_path: Path
):
    sqlite = database_url.startswith("sqlite")
    log = tmp_path / "gunicorn.log"
    # Tasks of 50-500 ms, so that some are surely running when the kill comes.
    first = start(servers, database_url, log, TASKSERVICE_TIME_SCALE="0.05")
    first.wait_healthy()
    rng = random.Random(7)
    accepted = []
    for _ in range(30):
        status, body = first.request("POST", "/tasks", {"duration": rng.randint(1, 10)})
        assert status == 201, body
        accepted.append(body["id"])
    wait_for(lambda: first.request("GET", "/tasks?status=Run")[1])

    assert first.kill(signal.SIGKILL) == -signal.SIGKILL

    second = start(servers, database_url, log)
    second.wait_healthy()

    def all_final() -> list[dict] | None:
        tasks = [second.request("GET", f"/tasks/{task_id}")[1] for task_id in accepted]
        done = all(task["status"] in {"Completed", "Failed", "Cancelled"} for task in tasks)
        return tasks if done else None

    tasks = wait_for(all_final, timeout=60, interval=0.1)
    assert {task["status"] for task in tasks} == {"Completed"}
    assert max(task["attempts"] for task in tasks) == 2, "no task was cut short by the kill"
    # On PostgreSQL the second replica takes the dead one's slots over once their leases expire.
    requeued = "interrupted task(s) queued again" if sqlite else "its replica's lease had expired"
    assert requeued in second.log()


def test_a_second_server_on_the_same_sqlite_database_refuses_to_start(
    servers: list[Server], tmp_path: Path
):
    """On PostgreSQL a second server is a replica (tests/test_replicas.py)."""
    database_url = f"sqlite:///{tmp_path / 'tasks.sqlite3'}"
    first = start(servers, database_url, tmp_path / "first.log")
    first.wait_healthy()

    second = start(servers, database_url, tmp_path / "second.log", TASKSERVICE_LOCK_TIMEOUT="0.5")

    assert second.process is not None
    assert second.process.wait(timeout=60) == 3  # gunicorn's "worker failed to boot"
    log = second.log()
    assert "taskservice cannot start: another process runs the task pool on this database" in log
    assert "stop that process first, or set DATABASE_URL to another database" in log
    assert "Traceback" not in log
    assert first.request("GET", "/health")[0] == 200


def test_concurrent_creates_all_succeed(servers: list[Server], database_url: str, tmp_path: Path):
    server = start(servers, database_url, tmp_path / "gunicorn.log")
    server.wait_healthy()
    clients, per_client = 16, 25

    def create_many(_client: int) -> list[int]:
        return [server.request("POST", "/tasks", {"duration": 0})[0] for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        statuses = [status for batch in pool.map(create_many, range(clients)) for status in batch]

    assert statuses == [201] * clients * per_client
    _status, page = server.request("GET", "/tasks?page_size=1")
    assert page[0]["id"] == clients * per_client


def test_preload_is_refused(servers: list[Server], database_url: str, tmp_path: Path):
    server = Server(database_url, tmp_path / "gunicorn.log", GUNICORN_CMD_ARGS="--preload")
    servers.append(server.start())

    assert server.process is not None
    assert server.process.wait(timeout=60) != 0
    assert "do not run with --preload" in server.log()


def send_raw(server: Server, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are and read the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def chunked_post(chunks: list[bytes], *, end: bytes = b"0\r\n\r\n") -> bytes:
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return (
        b"POST /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + encoded + end
    )


def test_chunked_bodies(servers: list[Server], database_url: str, tmp_path: Path):
    server = start(servers, database_url, tmp_path / "gunicorn.log")
    server.wait_healthy()

    small = send_raw(server, chunked_post([b'{"name": "chun', b'ked", "duration": 1}']))
    padded = send_raw(server, chunked_post([b'{"name": "x"}', b" " * 70_000, b"GARBAGE"]))
    large = send_raw(server, chunked_post([b" " * 1024] * 100))
    broken = send_raw(server, chunked_post([b"{}"], end=b"zz\r\n"))

    assert small[0] == 201
    assert json.loads(small[1])["name"] == "chunked"
    assert padded[0] == 413
    assert large[0] == 413
    assert broken[0] == 400
    assert "transfer encoding is malformed" in json.loads(broken[1])["message"]
    _status, page = server.request("GET", "/tasks")
    assert len(page) == 1


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be one of debug, info, warning"),
        ("GUNICORN_THREADS", "four", "GUNICORN_THREADS must be a whole number"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of text, json, got 'xml'"),
        ("TASKSERVICE_CONCURRENCY", "0", "TASKSERVICE_CONCURRENCY must be between 1 and 64"),
        ("TASKSERVICE_CONCURRENCY", "abc", "TASKSERVICE_CONCURRENCY must be a whole number"),
        ("DATABASE_URL", "mysql://db/tasks", "DATABASE_URL: mysql is not supported"),
    ],
)
def test_malformed_settings_stop_the_server_with_a_message(
    servers: list[Server], database_url: str, tmp_path: Path, setting: str, value: str, message: str
):
    server = Server(database_url, tmp_path / "gunicorn.log", **{setting: value})
    servers.append(server.start())

    assert server.process is not None
    assert server.process.wait(timeout=60) != 0
    # One line, from the master, before it listens: no traceback, no worker booted.
    lines = server.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"taskservice: {message}")


def test_a_reload_with_a_request_in_flight_keeps_the_server(
    servers: list[Server], database_url: str, tmp_path: Path
):
    """SIGHUP starts a new worker while the old one finishes: it waits for the pool lock."""
    server = start(servers, database_url, tmp_path / "gunicorn.log")
    server.wait_healthy()
    _status, task = server.request("POST", "/tasks", {"duration": 1})
    # A request begun and never finished keeps the old worker (and its lock) for
    # its 10 s read deadline.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
        stalled.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)

        wait_for(lambda: server.log().count("Booting worker") == 2, timeout=30)
        wait_for(lambda: "Worker exiting" in server.log(), timeout=30)
        server.wait_healthy(timeout=30)

    assert server.process.poll() is None, server.log()
    assert server.request("GET", f"/tasks/{task['id']}")[0] == 200
    assert "cannot start" not in server.log()
