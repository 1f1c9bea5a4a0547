"""The issue's targets, checked against the figures of one run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.load import Load
from bench.pool_scenarios import SLOTS
from bench.results import Results

TARGET_CLIENTS = 8
LARGE_ROWS_RATIO = 1.5


@dataclass
class Check:
    """One target: what it asks, what was measured, and whether it was met."""

    name: str
    target: str
    measured: str
    met: bool


def _at_least(name: str, value: float, low: float, unit: str, digits: int = 0) -> Check:
    return Check(name, f"≥ {low:,.{digits}f}{unit}", f"{value:,.{digits}f}{unit}", value >= low)


def _at_most(name: str, value: float, high: float, unit: str, digits: int = 1) -> Check:
    return Check(name, f"≤ {high:,.{digits}f}{unit}", f"{value:,.{digits}f}{unit}", value <= high)


def _share(name: str, load: Load, low: float) -> Check:
    share = load.of_ceiling if load.of_ceiling is not None else math.nan
    return Check(name, f"≥ {low:.2f}", f"{share:.2f}", share >= low)


def creation_checks(results: Results) -> list[Check]:
    """POST /tasks at 8 clients, and its answers at every client count."""
    load = results.creation[TARGET_CLIENTS]
    others = sum(
        item.count_other_than(201) + item.socket_error_count for item in results.creation.values()
    )
    return [
        _at_least("POST /tasks, 8 clients: throughput", load.rate, 800, "/s"),
        _at_most("POST /tasks, 8 clients: p99 latency", load.p99_ms, 50, " ms"),
        Check("POST /tasks: answers other than 201", "0", f"{others:,}", others == 0),
        _share("POST /tasks, 8 clients: share of ceiling", load, 0.5),
    ]


def read_checks(results: Results) -> list[Check]:
    """GET /tasks/{id} at 8 clients with the backlog queued."""
    load = results.reads[TARGET_CLIENTS]
    return [
        _at_least("GET /tasks/{id}, 8 clients: throughput", load.rate, 1300, "/s"),
        _at_most("GET /tasks/{id}, 8 clients: p99 latency", load.p99_ms, 20, " ms"),
        _share("GET /tasks/{id}, 8 clients: share of ceiling", load, 0.6),
    ]


def _ratios(name: str, large: Load, small: Load) -> Check:
    ratios = (large.p50_ms / small.p50_ms, large.p99_ms / small.p99_ms)
    met = all(ratio <= LARGE_ROWS_RATIO for ratio in ratios)
    measured = f"{ratios[0]:.2f}x / {ratios[1]:.2f}x"
    return Check(name, f"≤ {LARGE_ROWS_RATIO}x / {LARGE_ROWS_RATIO}x", measured, met)


def listing_checks(results: Results) -> list[Check]:
    """Task reads, first list pages and the dashboard's poll at many rows against few."""
    small, large = results.small, results.large
    rows = f"{large.rows:,} rows vs {small.rows:,}"
    checks = []
    for clients in sorted(large.first_pages):
        label = "1 client" if clients == 1 else f"{clients} clients"
        checks += [
            _ratios(
                f"GET /tasks/{{id}}, {label}: p50 / p99, {rows}",
                large.task_read[clients],
                small.task_read[clients],
            ),
            _ratios(
                f"GET /tasks first pages, {label}: p50 / p99, {rows}",
                large.first_pages[clients],
                small.first_pages[clients],
            ),
            _at_most(
                f"GET /tasks first pages, {label}: p99 at {large.rows:,} rows",
                large.first_pages[clients].p99_ms,
                20,
                " ms",
            ),
            _ratios(
                f"GET /overview, {label}: p50 / p99, {rows}",
                large.overview[clients],
                small.overview[clients],
            ),
        ]
    return checks


def pool_checks(results: Results) -> list[Check]:
    """Dispatch gaps, utilisation and the limit of two."""
    dispatch, limit = results.dispatch, results.limit
    return [
        _at_most("dispatch gap p99", dispatch.gap_p99_ms, 5, " ms", digits=2),
        _at_least("slot utilisation", dispatch.utilisation * 100, 99, " %", digits=1),
        Check(
            "most tasks running at once (sampled)",
            f"= {SLOTS}",
            str(limit.most_running_sampled),
            limit.most_running_sampled == SLOTS,
        ),
        Check(
            "most tasks running at once (recorded intervals)",
            f"= {SLOTS}",
            str(limit.max_overlap),
            limit.max_overlap == SLOTS,
        ),
    ]


def scale_checks(results: Results) -> list[Check]:
    """Bytes per queued task and recovery time at the largest queue."""
    empty, full = results.scale[0], results.scale[-1]
    per_task = (full.rss_median - empty.rss_median) / full.queued if full.queued else math.nan
    recovery = full.startup_median - empty.startup_median
    return [
        _at_most(f"worker memory per queued task at {full.queued:,}", per_task, 200, " bytes", 0),
        _at_most(
            f"recovery of {full.queued:,} queued tasks (start-up minus empty start-up)",
            recovery,
            2,
            " s",
            digits=2,
        ),
    ]


def replica_checks(results: Results) -> list[Check]:
    """On PostgreSQL: every create answered 201, failovers within their bound, one limit."""
    replicas = results.replicas
    if replicas is None:
        return []
    others = sum(creation.unexpected for creation in replicas.creation.values())
    checks = [
        Check(
            "POST /tasks on PostgreSQL replicas: answers other than 201",
            "0",
            f"{others:,}",
            others == 0,
        )
    ]
    for run in replicas.failovers:
        lease = f"lease {run.lease_seconds:g} s"
        for how, trials in (("SIGKILL", run.kills), ("SIGSTOP", run.pauses)):
            slowest = max(trial.seconds for trial in trials)
            checks.append(
                _at_most(
                    f"task of a replica stopped by {how} taken over, {lease}: slowest",
                    slowest,
                    run.bound_seconds,
                    " s",
                    digits=2,
                )
            )
    most = results.replicas_most_running()
    checks.append(
        Check(
            "most tasks running or slots held at once across replicas (sampled)",
            f"≤ {SLOTS}",
            str(most),
            most <= SLOTS,
        )
    )
    return checks


def all_checks(results: Results) -> list[Check]:
    """Every target, in the order of the report."""
    return [
        *creation_checks(results),
        *read_checks(results),
        *listing_checks(results),
        *pool_checks(results),
        *scale_checks(results),
        *replica_checks(results),
    ]
