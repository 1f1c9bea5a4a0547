"""Replicas on PostgreSQL: POST /tasks on one replica and on two, and the failover figures.

Every scenario runs on a schema of its own (bench/postgres.py) with real gunicorn
processes, one worker each, as `make run` starts them; the schema is dropped
once they have stopped.
"""

from __future__ import annotations

import resource
import subprocess
import time
from dataclasses import dataclass, field

from bench.failover import FailoverRun
from bench.http_scenarios import CREATE_DURATION
from bench.load import LUA_DIR, Load, LoadError, machine_busy_seconds, parse_wrk, wrk_command
from bench.postgres import cpu_between, postgres_cpu, replicas, scenario_schema
from bench.server import Server
from bench.workspace import Workspace

CREATE_CLIENTS = 8  # in all, split over the replicas: the client count of the POST targets
REPLICA_COUNTS = (1, 2)
WRK_MARGIN = 60.0


@dataclass
class Creation:
    """POST /tasks from CREATE_CLIENTS connections split over `replicas` replicas at once."""

    schema: str
    replicas: int
    # One wrk per replica, all running together; each Load's server CPU is its replica's.
    loads: list[Load]
    seconds: float  # from before the first wrk started to after the last ended
    wrk_cpu_seconds: float
    # None when the server does not run on this machine.
    postgres_cpu_seconds: float | None
    other_cpu_seconds: float

    @property
    def rate(self) -> float:
        """Answers per second, summed over the replicas."""
        return sum(load.rate for load in self.loads)

    @property
    def requests(self) -> int:
        """Answers, over the replicas."""
        return sum(load.requests for load in self.loads)

    @property
    def unexpected(self) -> int:
        """Answers other than 201, and requests that got none."""
        return sum(load.count_other_than(201) + load.socket_error_count for load in self.loads)

    @property
    def workers_cpu_seconds(self) -> float:
        """CPU time of every replica's worker during the run."""
        return sum(load.server_cpu_seconds for load in self.loads)


@dataclass
class ReplicaResult:
    """The PostgreSQL figures, and the server and machine they were made on."""

    postgres: str
    cores: int
    creation: dict[int, Creation]
    failovers: list[FailoverRun] = field(default_factory=list)


def measure_creation(workspace: Workspace, url: str, count: int) -> Creation:
    """POST /tasks on `count` replicas of one fresh schema, the clients split between them."""
    names = [f"pg-create-{count}-{index}" for index in range(1, count + 1)]
    with scenario_schema(url) as schema, replicas(workspace, schema, names) as servers:
        return post_on_replicas(schema.name, servers, CREATE_CLIENTS, workspace.settings.seconds)


@dataclass(frozen=True)
class Moment:
    """CPU time used so far by wrk (once waited for), the harness, each worker, the server."""

    at: float
    children: float
    harness: float
    workers: list[float]
    postgres: dict[int, float]
    machine: float

    @classmethod
    def now(cls, servers: list[Server]) -> Moment:
        """This moment, for the workers of `servers`."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        harness = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            at=time.monotonic(),
            children=children.ru_utime + children.ru_stime,
            harness=harness.ru_utime + harness.ru_stime,
            workers=[server.worker_cpu_seconds() for server in servers],
            postgres=postgres_cpu(),
            machine=machine_busy_seconds(),
        )


def split(clients: int, parts: int) -> list[int]:
    """`clients` shared out over `parts` as evenly as they go."""
    return [clients // parts + (index < clients % parts) for index in range(parts)]


def post_on_replicas(schema: str, servers: list[Server], clients: int, seconds: float) -> Creation:
    """One wrk per replica, all started at once, together `clients` keep-alive connections."""
    shares = split(clients, len(servers))
    commands = [
        wrk_command(
            server,
            "post.lua",
            clients=share,
            seconds=seconds,
            path="/tasks",
            args=(CREATE_DURATION,),
        )
        for server, share in zip(servers, shares, strict=True)
    ]
    before = Moment.now(servers)
    done = run_together(commands, seconds + WRK_MARGIN)
    after = Moment.now(servers)
    loads = [parse_wrk(result, share) for result, share in zip(done, shares, strict=True)]
    for load, first, last in zip(loads, before.workers, after.workers, strict=True):
        load.server_cpu_seconds = last - first
    wrk = after.children - before.children
    workers = sum(load.server_cpu_seconds for load in loads)
    database = cpu_between(before.postgres, after.postgres)
    others = (after.machine - before.machine) - wrk - workers - (after.harness - before.harness)
    return Creation(
        schema=schema,
        replicas=len(servers),
        loads=loads,
        seconds=after.at - before.at,
        wrk_cpu_seconds=wrk,
        postgres_cpu_seconds=database,
        other_cpu_seconds=others - (database or 0.0),
    )


def run_together(
    commands: list[list[str]], timeout: float
) -> list[subprocess.CompletedProcess[str]]:
    """Run the wrk `commands` at the same time; each one's output once all have ended."""
    processes: list[subprocess.Popen[str]] = []
    outputs = []
    deadline = time.monotonic() + timeout
    try:
        for command in commands:
            processes.append(
                subprocess.Popen(  # noqa: S603 - our own command lines
                    command,
                    cwd=LUA_DIR,  # the scripts `require "common"` from their own directory
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise LoadError(f"wrk did not end within {timeout:g} s") from None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return [
        subprocess.CompletedProcess(command, process.returncode, out, err)
        for command, process, (out, err) in zip(commands, processes, outputs, strict=True)
    ]
