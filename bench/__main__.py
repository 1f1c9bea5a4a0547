"""`python -m bench`: measure the service, print the figures, rewrite docs/benchmarks.md."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import http_scenarios as http
from bench.amqp import AMQP_URL, BrokerCheck, address, check_broker
from bench.broker_scenarios import (
    BrokerResult,
    measure_drain,
    measure_intake,
    measure_outbox_cost,
)
from bench.failover import measure_failover
from bench.load import LoadError, machine_busy_seconds, own_cpu_seconds, wrk_path
from bench.machine import REPORT_FILE, describe
from bench.pool_scenarios import SLOTS, measure_pool
from bench.postgres import POSTGRES_URL, PostgresCheck, check_postgres
from bench.postgres import address as postgres_address
from bench.replica_scenarios import REPLICA_COUNTS, ReplicaResult, measure_creation
from bench.report import render, write_report
from bench.results import Results, write_json
from bench.scale_scenarios import measure_scale
from bench.server import ROOT, ServerError
from bench.workspace import BenchError, Settings, Workspace, workspace

# Every commit waits for an fsync: its latency on the disk of the databases
# explains the tail of the write latencies.
FSYNC_PROBE_SECONDS = 3.0
FULL = Settings(
    seconds=10,
    rows=1_000_000,
    backlog=10_000,
    dispatch_tasks=500,
    queued=100_000,
    starts=3,
    messages=3_000,
    failovers=3,
)
QUICK = Settings(
    seconds=1,
    rows=2_000,
    backlog=200,
    dispatch_tasks=40,
    queued=1_000,
    starts=1,
    messages=100,
    failovers=1,
    # The shortest lease only: the default's trials follow the same path, 3 s slower each.
    leases=(2.0,),
)
SIZES = (
    "seconds",
    "rows",
    "backlog",
    "dispatch_tasks",
    "queued",
    "starts",
    "messages",
    "failovers",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; sizes left out come from the full or the --quick preset."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, about 1 s per step")
    parser.add_argument("--seconds", type=float, help=f"per measurement ({FULL.seconds:g})")
    parser.add_argument("--rows", type=int, help=f"rows of the large listing ({FULL.rows:,})")
    parser.add_argument("--backlog", type=int, help=f"queued tasks for reads ({FULL.backlog:,})")
    parser.add_argument(
        "--dispatch-tasks", type=int, help=f"short tasks for dispatch ({FULL.dispatch_tasks})"
    )
    parser.add_argument("--queued", type=int, help=f"largest queue for memory ({FULL.queued:,})")
    parser.add_argument("--starts", type=int, help=f"starts per queue size ({FULL.starts})")
    parser.add_argument(
        "--messages", type=int, help=f"RabbitMQ messages, and tasks of events ({FULL.messages:,})"
    )
    parser.add_argument(
        "--failovers", type=int, help=f"kills and pauses of a replica per lease ({FULL.failovers})"
    )
    parser.add_argument(
        "--amqp-url",
        default=AMQP_URL,
        help=f"the RabbitMQ broker; its section is left out if none answers ({address(AMQP_URL)})",
    )
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_URL,
        help="the PostgreSQL server of the replicas; their section is left out if none answers "
        f"({postgres_address(POSTGRES_URL)})",
    )
    parser.add_argument("--report", type=Path, default=ROOT / REPORT_FILE, help="report to write")
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    parser.add_argument("--tmpdir", type=Path, help="where the temporary databases go (on disk)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The preset, with the sizes given on the command line instead of its own."""
    preset = QUICK if args.quick else FULL
    chosen = {
        name: getattr(args, name) if getattr(args, name) is not None else getattr(preset, name)
        for name in SIZES
    }
    settings = Settings(**chosen, leases=preset.leases)
    if settings.rows <= settings.small_rows:
        raise BenchError(
            f"--rows must be more than the {settings.small_rows:,} rows it is compared to"
        )
    smallest = (settings.seconds, settings.backlog, settings.dispatch_tasks, settings.starts)
    if min(*smallest, settings.failovers) < 1:
        raise BenchError(
            "--seconds, --backlog, --dispatch-tasks, --starts and --failovers must be at least 1"
        )
    if min(settings.queued, settings.messages) < 10:
        raise BenchError("--queued and --messages must be at least 10")
    return settings


def step(message: str) -> None:
    """Say what is being measured, on stderr: a full run takes minutes."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def measure(
    work: Workspace, args: argparse.Namespace, broker: BrokerCheck, postgres: PostgresCheck
) -> Results:
    """Every measurement, one after the other, each on its own server."""
    settings = work.settings
    fsync_seconds = min(FSYNC_PROBE_SECONDS, settings.seconds / 2)
    machine = describe(work.root, fsync_seconds, broker.describe(), postgres.describe())
    step("the ceiling (bench.ceiling:app)")
    ceiling = http.measure_ceiling(work)
    step("POST /tasks")
    creation = http.with_ceiling(http.measure_creation(work), ceiling)
    # Next to POST /tasks without a broker, so that both meet the same machine.
    rabbitmq = None if broker.problem else measure_rabbitmq(work, broker, args.amqp_url)
    step(f"GET /tasks/{{id}} with {settings.backlog:,} queued")
    reads, loaded = http.measure_reads(work)
    listings = []
    for rows in (settings.small_rows, settings.rows):
        step(f"listing on {rows:,} rows")
        listing = http.measure_listing(work, rows)
        for load in listing.loads():
            http.with_ceiling({load.clients: load}, ceiling)
        listings.append(listing)
    step(f"dispatch over {settings.dispatch_tasks:,} tasks, then the limit under load")
    dispatch, limit = measure_pool(work)
    step(f"memory and start-up with up to {settings.queued:,} queued")
    scale = measure_scale(work)
    replicas = None if postgres.problem else measure_postgres(work, postgres, args.postgres_url)
    return Results(
        settings=settings,
        machine=machine,
        ceiling=ceiling,
        creation=creation,
        reads=http.with_ceiling(reads, ceiling),
        reads_loaded=loaded,
        listings=listings,
        dispatch=dispatch,
        limit=limit,
        scale=scale,
        broker=rabbitmq,
        broker_skipped=broker.problem,
        replicas=replicas,
        replicas_skipped=postgres.problem,
    )


def measure_rabbitmq(work: Workspace, broker: BrokerCheck, url: str) -> BrokerResult:
    """The outbox's cost to POST /tasks, messages made tasks, and the outbox published."""
    step("POST /tasks with RabbitMQ")
    creation = measure_outbox_cost(work, url)
    step(f"{work.settings.messages:,} RabbitMQ messages made tasks")
    intake = measure_intake(work, url)
    step(f"the events of {work.settings.messages:,} tasks published from the outbox")
    drain = measure_drain(work, url)
    return BrokerResult(broker.describe(), creation, intake, drain)


def measure_postgres(work: Workspace, postgres: PostgresCheck, url: str) -> ReplicaResult:
    """POST /tasks on one replica and on two, then failovers at each lease."""
    creation = {}
    for count in REPLICA_COUNTS:
        step(f"POST /tasks on PostgreSQL, {count} replica(s)")
        creation[count] = measure_creation(work, url, count)
    failovers = []
    for lease in work.settings.leases:
        times = work.settings.failovers
        step(f"{times} kill(s) and {times} pause(s) of a replica, lease {lease:g} s")
        failovers.append(measure_failover(work, url, lease))
    return ReplicaResult(postgres.describe(), os.cpu_count() or 0, creation, failovers)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 1 if the limit of two was broken, 2 if it could not run."""
    args = parse_args(argv)
    try:
        settings = settings_from(args)
        wrk_path()  # before minutes of work: the one tool that is not in the venv
        broker = check_broker(args.amqp_url)  # and the one server that is not ours
        if broker.problem:
            step(f"{broker.problem}: the RabbitMQ section is left out")
        postgres = check_postgres(args.postgres_url)  # the replicas' server, not ours either
        if postgres.problem:
            step(f"{postgres.problem}: the replicas' section is left out")
        began, own, machine = time.monotonic(), own_cpu_seconds(), machine_busy_seconds()
        with workspace(settings, args.tmpdir) as work:
            results = measure(work, args, broker, postgres)
        # Every server has been stopped and waited for: its CPU time is in our children's.
        others = (machine_busy_seconds() - machine) - (own_cpu_seconds() - own)
        results.other_cpu_share = others / (time.monotonic() - began)
    except (BenchError, LoadError, ServerError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    generated = render(results)
    print(generated)
    write_report(args.report, generated)
    if args.json is not None:
        write_json(results, args.json)
    step(f"report written to {args.report}")
    if results.limit_exceeded():
        print(
            f"bench: FAILED: more than {SLOTS} tasks ran at once (sampled "
            f"{results.limit.most_running_sampled}, intervals {results.limit.max_overlap}, "
            f"across replicas {results.replicas_most_running()})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
