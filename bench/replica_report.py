"""The report's section on replicas on PostgreSQL: POST /tasks on one and two, and failover."""

from __future__ import annotations

import statistics

from bench.failover import (
    FAILOVER_REPLICAS,
    POLL_INTERVAL,
    SAMPLE_INTERVAL,
    TASK_DURATION,
    TIME_SCALE,
    FailoverRun,
    Takeover,
)
from bench.load import Load
from bench.markdown import ms, percent, table
from bench.pool_scenarios import SLOTS
from bench.replica_scenarios import CREATE_CLIENTS, Creation, ReplicaResult
from bench.results import Results
from taskservice.pool.shared import POLL as IDLE_POLL

CREATE_HEADER = (
    f"POST /tasks, {CREATE_CLIENTS} clients in all",
    "clients",
    "req/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "answers",
    "not 201",
    "worker CPU",
    "PostgreSQL CPU",
    "wrk CPU",
    "other CPU",
)
FAILOVER_HEADER = (
    "replica stopped by",
    "lease",
    "trials",
    "min s",
    "median s",
    "max s",
    "bound s",
    "lease left at the signal, min / max s",
    "after the lease expired, median / max s",
    "taken by a replica up before",
    "running again when seen",
)


def _share(seconds: float | None, over: float) -> str:
    # /proc/stat counts in clock ticks: a quiet machine can come out a little below 0.
    return "—" if seconds is None else percent(max(0.0, seconds / over))


def _replica_row(name: str, load: Load) -> list[str]:
    return [
        name,
        str(load.clients),
        f"{load.rate:,.0f}",
        ms(load.p50_ms),
        ms(load.p99_ms),
        ms(load.max_ms),
        f"{load.requests:,}",
        f"{load.count_other_than(201) + load.socket_error_count:,}",
        _share(load.server_cpu_seconds, load.seconds),
        "",
        "",
        "",
    ]


def _together_row(name: str, creation: Creation, latencies: Load | None) -> list[str]:
    over = creation.seconds
    return [
        name,
        str(sum(load.clients for load in creation.loads)),
        f"{creation.rate:,.0f}",
        "" if latencies is None else ms(latencies.p50_ms),
        "" if latencies is None else ms(latencies.p99_ms),
        "" if latencies is None else ms(latencies.max_ms),
        f"{creation.requests:,}",
        f"{creation.unexpected:,}",
        _share(creation.workers_cpu_seconds, over),
        _share(creation.postgres_cpu_seconds, over),
        _share(creation.wrk_cpu_seconds, over),
        _share(creation.other_cpu_seconds, over),
    ]


def creation_rows(replicas: ReplicaResult) -> list[list[str]]:
    """One row per run of one replica; per replica, then together, for runs of several."""
    rows = []
    for count, creation in sorted(replicas.creation.items()):
        if count == 1:
            rows.append(_together_row("1 replica", creation, creation.loads[0]))
            continue
        rows += [
            _replica_row(f"{count} replicas: replica {index}", load)
            for index, load in enumerate(creation.loads, start=1)
        ]
        rows.append(_together_row(f"{count} replicas together", creation, None))
    return rows


def _stats(trials: list[Takeover]) -> list[str]:
    seconds = [trial.seconds for trial in trials]
    return [f"{min(seconds):.2f}", f"{statistics.median(seconds):.2f}", f"{max(seconds):.2f}"]


def _after_expiry(trials: list[Takeover]) -> str:
    after = [trial.seconds - trial.lease_left_seconds for trial in trials]
    return f"{statistics.median(after):.2f} / {max(after):.2f}"


def _lease_left(trials: list[Takeover]) -> str:
    left = [trial.lease_left_seconds for trial in trials]
    return f"{min(left):.2f} / {max(left):.2f}"


def failover_rows(runs: list[FailoverRun]) -> list[list[str]]:
    """Min, median and max of the takeovers, per signal and lease."""
    rows = []
    for run in runs:
        for how, trials in (("SIGKILL", run.kills), ("SIGSTOP", run.pauses)):
            rows.append(
                [
                    how,
                    f"{run.lease_seconds:g} s",
                    str(len(trials)),
                    *_stats(trials),
                    f"{run.bound_seconds:.2f}",
                    _lease_left(trials),
                    _after_expiry(trials),
                    f"{sum(trial.by_survivor for trial in trials)} of {len(trials)}",
                    f"{sum(trial.running_again for trial in trials)} of {len(trials)}",
                ]
            )
    return rows


def _exits(runs: list[FailoverRun]) -> str:
    """How long each resumed replica took to end itself."""
    parts = []
    for run in runs:
        seconds = [
            "stayed" if trial.exit_seconds is None else f"{trial.exit_seconds * 1000:.0f} ms"
            for trial in run.pauses
        ]
        parts.append(f"{', '.join(seconds)} at a lease of {run.lease_seconds:g} s")
    return "; ".join(parts)


def creation_note(replicas: ReplicaResult, seconds: float) -> str:
    """How POST /tasks was loaded, and what shares the machine with the replicas."""
    ratio = ""
    if 1 in replicas.creation and 2 in replicas.creation:
        one, two = replicas.creation[1].rate, replicas.creation[2].rate
        ratio = f"Two replicas created {two / one:.2f}x the tasks of one."
    parts = [
        f"On {replicas.postgres}, each run on a fresh schema, dropped after; {seconds:g} s",
        "per run. With two replicas, one wrk per replica with its share of the",
        f"{CREATE_CLIENTS} keep-alive connections, both started at once, and",
        "the rates summed (each replica's own latencies are in its row). Every replica is a",
        "gunicorn process with one worker that runs tasks: two of the hour-long tasks",
        f"created run, the rest wait. The machine has {replicas.cores} CPU cores: the",
        "replicas' workers, PostgreSQL and wrk share them, so a second replica adds a",
        "second interpreter, not a core of its own.",
        ratio,
        "CPU columns as a share of one core over the run: each worker, every `postgres`",
        "process on the machine (a backend that ended during the run is not counted), wrk,",
        "and every other process (the harness excluded).",
    ]
    return " ".join(part for part in parts if part)


def failover_note(runs: list[FailoverRun]) -> str:
    """How the failovers were measured, and what the sampler saw meanwhile."""
    first = runs[0]
    samples = sum(run.samples for run in runs)
    most_running = max(run.most_running for run in runs)
    most_held = max(run.most_held for run in runs)
    return " ".join(
        [
            f"{first.replicas} replicas ({', '.join(FAILOVER_REPLICAS)}) on a fresh schema per",
            f"lease, `TASKSERVICE_CONCURRENCY={SLOTS}`, tasks of {first.task_seconds:g} s",
            f"(duration {TASK_DURATION} at `TASKSERVICE_TIME_SCALE={TIME_SCALE:g}`), so that two",
            "always run. Each trial stops the worker process (`replica.pid` of `/health`) of a",
            "replica that holds a slot (`task_slots.replica_id` matched with `replica.id`) and",
            "runs its task, and times from the signal until that task's row shows it queued",
            "again or claimed with a new attempt (polled every",
            f"{POLL_INTERVAL * 1000:g} ms on one connection). Each signal comes after a random",
            "wait of up to a fifth of the lease (the renewal interval), so that it falls",
            "anywhere between two renewals. Bound: the lease plus one look of an idle worker",
            f"({IDLE_POLL:g} s), what the README promises. Lease left: `lease_until` less the",
            "server's clock just before the signal; the rest of a takeover is the wait for an",
            "idle worker's look and its claim. After a SIGKILL gunicorn starts a fresh worker,",
            "a new replica, which may take the task over itself; a paused worker is resumed",
            f"(SIGCONT) once its task is taken over, and ended itself after {_exits(runs)}.",
            "Between trials every replica answers 200 and every slot is held by a live one. A",
            f"sampler on its own connection, every {SAMPLE_INTERVAL * 1000:g} ms, took",
            f"{samples:,} samples meanwhile: at most {most_running} tasks in Run and",
            f"{most_held} slots held at once.",
        ]
    )


def replica_section(results: Results) -> str:
    """POST /tasks on PostgreSQL with one and two replicas, then the failover times."""
    replicas = results.replicas
    if replicas is None:
        return "\n\n".join(
            [
                "### Replicas on PostgreSQL",
                f"Not measured: {results.replicas_skipped}. Start a server, or pass "
                "`--postgres-url`, and run again; with `TASKSERVICE_REQUIRE_POSTGRES=1` the run "
                "fails instead.",
            ]
        )
    return "\n\n".join(
        [
            "### Replicas on PostgreSQL",
            table(CREATE_HEADER, creation_rows(replicas)),
            creation_note(replicas, results.settings.seconds),
            table(FAILOVER_HEADER, failover_rows(replicas.failovers)),
            failover_note(replicas.failovers),
        ]
    )
