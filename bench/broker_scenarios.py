"""RabbitMQ: messages made tasks, the outbox's events published, and the outbox's cost to POST."""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import database
from bench.amqp import ScenarioBroker, broker_cpu_seconds, scenario_broker
from bench.http_scenarios import post_tasks
from bench.load import Load, machine_busy_seconds
from bench.pool_scenarios import create_tasks, wait_drained
from bench.server import Server, wait_until
from bench.workspace import BenchError, Workspace

# Tasks of an hour wait in the queue (two of them run), as in the POST /tasks
# rows: the figure is the intake itself, not the intake racing two slots that
# claim and finish tasks (two more commits each).
MESSAGE_BODY = {"name": "bench message", "duration": 3600}
# The events' backlog comes from tasks that run to an end at once, so none is
# left running to be requeued at the restart: three events each.
BACKLOG_DURATION = 0.0
OUTBOX_CLIENTS = 8  # the client count of the POST /tasks targets
POLL_INTERVAL = 0.005
CONNECT_TIMEOUT = 30.0
# Deadlines only guard against a stuck service: generous per message or event.
PER_ITEM_ALLOWANCE = 0.02
MARGIN = 60.0


@dataclass(frozen=True)
class Moment:
    """A moment of a measurement: the clock, and the CPU time used so far by each side."""

    at: float
    server_cpu: float
    broker_cpu: float | None
    harness_cpu: float
    machine_cpu: float

    @classmethod
    def now(cls, server: Server) -> Moment:
        """This moment, for `server`'s worker."""
        harness = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            at=time.monotonic(),
            server_cpu=server.worker_cpu_seconds(),
            broker_cpu=broker_cpu_seconds(),
            harness_cpu=harness.ru_utime + harness.ru_stime,
            machine_cpu=machine_busy_seconds(),
        )


@dataclass
class Span:
    """A count's rise, from its first sighting above zero to its target, and the CPU meanwhile."""

    counted: int
    seconds: float
    server_cpu_seconds: float
    # None when the broker does not run on this machine.
    broker_cpu_seconds: float | None
    # Every other process on the machine (the harness excluded): a shared machine shows here.
    other_cpu_seconds: float

    @classmethod
    def between(cls, first: Moment, last: Moment, counted: int) -> Span:
        """The span from `first` to `last`, over which the count rose by `counted`."""
        broker = None
        if first.broker_cpu is not None and last.broker_cpu is not None:
            broker = last.broker_cpu - first.broker_cpu
        server = last.server_cpu - first.server_cpu
        harness = last.harness_cpu - first.harness_cpu
        other = last.machine_cpu - first.machine_cpu - server - harness - (broker or 0.0)
        return cls(counted, last.at - first.at, server, broker, other)

    @property
    def rate(self) -> float:
        """Counted per second."""
        return self.counted / self.seconds if self.seconds > 0 else math.nan


@dataclass
class Intake:
    """Messages waiting in the create queue, made tasks by a service started on them."""

    prefix: str
    messages: int
    span: Span


@dataclass
class Drain:
    """An outbox's backlog, published by a service started on it."""

    prefix: str
    tasks: int
    events: int  # in the outbox at the start
    routed: int  # in the bench's queue at the end
    span: Span


@dataclass
class OutboxCost:
    """POST /tasks with a broker configured: each create also writes its event."""

    prefix: str
    load: Load
    broker_cpu_seconds: float | None
    pending: int  # events in the outbox as the load ended

    @property
    def other_cpu_seconds(self) -> float:
        """The load's other CPU time without the broker's: the processes outside the run."""
        return self.load.other_cpu_seconds - (self.broker_cpu_seconds or 0.0)


@dataclass
class BrokerResult:
    """The three RabbitMQ measurements, and the broker they were made on."""

    broker: str
    creation: OutboxCost
    intake: Intake
    drain: Drain


def measure_outbox_cost(workspace: Workspace, url: str) -> OutboxCost:
    """POST /tasks at 8 clients on a fresh database, with the service's broker connected."""
    with scenario_broker(url) as broker:
        path = workspace.database_path("create-amqp")
        with workspace.server("create-amqp", path, env=broker.service_env()) as server:
            wait_connected(server)
            before = broker_cpu_seconds()
            load = post_tasks(server, OUTBOX_CLIENTS, workspace.settings.seconds)
            after = broker_cpu_seconds()
            with database.read_only(path) as connection:
                pending = database.row_count(connection, "task_events")
    used = None if before is None or after is None else after - before
    return OutboxCost(broker.topology.prefix, load, used, pending)


def measure_intake(workspace: Workspace, url: str) -> Intake:
    """Publish the messages first, then start the service on them and count its tasks."""
    count = workspace.settings.messages
    with scenario_broker(url) as broker:
        broker.publish_tasks(count, MESSAGE_BODY)
        path = workspace.database("amqp-messages")
        with (
            workspace.server("amqp-messages", path, env=broker.service_env()) as server,
            database.read_only(path) as connection,
        ):
            span = watch(
                server,
                lambda: database.row_count(connection, "tasks"),
                count,
                "tasks made of messages",
            )
            check_intake(broker, database.row_count(connection, "tasks"), count)
    return Intake(broker.topology.prefix, count, span)


def check_intake(broker: ScenarioBroker, tasks: int, messages: int) -> None:
    """Fail unless every message made one task and none was dead-lettered."""
    dead = broker.depth(broker.topology.dead_letter_queue)
    if tasks != messages or dead:
        raise BenchError(f"{messages:,} messages made {tasks:,} tasks and {dead:,} dead letters")


def measure_drain(workspace: Workspace, url: str) -> Drain:
    """Fill the outbox with the broker out of reach, then start the service with it."""
    count = workspace.settings.messages
    with scenario_broker(url) as broker:
        path = workspace.database("amqp-events")
        events = fill_outbox(workspace, broker, path, count)
        with (
            workspace.server("amqp-events", path, env=broker.service_env()) as server,
            database.read_only(path) as connection,
        ):
            queue = broker.events_queue
            span = watch(server, lambda: broker.depth(queue), events, "events routed")
            # Published, then deleted: the last batch's delete follows its confirms.
            wait_until(
                lambda: database.row_count(connection, "task_events") == 0,
                MARGIN,
                "the outbox emptied",
            )
            routed = broker.depth(queue)
    return Drain(broker.topology.prefix, count, events, routed, span)


def fill_outbox(workspace: Workspace, broker: ScenarioBroker, path: Path, count: int) -> int:
    """Create and run `count` tasks over HTTP while the broker cannot be reached; the events."""
    env = broker.service_env(reachable=False)
    with workspace.server("amqp-backlog", path, env=env) as server:
        create_tasks(server, count, BACKLOG_DURATION)
        wait_drained(path, count, BACKLOG_DURATION)
    with database.read_only(path) as connection:
        events = database.row_count(connection, "task_events")
    if events < count:
        raise BenchError(f"{count:,} tasks left {events:,} events in the outbox")
    return events


def wait_connected(server: Server) -> None:
    """Wait until both of the service's broker connections are up."""
    wait_until(
        lambda: broker_state(server) == "connected",
        CONNECT_TIMEOUT,
        "the service's broker connections",
        interval=0.05,
    )


def broker_state(server: Server) -> str:
    """`broker.state` of the service's /health: disabled, connecting or connected."""
    _status, body = server.request("GET", "/health")
    return str(body["broker"]["state"]) if isinstance(body, dict) else "unknown"


def watch(server: Server, count: Callable[[], int], target: int, what: str) -> Span:
    """Poll `count()` until it reaches `target`; the span from its first sighting above zero."""
    timeout = target * PER_ITEM_ALLOWANCE + MARGIN
    deadline = time.monotonic() + timeout
    first: Moment | None = None
    seen = 0
    while (now := count()) < target:
        if first is None and now > 0:
            first, seen = Moment.now(server), now
        if time.monotonic() > deadline:
            health = server.request("GET", "/health")[1]
            raise BenchError(f"{what}: {now:,} of {target:,} in {timeout:g} s; /health: {health}")
        time.sleep(POLL_INTERVAL)
    last = Moment.now(server)
    if first is None:
        raise BenchError(f"{what}: all {target:,} came before the first look; measure more")
    return Span.between(first, last, target - seen)
