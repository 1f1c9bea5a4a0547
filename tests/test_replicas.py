"""Replicas on PostgreSQL: real gunicorn processes on one database, one limit, failover.

A sampler with a connection of its own counts the tasks in Run and the slots
held every few milliseconds while replicas are killed, paused past their
lease and resumed, stopped, and cut from the database; the recorded run
intervals are checked afterwards too.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from app import create_app
from taskservice.errors import ConfigError
from taskservice.extension import EXTENSION_KEY
from tests.amqp import BrokerClient
from tests.conftest import Gate
from tests.helpers import max_overlap, wait_for
from tests.server import Server
from tests.test_broker import Inbox

pytestmark = pytest.mark.postgresql

# The shortest lease allowed, so that failovers come quickly.
LEASE = 2.0
PRIORITIES = ("high", "medium", "low")
# What a request to a replica being killed or replaced can meet: refused or reset
# connections, and an answer cut short (IncompleteRead, or JSON cut off).
GONE = (OSError, http.client.HTTPException, ValueError)

StartReplica = Callable[..., Server]


@pytest.fixture
def admin(postgres_url: str) -> Iterator[Engine]:
    """Autocommit statements on the test's schema, from outside every replica."""
    engine = create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture
def start_replica(postgres_url: str, tmp_path: Path) -> Iterator[StartReplica]:
    """Start gunicorn replicas on the test's schema; every one is ended at the test's end."""
    started: list[Server] = []

    def start(name: str, **env: str) -> Server:
        # Each replica's sessions carry its name, for pg_terminate_backend to find them.
        url = make_url(postgres_url).update_query_dict({"application_name": name})
        settings = {
            "TASKSERVICE_TIME_SCALE": "0.02",
            "TASKSERVICE_LEASE_SECONDS": str(LEASE),
            **env,
        }
        server = Server(
            url.render_as_string(hide_password=False), tmp_path / f"{name}.log", **settings
        )
        started.append(server.start())
        return server

    yield start
    for server in started:
        if server.process is not None and server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGCONT)  # a paused worker cannot die otherwise
            server.kill()


class Sampler(threading.Thread):
    """Counts, in one snapshot every few milliseconds, the tasks in Run and the slots held."""

    def __init__(self, admin: Engine) -> None:
        super().__init__(name="sampler", daemon=True)
        self._admin = admin
        self.samples = 0
        self.most_running = 0
        self.most_held = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        query = text(
            "SELECT (SELECT count(*) FROM tasks WHERE status = 'Run'),"
            " (SELECT count(*) FROM task_slots WHERE task_id IS NOT NULL)"
        )
        with self._admin.connect() as connection:
            while not self.stopping.wait(0.003):
                running, held = connection.execute(query).one()
                self.most_running = max(self.most_running, running)
                self.most_held = max(self.most_held, held)
                self.samples += 1

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.join(10)


class Clients(threading.Thread):
    """Creates tasks on every live replica in turn, a few each second, until stopped."""

    def __init__(self, replicas: list[Server]) -> None:
        super().__init__(name="clients", daemon=True)
        self.replicas = replicas
        self.accepted: list[int] = []
        self.statuses: set[int] = set()
        self.stopping = threading.Event()
        self._rng = random.Random(13)

    def run(self) -> None:
        turn = 0
        while not self.stopping.wait(0.05):
            live = list(self.replicas)  # the test adds and removes replicas meanwhile
            server = live[turn % len(live)]
            turn += 1
            body = {"duration": self._rng.randint(1, 10), "priority": self._rng.choice(PRIORITIES)}
            try:
                status, task = post(server, body)
            except GONE:
                continue  # that replica is down or being replaced: the next one
            self.statuses.add(status)
            if status == 201:
                self.accepted.append(task["id"])

    def __enter__(self) -> Clients:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.join(30)


def post(server: Server, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        server.base + "/tasks",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        # Short: a paused replica must not hold up the creates on the others.
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def health(server: Server) -> dict[str, Any] | None:
    """The replica's /health, or None while it does not answer."""
    try:
        return server.request("GET", "/health")[1]
    except GONE:
        return None


def running_slot(admin: Engine, replicas: list[Server]) -> tuple[Server, int, int, int] | None:
    """A replica running a task's body now: (it, its worker's pid, the task, the attempt)."""
    with admin.connect() as connection:
        rows = connection.execute(
            text("SELECT replica_id, task_id, attempt FROM task_slots WHERE task_id IS NOT NULL")
        ).all()
    held = {replica_id: (task_id, attempt) for replica_id, task_id, attempt in rows}
    for server in replicas:
        report = health(server)
        if report is None or report["replica"]["id"] not in held:
            continue
        task_id, attempt = held[report["replica"]["id"]]
        if task_id in report["running"]:
            return server, report["replica"]["pid"], task_id, attempt
    return None


def moved_on(admin: Engine, task_id: int, attempt: int) -> bool:
    """Whether that attempt of the task no longer runs: taken over (or, for a live one, ended)."""
    with admin.connect() as connection:
        status, attempts = connection.execute(
            text("SELECT status, attempts FROM tasks WHERE id = :id"), {"id": task_id}
        ).one()
    return bool(status != "Run" or attempts > attempt)


def stopped_or_fenced(log: str) -> bool:
    return "this replica must stop" in log or "was no longer running; result dropped" in log


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Reaped by its gunicorn master soon after it exits; until then a zombie.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1].startswith("Z")


def test_three_replicas_keep_one_limit_through_kills_pauses_and_lost_sessions(
    start_replica: StartReplica, admin: Engine
):
    run = uuid.uuid4().hex[:8]  # no other replica on the server has these names
    replicas = [start_replica(f"replica-{name}-{run}") for name in "abc"]
    for server in replicas:
        server.wait_healthy()
    failovers: list[float] = []

    with Sampler(admin) as sampler, Clients(replicas) as clients:
        # 1. A replica's worker killed while it runs a task: another takes the slot over.
        server, pid, task_id, attempt = wait_for(lambda: running_slot(admin, replicas), timeout=30)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: moved_on(admin, task_id, attempt), timeout=LEASE + 10)
        failovers.append(time.monotonic() - killed)
        server.wait_healthy()  # gunicorn booted a fresh worker: a new replica

        # 2. One paused past its lease: its slot is taken over. Resumed, it ends itself,
        # or, if its task's body had just ended, its result is refused.
        server, pid, task_id, attempt = wait_for(lambda: running_slot(admin, replicas), timeout=30)
        os.kill(pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            wait_for(lambda: moved_on(admin, task_id, attempt), timeout=LEASE + 10)
            failovers.append(time.monotonic() - paused)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: stopped_or_fenced(server.log()), timeout=10)
        if "this replica must stop" in server.log():
            wait_for(lambda: pid_gone(pid), timeout=10)
        server.wait_healthy()

        # 3. Every session of one replica ended by the server: it reconnects.
        with admin.connect() as connection:
            ended = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": f"replica-b-{run}"},
            ).scalar_one()
        assert ended >= 1
        replicas[1].wait_healthy()

        # 4. One stopped (SIGTERM, as a deploy does) while a new one starts beside it.
        replicas.append(start_replica(f"replica-d-{run}"))
        replicas[-1].wait_healthy()
        stopped = replicas.pop(0)
        assert stopped.kill(signal.SIGTERM) == 0
        accepted_before = len(clients.accepted)
        wait_for(lambda: len(clients.accepted) >= accepted_before + 20, timeout=30)

    assert clients.statuses <= {201, 503}, clients.statuses

    def all_final() -> list[Any] | None:
        with admin.connect() as connection:
            rows = connection.execute(
                text("SELECT id, status, start_time, finish_time FROM tasks")
            ).all()
        return rows if all(row.status in ("Completed", "Failed") for row in rows) else None

    rows = wait_for(all_final, timeout=120, interval=0.2)
    assert set(clients.accepted) <= {row.id for row in rows}, "an accepted task was lost"
    assert sampler.samples > 100
    assert sampler.most_running <= 2
    assert sampler.most_held <= 2
    intervals = [(row.start_time.timestamp(), row.finish_time.timestamp()) for row in rows]
    assert max_overlap(intervals) <= 2
    print(f"failover after {', '.join(f'{seconds:.2f} s' for seconds in failovers)}")


def test_run_order_holds_across_replicas(postgres_url: str, gate: Gate):
    """Higher priority first, then first come, whichever replica made the task."""
    settings = {
        "TESTING": True,
        "DATABASE_URL": postgres_url,
        "TASKSERVICE_TIME_SCALE": 0.001,
        "TASKSERVICE_CONCURRENCY": 1,
    }
    apps: list[Flask] = []
    try:
        apps = [create_app(settings), create_app(settings)]
        a, b = (app.test_client() for app in apps)
        blocker = a.post("/tasks", json={"duration": 1}).json["id"]
        gate.wait_for_entries(1)  # the one slot is busy: what follows waits
        made = [
            (a, "low"),
            (b, "high"),
            (a, "medium"),
            (b, "low"),
            (a, "high"),
            (b, "medium"),
        ]
        ids = [
            client.post("/tasks", json={"priority": p, "duration": 1}).json["id"]
            for client, p in made
        ]

        gate.open.set()

        def finished() -> list[Any] | None:
            got = [a.get(f"/tasks/{task_id}").json for task_id in [blocker, *ids]]
            return got if all(task["status"] == "Completed" for task in got) else None

        tasks = wait_for(finished, timeout=30)
        started = [task["id"] for task in sorted(tasks, key=lambda task: task["start_time"])]
        assert started == [blocker, ids[1], ids[4], ids[2], ids[5], ids[0], ids[3]]
    finally:
        for app in apps:
            app.extensions[EXTENSION_KEY].close()


def test_the_overview_lists_the_replicas_and_who_holds_each_slot(postgres_url: str, gate: Gate):
    settings = {"TESTING": True, "DATABASE_URL": postgres_url, "TASKSERVICE_TIME_SCALE": 0.001}
    apps: list[Flask] = []
    try:
        apps = [
            create_app(settings),
            create_app({**settings, "TASKSERVICE_RUN_TASKS": False}),
        ]
        workers, api_only = (app.extensions[EXTENSION_KEY] for app in apps)
        client = apps[1].test_client()
        ids = [client.post("/tasks", json={"duration": 1}).json["id"] for _ in range(3)]
        gate.wait_for_entries(2)

        body = client.get("/overview").json

        roles = {replica["id"]: replica["runs_tasks"] for replica in body["replicas"]}
        assert roles == {workers.replica_id: True, api_only.replica_id: False}
        held = {slot["task_id"]: slot["replica_id"] for slot in body["slots"]}
        assert held == {ids[0]: workers.replica_id, ids[1]: workers.replica_id}
        assert {task["id"] for task in body["running"]} == {ids[0], ids[1]}
        assert client.get("/health").json["workers_expected"] == 0
    finally:
        gate.open.set()
        for app in apps:
            app.extensions[EXTENSION_KEY].close()


def test_every_replica_consumes_and_one_publishes_each_task_s_events_in_order(
    amqp_prefix: str, amqp_url: str, postgres_url: str, broker_client: BrokerClient
):
    events = broker_client.events_queue()
    settings = {
        "TESTING": True,
        "DATABASE_URL": postgres_url,
        "TASKSERVICE_TIME_SCALE": 0.001,
        "TASKSERVICE_AMQP_URL": amqp_url,
        "TASKSERVICE_AMQP_PREFIX": amqp_prefix,
    }
    apps: list[Flask] = []
    try:
        apps = [create_app(settings), create_app(settings)]
        for app in apps:
            wait_for(lambda app=app: broker_state(app) == "connected", timeout=30)
        keys = [f"job-{number}" for number in range(50)]
        for key in [*keys, *keys[:10]]:  # ten redeliveries
            broker_client.publish({"name": key, "duration": 2}, message_id=key)

        inbox = Inbox(broker_client, events)
        received = wait_for(lambda: inbox.at_least(3 * len(keys)), timeout=60)

        by_task: dict[int, dict[str, str]] = {}
        for _method, _properties, body in received:
            event = json.loads(body)
            by_task.setdefault(event["id"], {})[event["event_id"]] = event["event"]
        # One publisher at a time, and nothing failed: not even a repeat.
        assert sum(map(len, by_task.values())) == len(received)
        assert len(by_task) == len(keys)  # each message one task, whichever replica took it
        for task_events in by_task.values():
            assert list(task_events.values()) == ["created", "started", "completed"]
        created = [consumed(app) for app in apps]
        assert sum(created) == len(keys)
        assert all(created), f"a replica consumed nothing: {created}"
    finally:
        for app in apps:
            app.extensions[EXTENSION_KEY].close()


def broker_state(app: Flask) -> str:
    report, _healthy = app.extensions[EXTENSION_KEY].health()
    state: str = report["broker"]["state"]
    return state


def consumed(app: Flask) -> int:
    """How many messages this replica made into new tasks."""
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    line = 'taskservice_amqp_messages_total{outcome="created"} '
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return int(float(found[0].removeprefix(line))) if found else 0


def test_a_replica_with_another_concurrency_is_refused_while_others_run(
    postgres_url: str, admin: Engine
):
    settings = {"TESTING": True, "DATABASE_URL": postgres_url, "TASKSERVICE_TIME_SCALE": 0.001}
    first = create_app(settings)
    try:
        with pytest.raises(ConfigError, match="TASKSERVICE_CONCURRENCY is 3, but the 1 replica"):
            create_app({**settings, "TASKSERVICE_CONCURRENCY": 3})
    finally:
        first.extensions[EXTENSION_KEY].close()
    # All stopped (a clean stop removes its replica's row): the new value holds.
    with admin.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM replicas")).scalar() == 0
    second = create_app({**settings, "TASKSERVICE_CONCURRENCY": 3})
    try:
        with admin.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM task_slots")).scalar() == 3
    finally:
        second.extensions[EXTENSION_KEY].close()


def test_the_metrics_count_renewals_failovers_and_fenced_writes(postgres_url: str, gate: Gate):
    settings = {
        "TESTING": True,
        "DATABASE_URL": postgres_url,
        "TASKSERVICE_TIME_SCALE": 0.001,
        "TASKSERVICE_CONCURRENCY": 1,  # one slot: a takes it, b can only take it over
        "TASKSERVICE_LEASE_SECONDS": 2,
    }
    apps: list[Flask] = []
    try:
        apps = [create_app(settings)]
        a = apps[0].extensions[EXTENSION_KEY]
        task_id = apps[0].test_client().post("/tasks", json={"duration": 1}).json["id"]
        gate.wait_for_entries(1)
        wait_for(lambda: metric(apps[0], "taskservice_lease_renewals_total") >= 1, timeout=10)
        apps.append(create_app(settings))

        a.pool.keeper.stop()  # a stalls: no more renewals; b takes the slot over
        wait_for(lambda: metric(apps[1], "taskservice_failovers_total") == 1, timeout=10)
        gate.open.set()  # a's body ends: its result is refused

        wait_for(
            lambda: metric(apps[0], 'taskservice_fenced_writes_total{write="finish"}') == 1,
            timeout=10,
        )
        task = apps[1].test_client().get(f"/tasks/{task_id}").json
        wait_for(
            lambda: apps[1].test_client().get(f"/tasks/{task_id}").json["status"] == "Completed"
        )
        assert task["attempts"] == 2
    finally:
        gate.open.set()
        for app in apps:
            app.extensions[EXTENSION_KEY].close()


def metric(app: Flask, name: str) -> float:
    """A sample of `name` (with its labels, if any) in the app's /metrics; 0 if absent."""
    text_format = app.test_client().get("/metrics").get_data(as_text=True)
    for line in text_format.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
