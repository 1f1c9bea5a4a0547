"""The task pool seen from outside: dispatch gaps, utilisation and the limit of two."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import analysis, database
from bench.load import Load, run_wrk
from bench.server import Server, wait_until
from bench.workspace import BenchError, Workspace

SLOTS = 2  # the service's TASKSERVICE_CONCURRENCY default: the limit being checked
DISPATCH_DURATION = 0.02
CREATE_CONNECTIONS = 8
LIMIT_CLIENTS = 8
LIMIT_DURATION = "0.002"
LIMIT_SECONDS = 5.0
# Per task, beyond its sleep, when waiting for a backlog to drain: generous,
# since a deadline only guards against a stuck service.
DRAIN_ALLOWANCE = 0.05
DRAIN_MARGIN = 60.0


@dataclass
class DispatchResult:
    """How quickly freed slots took the next task of a standing backlog."""

    tasks: int
    task_seconds: float
    create_seconds: float
    drain_seconds: float
    gaps_ms: list[float]
    gap_p50_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    # The gaps of starts while tasks were still being created (the claim then
    # waits for the write lock behind POSTs), and of the starts after.
    gap_p99_creating_ms: float
    gap_p99_after_ms: float
    gaps_creating: int
    utilisation: float
    unmatched_starts: int


@dataclass
class LimitResult:
    """The most tasks seen running at once while tasks were being created."""

    load: Load
    samples: int
    most_running_sampled: int
    running_histogram: dict[int, int]
    finished_tasks: int
    max_overlap: int


def measure_pool(workspace: Workspace) -> tuple[DispatchResult, LimitResult]:
    """Dispatch over a standing backlog, then the limit under creation load, on one server."""
    path = workspace.database_path("pool")
    with workspace.server("pool", path) as server:
        dispatch = measure_dispatch(server, path, workspace.settings.dispatch_tasks)
        seconds = min(LIMIT_SECONDS, workspace.settings.seconds)
        limit = measure_limit(server, path, seconds)
    return dispatch, limit


def measure_dispatch(server: Server, path: Path, count: int) -> DispatchResult:
    """Create `count` short tasks faster than the slots drain them; rebuild the gaps."""
    began = time.monotonic()
    create_tasks(server, count, DISPATCH_DURATION)
    created = time.monotonic() - began
    wait_drained(path, count, DISPATCH_DURATION)
    runs = database.finished_runs(path)
    if len(runs) != count:
        raise BenchError(f"dispatch: {len(runs)} of {count} tasks ran to an end")
    found = analysis.dispatch(runs, SLOTS)
    gaps_ms = [gap * 1000 for gap in found.gaps]
    creating, after = split_at(gaps_ms, found.gap_starts, max(run.created for run in runs))
    return DispatchResult(
        tasks=count,
        task_seconds=DISPATCH_DURATION,
        create_seconds=created,
        drain_seconds=max(run.finished for run in runs) - min(run.started for run in runs),
        gaps_ms=gaps_ms,
        gap_p50_ms=analysis.percentile(gaps_ms, 50),
        gap_p99_ms=analysis.percentile(gaps_ms, 99),
        gap_max_ms=max(gaps_ms, default=float("nan")),
        gap_p99_creating_ms=analysis.percentile(creating, 99),
        gap_p99_after_ms=analysis.percentile(after, 99),
        gaps_creating=len(creating),
        utilisation=found.utilisation,
        unmatched_starts=found.unmatched_starts,
    )


def split_at(
    gaps: list[float], starts: list[float], moment: float
) -> tuple[list[float], list[float]]:
    """The gaps of the starts up to `moment`, and those of the starts after it."""
    paired = list(zip(gaps, starts, strict=True))
    return [gap for gap, at in paired if at <= moment], [gap for gap, at in paired if at > moment]


def measure_limit(server: Server, path: Path, seconds: float) -> LimitResult:
    """POST very short tasks from several clients while a sampler counts the running ones."""
    with database.RunningSampler(path) as sampler:
        load = run_wrk(
            server,
            "post.lua",
            clients=LIMIT_CLIENTS,
            seconds=seconds,
            path="/tasks",
            args=(LIMIT_DURATION,),
        )
        wait_drained(path, load.requests, float(LIMIT_DURATION))
    runs = database.finished_runs(path)
    return LimitResult(
        load=load,
        samples=sampler.samples,
        most_running_sampled=sampler.most,
        running_histogram=dict(sorted(sampler.histogram.items())),
        finished_tasks=len(runs),
        max_overlap=analysis.max_overlap(runs),
    )


def create_tasks(server: Server, count: int, duration: float) -> None:
    """POST `count` tasks of `duration` s over several keep-alive connections at once."""
    shares = [count // CREATE_CONNECTIONS] * CREATE_CONNECTIONS
    for index in range(count % CREATE_CONNECTIONS):
        shares[index] += 1
    with ThreadPoolExecutor(CREATE_CONNECTIONS) as executor:
        futures = [executor.submit(_post_tasks, server.port, share, duration) for share in shares]
        for future in futures:
            future.result()


def _post_tasks(port: int, count: int, duration: float) -> None:
    """POST `count` tasks on one keep-alive connection; BenchError on any answer but 201."""
    body = json.dumps({"name": "dispatch", "duration": duration})
    headers = {"Content-Type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(count):
            connection.request("POST", "/tasks", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 201:
                raise BenchError(f"POST /tasks answered {response.status}: {answer[:200]!r}")
    finally:
        connection.close()


def wait_drained(path: Path, tasks: int, duration: float) -> None:
    """Wait until no task is queued or running, allowing for `tasks` tasks of `duration` s."""
    timeout = tasks * (duration + DRAIN_ALLOWANCE) / SLOTS + DRAIN_MARGIN
    wait_until(lambda: database.unfinished(path) == 0, timeout, "draining the queue", 0.02)
