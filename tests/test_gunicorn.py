"""End to end through a real gunicorn process: kill it, restart it, lose nothing."""

from __future__ import annotations

import random
import signal
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
    server = Server(database_url, log, TASKSERVICE_TIME_SCALE="0.02", **env).start()
    servers.append(server)
    return server


def test_every_accepted_task_survives_sigkill(
    servers: list[Server], database_url: str, tmp_path: Path
):
    log = tmp_path / "gunicorn.log"
    first = start(servers, database_url, log)
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
    assert "interrupted task(s) queued again" in second.log()


def test_a_second_server_on_the_same_database_refuses_to_start(
    servers: list[Server], database_url: str, tmp_path: Path
):
    first = start(servers, database_url, tmp_path / "first.log")
    first.wait_healthy()

    second = start(servers, database_url, tmp_path / "second.log", TASKSERVICE_LOCK_TIMEOUT="0.5")

    assert second.process is not None
    assert second.process.wait(timeout=60) != 0
    assert "another process runs the task pool on this database" in second.log()
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
