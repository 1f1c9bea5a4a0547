"""Database outages: the service never exits for one, answers 503 meanwhile and recovers alone.

A real gunicorn reaches the PostgreSQL server through a proxy of the test's
own, which the test cuts: at the very first start, and twice in a row under
load. Every task that got a 201 must end Completed, and no more than two may
ever run at once.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.helpers import wait_for
from tests.proxy import TcpProxy
from tests.server import Server

pytestmark = pytest.mark.postgresql

# What a request meets while a worker is replaced: no listener, a connection
# closed before the answer, or an answer cut short (IncompleteRead).
GONE = (OSError, http.client.HTTPException)


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def server(postgres_url: str, proxy: TcpProxy, tmp_path: Path) -> Iterator[Server]:
    """A service whose database is reached through the proxy; not started yet."""
    through_proxy = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    server = Server(
        through_proxy.render_as_string(hide_password=False),
        tmp_path / "gunicorn.log",
        TASKSERVICE_TIME_SCALE="0.02",
    )
    try:
        yield server
    finally:
        if server.process is not None:
            server.kill()


def answer(server: Server, method: str, path: str) -> tuple[int, dict, dict[str, str]]:
    """Status, JSON body and headers of one request."""
    request = urllib.request.Request(server.base + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def health_status(server: Server) -> int | None:
    """The status of /health, or None while nothing answers (a worker being replaced)."""
    assert server.process is not None
    assert server.process.poll() is None, f"gunicorn exited:\n{server.log()}"
    try:
        return answer(server, "GET", "/health")[0]
    except GONE:
        return None


def test_a_service_started_before_its_database_waits_for_it(server: Server, proxy: TcpProxy):
    proxy.cut()
    server.start()

    wait_for(lambda: health_status(server) == 503, timeout=30)
    status, health, _headers = answer(server, "GET", "/health")
    assert health["status"] == "unavailable"
    assert health["starting"] == "the database does not answer (OperationalError)"
    status, body, headers = answer(server, "POST", "/tasks")
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body["message"].startswith("The service is starting and cannot serve this yet")
    assert answer(server, "GET", "/tasks/1")[0] == 503

    proxy.restore()
    server.wait_healthy(timeout=30)
    status, task, _headers = answer(server, "POST", "/tasks")
    assert status == 201
    wait_for(lambda: server.request("GET", f"/tasks/{task['id']}")[1]["status"] == "Completed")
    log = server.log()
    assert log.count("Booting worker") == 1, "the worker was restarted, not kept waiting"
    assert "Traceback" not in log


def lease_ended_or_idle(server: Server) -> bool:
    """The replica ended itself for a lease it could not renew, or holds no running task."""
    if "this replica must stop" in server.log():
        return True
    try:
        status, health, _headers = answer(server, "GET", "/health")
    except GONE:
        return False
    return status == 503 and health["running"] == []


class Load:
    """Clients that create tasks and watch the running ones until told to stop."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.accepted: list[int] = []
        self.statuses: set[int] = set()
        self.running_seen: set[int] = set()
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._create, name="load-create"),
            threading.Thread(target=self._watch, name="load-watch"),
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(30)

    def _create(self) -> None:
        body = json.dumps({"duration": 2}).encode()
        while not self.stopping.is_set():
            request = urllib.request.Request(
                self.server.base + "/tasks",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.statuses.add(response.status)
                    self.accepted.append(json.loads(response.read())["id"])
            except urllib.error.HTTPError as error:
                self.statuses.add(error.code)
                error.close()
            except GONE:
                self.stopping.wait(0.01)  # no worker listening: it is being replaced

    def _watch(self) -> None:
        while not self.stopping.is_set():
            try:
                status, running, _headers = answer(self.server, "GET", "/tasks?status=Run")
            except GONE:
                continue
            if status == 200:
                self.running_seen.add(len(running))


def test_outages_under_load_lose_no_task_and_keep_the_limit(server: Server, proxy: TcpProxy):
    server.start().wait_healthy()

    with Load(server) as load:
        for _outage in range(2):
            created = len(load.accepted)
            wait_for(lambda created=created: len(load.accepted) >= created + 10, timeout=30)
            proxy.cut()
            load.statuses.discard(503)
            wait_for(lambda: 503 in load.statuses, timeout=30)
            # A replica holding a running task's lease ends itself before the
            # lease can lapse (the worker gunicorn starts in its place waits for
            # the database); one that holds none rides the outage out.
            wait_for(lambda: lease_ended_or_idle(server), timeout=30)
            proxy.restore()
            server.wait_healthy(timeout=60)

    assert load.statuses <= {201, 503}, load.statuses
    assert load.accepted, "no task was created"

    def all_completed() -> bool:
        return all(
            server.request("GET", f"/tasks/{task_id}")[1]["status"] == "Completed"
            for task_id in load.accepted
        )

    wait_for(all_completed, timeout=120, interval=0.2)
    assert max(load.running_seen) <= 2
    assert server.process is not None
    assert server.process.poll() is None, "gunicorn halted"
