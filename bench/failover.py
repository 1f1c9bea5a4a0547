"""Failover of replicas on PostgreSQL: a replica that holds a slot is killed or paused.

Three replicas run tasks long enough that two always run. In each trial the
worker of a replica that holds a slot and runs its task's body (task_slots
matched against each replica's /health) gets SIGKILL or SIGSTOP, and the
task's row is polled on one connection until it shows the task queued again
or claimed with a new attempt. A paused worker is resumed once its slot has
been taken over: it must end itself. Between trials every replica answers
200 again and every held slot belongs to a live replica. A sampler counts,
meanwhile, the tasks in Run and the slots held.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from bench.pool_scenarios import SLOTS
from bench.postgres import replicas, scenario_schema
from bench.server import Server, wait_until
from bench.workspace import BenchError, Workspace
from taskservice.pool.shared import POLL as IDLE_POLL

FAILOVER_REPLICAS = ("a", "b", "c")
# Tasks of 10 s at a time scale of 6 run a minute: two always run while the
# replicas are killed and paused, and a task run again outlasts the next trials.
# Two slots finish a task every 30 s at most, a third of one per trial (each
# takes under 10 s): 2 x SLOTS tasks and one more per kill and pause are enough.
TIME_SCALE = 6.0
TASK_DURATION = 10
POLL_INTERVAL = 0.005
SAMPLE_INTERVAL = 0.005
# A paused replica must not hold up the others' health checks for long.
HEALTH_TIMEOUT = 2.0
# Deadlines only, against a stuck service: well past any bound the service gives.
TAKEOVER_ALLOWANCE = 10.0
SETTLE_TIMEOUT = 60.0
EXIT_TIMEOUT = 10.0
# The replicas renew every fifth of the lease: a trial waits a random part of that
# before its signal, so that the signals fall anywhere in the renewal cycle
# rather than just after the claim that settled the previous trial. Seeded: each
# run draws the same waits.
RENEWALS_PER_LEASE = 5
SEED = 20

# With the seconds its lease has left by the server's clock, which sets and compares leases.
_HELD = text(
    "SELECT replica_id, task_id, attempt,"
    " extract(epoch FROM lease_until - timezone('UTC', now())) AS lease_left"
    " FROM task_slots WHERE task_id IS NOT NULL"
)
_TASK = text(
    "SELECT tasks.status, tasks.attempts, task_slots.replica_id FROM tasks"
    " LEFT JOIN task_slots ON task_slots.task_id = tasks.id"
    " AND task_slots.attempt = tasks.attempts WHERE tasks.id = :id"
)
# One statement: one snapshot of both counts.
_COUNTS = text(
    "SELECT (SELECT count(*) FROM tasks WHERE status = 'Run'),"
    " (SELECT count(*) FROM task_slots WHERE task_id IS NOT NULL)"
)


@dataclass
class Takeover:
    """One trial: how long the stopped replica's task took to be taken over, and by whom."""

    seconds: float
    # What the stopped replica's lease had left at the signal: the rest of
    # `seconds` is the wait for an idle worker's look, and the takeover itself.
    lease_left_seconds: float
    # Seen claimed again with a new attempt, not only queued again.
    running_again: bool
    # Taken by a replica that was up before the signal, not by the fresh worker
    # gunicorn started in the stopped one's place.
    by_survivor: bool
    # A paused replica only: from its SIGCONT until its process was gone (None: it stayed).
    exit_seconds: float | None = None


@dataclass
class FailoverRun:
    """The trials at one lease setting, and the most tasks and slots seen at once meanwhile."""

    schema: str
    lease_seconds: float
    replicas: int
    task_seconds: float
    kills: list[Takeover]
    pauses: list[Takeover]
    samples: int
    most_running: int
    most_held: int

    @property
    def bound_seconds(self) -> float:
        """What the service promises: the lease, and one look of an idle worker."""
        return self.lease_seconds + IDLE_POLL


@dataclass(frozen=True)
class Victim:
    """A replica that holds a slot and runs its task's body now, and the others that are up."""

    server: Server
    pid: int
    task_id: int
    attempt: int
    lease_left: float
    survivors: frozenset[str]


class Sampler(threading.Thread):
    """Counts the tasks in Run and the slots held, in one snapshot every few milliseconds."""

    def __init__(self, admin: Engine) -> None:
        super().__init__(name="replica-sampler", daemon=True)
        self._admin = admin
        self.samples = 0
        self.most_running = 0
        self.most_held = 0
        self.error: SQLAlchemyError | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            with self._admin.connect() as connection:
                while not self.stopping.wait(SAMPLE_INTERVAL):
                    running, held = connection.execute(_COUNTS).one()
                    self.most_running = max(self.most_running, running)
                    self.most_held = max(self.most_held, held)
                    self.samples += 1
        except SQLAlchemyError as error:
            self.error = error

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.join(10)


def measure_failover(workspace: Workspace, url: str, lease: float) -> FailoverRun:
    """SIGKILL, then SIGSTOP, a replica holding a slot, `failovers` times each, at `lease` s."""
    trials = workspace.settings.failovers
    names = [f"pg-failover-{lease:g}s-{name}" for name in FAILOVER_REPLICAS]
    env = {"TASKSERVICE_LEASE_SECONDS": f"{lease:g}", "TASKSERVICE_TIME_SCALE": f"{TIME_SCALE:g}"}
    rng = random.Random(SEED)  # noqa: S311 - when to signal, not a secret
    with scenario_schema(url) as schema, replicas(workspace, schema, names, env) as servers:
        for number in range(2 * SLOTS + trials):
            body = {"name": "bench failover", "duration": TASK_DURATION}
            status, _task = servers[number % len(servers)].request("POST", "/tasks", body)
            if status != 201:
                raise BenchError(f"POST /tasks for the failover: HTTP {status}")
        with Sampler(schema.admin) as sampler:
            kills = [
                fail_over(servers, schema.admin, signal.SIGKILL, lease=lease, turn=turn, rng=rng)
                for turn in range(trials)
            ]
            pauses = [
                fail_over(servers, schema.admin, signal.SIGSTOP, lease=lease, turn=turn, rng=rng)
                for turn in range(trials)
            ]
        if sampler.error is not None:
            raise BenchError(f"the sampler of running tasks failed: {sampler.error}")
    return FailoverRun(
        schema=schema.name,
        lease_seconds=lease,
        replicas=len(names),
        task_seconds=TASK_DURATION * TIME_SCALE,
        kills=kills,
        pauses=pauses,
        samples=sampler.samples,
        most_running=sampler.most_running,
        most_held=sampler.most_held,
    )


def fail_over(
    servers: list[Server],
    admin: Engine,
    how: signal.Signals,
    *,
    lease: float,
    turn: int,
    rng: random.Random,
) -> Takeover:
    """Stop (`how`) a replica that runs a task; the time until another has taken it over."""
    settle(servers, admin, turn)
    time.sleep(rng.uniform(0, lease / RENEWALS_PER_LEASE))
    victim = settle(servers, admin, turn)
    os.kill(victim.pid, how)
    signalled = time.monotonic()
    resumed = None
    try:
        seconds, running_again, holder = wait_taken_over(
            admin, victim, signalled, lease + TAKEOVER_ALLOWANCE
        )
    finally:
        if how == signal.SIGSTOP:
            os.kill(victim.pid, signal.SIGCONT)
            resumed = time.monotonic()
    takeover = Takeover(seconds, victim.lease_left, running_again, holder in victim.survivors)
    if resumed is not None:
        takeover.exit_seconds = wait_gone(victim.pid, resumed)
    return takeover


def settle(servers: list[Server], admin: Engine, turn: int) -> Victim:
    """Wait until every replica answers and holds the slots; a replica to stop then."""
    victim: Victim = wait_until(
        lambda: find_victim(servers, admin, turn),
        SETTLE_TIMEOUT,
        "every replica up, and the slots held by them",
        interval=0.05,
    )
    return victim


def health(server: Server) -> dict[str, Any] | None:
    """The replica's /health while it answers 200; None otherwise."""
    try:
        status, body = server.request("GET", "/health", timeout=HEALTH_TIMEOUT)
    except OSError:  # no worker now, or one that is ending
        return None
    return body if status == 200 and isinstance(body, dict) else None


def find_victim(servers: list[Server], admin: Engine, turn: int) -> Victim | None:
    """A replica to stop, once every replica answers and every slot is held by a live one."""
    reports = [health(server) for server in servers]
    if any(report is None for report in reports):
        return None
    with admin.connect() as connection:
        held = connection.execute(_HELD).all()
    live = {report["replica"]["id"]: report for report in reports if report is not None}
    if len(held) < SLOTS or not {slot.replica_id for slot in held} <= set(live):
        return None
    # Turn by turn, so that the trials do not always stop the same replica.
    start = turn % len(servers)
    for index in [*range(start, len(servers)), *range(start)]:
        report = reports[index]
        if report is None:
            continue
        replica = report["replica"]["id"]
        for slot in held:
            if slot.replica_id == replica and slot.task_id in report["running"]:
                return Victim(
                    servers[index],
                    int(report["replica"]["pid"]),
                    slot.task_id,
                    slot.attempt,
                    float(slot.lease_left),
                    frozenset(live) - {replica},
                )
    return None


def wait_taken_over(
    admin: Engine, victim: Victim, signalled: float, timeout: float
) -> tuple[float, bool, str | None]:
    """Seconds until the victim's task left Run or ran again; whether it ran; its new holder."""
    with admin.connect() as connection:
        while True:
            status, attempts, holder = connection.execute(_TASK, {"id": victim.task_id}).one()
            seconds = time.monotonic() - signalled
            if status != "Run" or attempts > victim.attempt:
                return seconds, status == "Run", holder
            if seconds > timeout:
                raise BenchError(
                    f"task {victim.task_id} of a stopped replica not taken over in {timeout:g} s"
                )
            time.sleep(POLL_INTERVAL)


def wait_gone(pid: int, since: float) -> float | None:
    """Seconds from `since` until process `pid` has ended; None if it is still there later."""
    deadline = since + EXIT_TIMEOUT
    while time.monotonic() < deadline:
        if pid_gone(pid):
            return time.monotonic() - since
        time.sleep(POLL_INTERVAL)
    return None


def pid_gone(pid: int) -> bool:
    """Whether process `pid` has ended (its gunicorn master may not have reaped it yet)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True
