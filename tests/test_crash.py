"""SIGKILL the server at random moments under load: nothing accepted is lost, the limit holds."""

from __future__ import annotations

import http.client
import json
import random
import sqlite3
import threading
from contextlib import closing
from datetime import datetime
from pathlib import Path

from bench.database import RunningSampler
from tests.helpers import max_overlap, wait_for
from tests.server import Server

KILLS = 3
CLIENTS = 4
FINAL = ("Completed", "Failed")


class Load:
    """Clients that create tasks until told to stop, riding out the server's deaths."""

    def __init__(self, rng: random.Random) -> None:
        self.port = 0  # the server of the moment
        self.accepted: list[int] = []
        self.stop = threading.Event()
        self._durations = [rng.randint(0, 10) for _ in range(10_000)]
        self._threads = [threading.Thread(target=self._create) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)

    def _create(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps({"duration": self._durations[n % len(self._durations)]})
            try:
                with closing(http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)) as c:
                    c.request("POST", "/tasks", body, {"Content-Type": "application/json"})
                    response = c.getresponse()
                    answer = json.loads(response.read())
            except (OSError, http.client.HTTPException):
                # The server died or is down: no 201, so nothing was promised.
                self.stop.wait(0.01)
                continue
            if response.status == 201:
                self.accepted.append(answer["id"])


def start(database: Path, log: Path) -> Server:
    # Durations of 0-10 "seconds" take 0-100 ms: tasks are always starting and ending.
    server = Server(f"sqlite:///{database}", log, TASKSERVICE_TIME_SCALE="0.01").start()
    server.wait_healthy()
    return server


def test_random_sigkills_lose_no_task_and_never_run_three(tmp_path: Path):
    database, log = tmp_path / "tasks.sqlite3", tmp_path / "gunicorn.log"
    rng = random.Random(2026)
    server = start(database, log)
    try:
        with Load(rng) as load, RunningSampler(database) as sampler:
            for _ in range(KILLS):
                load.port = server.port
                enough = len(load.accepted) + rng.randint(20, 120)
                wait_for(lambda enough=enough: len(load.accepted) >= enough, timeout=30)
                server.kill()  # SIGKILL to the whole process group, mid-load
                server = start(database, log)
            load.port = server.port
            wait_for(lambda: len(load.accepted) >= enough + 20, timeout=30)
        wait_for(lambda: unfinished(database) == 0, timeout=60, interval=0.05)
    finally:
        server.kill()

    rows = finished_runs(database)
    assert set(load.accepted) <= set(rows)  # every 201 is there...
    assert all(status in FINAL for status, *_ in rows.values())  # ...and ended, once
    assert sampler.samples > 100
    assert sampler.most <= 2
    assert max_overlap([(start, end) for _status, start, end in rows.values()]) <= 2
    assert all(start <= end for _status, start, end in rows.values())
    assert rerun_tasks(database) > 0  # the kills did cut tasks short, which then ran again


def unfinished(database: Path) -> int:
    with closing(sqlite3.connect(database)) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM tasks WHERE status IN ('In Queue', 'Run')"
        ).fetchone()
        return int(count)


def finished_runs(database: Path) -> dict[int, tuple[str, float, float]]:
    """Status, start and finish (epoch seconds) of every task."""
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT id, status, start_time, finish_time FROM tasks")
        return {
            task_id: (status, _seconds(start), _seconds(finish))
            for task_id, status, start, finish in rows
        }


def rerun_tasks(database: Path) -> int:
    with closing(sqlite3.connect(database)) as connection:
        (count,) = connection.execute("SELECT count(*) FROM tasks WHERE attempts > 1").fetchone()
        return int(count)


def _seconds(stored: str) -> float:
    return datetime.fromisoformat(stored).timestamp()
