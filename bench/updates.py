"""`python -m bench.updates`: the row writes one task costs on PostgreSQL, and what hot rows cost.

Each variant gets a fresh schema, migrated, then changed by its statements;
two gunicorn replicas on it; N tasks created over HTTP by a few client
threads, half on each replica; the run ends when every task is Completed or
Failed. The replicas are stopped (their backends flush their statistics as
they exit) and pg_stat_user_tables is read until it stops changing. A
sampler counts, every 10 ms, the replicas' backends waiting for a lock. At
the end, as a control, every task gets an update that changes no indexed
column: whether it is HOT tells the indexes' part from the pages' free space.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench.server import SERVICE_APP, Server, wait_until
from taskservice.db import Database

ADMIN_URL = os.environ.get(
    "TASKSERVICE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_MIGRATION = importlib.import_module("taskservice.migrations.versions.0007_count_changes")
VARIANTS: dict[str, list[str]] = {
    "appending (0007)": [],
    "updating (0002)": [str(_MIGRATION.UPDATING_TRIGGER)],
    "appending, tasks fillfactor 50": ["ALTER TABLE tasks SET (fillfactor = 50)"],
}
TABLES = ("tasks", "task_slots", "task_count_changes", "task_counts", "replicas")
COLUMNS = ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del", "n_dead_tup")
_STATS = text(
    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup,"
    " pg_table_size(relid) AS heap, pg_indexes_size(relid) AS indexes"
    " FROM pg_stat_user_tables WHERE schemaname = :schema"
)
_WAITING = text(
    "SELECT wait_event FROM pg_stat_activity"
    " WHERE application_name LIKE :prefix AND wait_event_type = 'Lock'"
)
_UNFINISHED = text("SELECT count(*) FROM tasks WHERE status NOT IN ('Completed', 'Failed')")
Stats = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Run:
    """One variant's figures: statistics since the migration, times, lock waits, deadlocks."""

    name: str
    stats: Stats
    create_seconds: float
    seconds: float
    lock_wait_share: float
    lock_waits: str
    deadlocks: int
    control_hot_share: float


def read_stats(connection: Connection, schema: str) -> Stats:
    """The schema's tables' counters now, not the snapshot of an earlier read."""
    connection.execute(text("SELECT pg_stat_clear_snapshot()"))
    rows = connection.execute(_STATS, {"schema": schema}).mappings()
    return {row["relname"]: {key: int(row[key]) for key in row if key != "relname"} for row in rows}


def settled_stats(connection: Connection, schema: str, timeout: float = 30.0) -> Stats:
    """The counters once three reads 0.5 s apart agree; backends flush theirs with a delay."""
    reads = [read_stats(connection, schema)]
    deadline = time.monotonic() + timeout
    while len(reads) < 3 or any(read != reads[-1] for read in reads[-3:]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the statistics of {schema} kept changing for {timeout:g} s")
        time.sleep(0.5)
        reads.append(read_stats(connection, schema))
    return reads[-1]


@contextmanager
def fresh_schema(admin: Engine) -> Iterator[tuple[str, str]]:
    """A new schema and a URL whose sessions use it; dropped at the end, even on failure."""
    name = f"bench_updates_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    try:
        url = make_url(ADMIN_URL).update_query_dict({"options": f"-csearch_path={name}"})
        yield name, url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            # Any backend of ours still on the schema would make DROP wait.
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE :prefix"
                ),
                {"prefix": f"{name}%"},
            )
            connection.exec_driver_sql("SET lock_timeout = '10s'")
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class LockSampler(threading.Thread):
    """Every 10 ms: whether some backend named `prefix`* waits for a lock."""

    def __init__(self, admin: Engine, prefix: str) -> None:
        super().__init__(name="lock-sampler", daemon=True)
        self._admin, self._prefix = admin, prefix
        self.samples = self.waiting = 0
        self.events: Counter[str] = Counter()  # backends seen waiting, by what they wait for
        self.stopping = threading.Event()

    def run(self) -> None:
        """Sample until stopped."""
        with self._admin.connect() as connection:
            while not self.stopping.wait(0.01):
                waits = connection.execute(_WAITING, {"prefix": self._prefix}).scalars().all()
                self.samples += 1
                self.waiting += bool(waits)
                self.events.update(waits)


def create_tasks(servers: Sequence[Server], count: int, clients: int) -> None:
    """POST `count` tasks from `clients` threads, each on both replicas in turn."""
    rng = random.Random(13)  # noqa: S311 - a repeatable mix, not a secret
    bodies = [
        {
            "name": f"bench {n}",
            "duration": 13 if rng.random() < 0.02 else rng.randint(0, 10),
            "priority": rng.choice(("high", "medium", "low")),
        }
        for n in range(count)
    ]
    errors: list[str] = []

    def post(first: int) -> None:
        for n in range(first, count, clients):
            status, answer = servers[n % len(servers)].request("POST", "/tasks", bodies[n])
            if status != 201:
                errors.append(f"POST /tasks answered {status}: {answer}")
                return

    threads = [threading.Thread(target=post, args=(first,)) for first in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])


def all_finished(connection: Connection, servers: Sequence[Server]) -> bool:
    """Whether every task has ended; RuntimeError if a replica has exited meanwhile."""
    for server in servers:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"a replica exited:\n{server.log_tail()}")
    return bool(connection.execute(_UNFINISHED).scalar_one() == 0)


def run_variant(admin: Engine, name: str, statements: list[str], count: int, clients: int) -> Run:
    """Migrate a fresh schema, apply `statements`, run `count` tasks through two replicas."""
    with fresh_schema(admin) as (schema, url), tempfile.TemporaryDirectory() as logs:
        db = Database(url)
        try:
            db.upgrade_schema()
            with db.engine.begin() as connection:
                for statement in statements:
                    connection.exec_driver_sql(statement)
        finally:
            db.dispose()
        servers: list[Server] = []
        with admin.connect() as connection:
            connection.exec_driver_sql(f'SET search_path = "{schema}"')
            before = settled_stats(connection, schema)
            sampler = LockSampler(admin, f"{schema}%")
            try:
                for replica in ("a", "b"):
                    replica_url = make_url(url).update_query_dict(
                        {"application_name": f"{schema}_{replica}"}
                    )
                    env = {
                        "DATABASE_URL": replica_url.render_as_string(hide_password=False),
                        "TASKSERVICE_TIME_SCALE": "0.001",
                        "LOG_LEVEL": "warning",
                    }
                    servers.append(Server(SERVICE_APP, None, Path(logs, replica), env))
                    servers[-1].start()
                sampler.start()
                began = time.monotonic()
                create_tasks(servers, count, clients)
                created = time.monotonic()
                wait_until(
                    lambda: all_finished(connection, servers),
                    timeout=600,
                    what="every task finished",
                    interval=0.05,
                )
                ended = time.monotonic()
            finally:
                sampler.stopping.set()
                for server in servers:
                    server.stop()
                if sampler.ident is not None:
                    sampler.join()
            after = settled_stats(connection, schema)
            # The control: an update of a column no index names, on the same pages.
            connection.execute(text("UPDATE tasks SET exec_time = exec_time"))
            connection.execute(text("SELECT pg_stat_force_next_flush()"))  # this backend's
            probe = settled_stats(connection, schema)["tasks"]
        logged = "".join(server.log_path.read_text(errors="replace") for server in servers)
    stats = {
        table: {key: value - before.get(table, {}).get(key, 0) for key, value in row.items()}
        for table, row in after.items()
    }
    for table, row in stats.items():  # sizes and dead rows as they stand, not deltas
        row.update({key: after[table][key] for key in ("n_dead_tup", "heap", "indexes")})
    share = sampler.waiting / max(sampler.samples, 1)
    waits = ", ".join(f"{event} {n}" for event, n in sampler.events.most_common(3)) or "none"
    # Once per error: its traceback prints the driver's exception, then SQLAlchemy's with this.
    deadlocks = logged.count("(psycopg.errors.DeadlockDetected)")
    hot = (probe["n_tup_hot_upd"] - after["tasks"]["n_tup_hot_upd"]) / count
    return Run(name, stats, created - began, ended - began, share, waits, deadlocks, hot)


def render(runs: Sequence[Run], count: int) -> str:
    """A markdown table: per task, each counter of each table, then the run's times."""
    lines = ["| per task | " + " | ".join(run.name for run in runs) + " |"]
    lines.append("|---" * (len(runs) + 1) + "|")
    for table in TABLES:
        for column in COLUMNS:
            values = [run.stats.get(table, {}).get(column, 0) / count for run in runs]
            if any(values):
                lines.append(
                    f"| {table}.{column} | " + " | ".join(f"{v:.2f}" for v in values) + " |"
                )
    figures: list[tuple[str, Callable[[Run], str]]] = [
        ("tasks: HOT share of updates", lambda r: _hot_share(r.stats["tasks"])),
        ("control, exec_time only: HOT share", lambda r: f"{r.control_hot_share:.1%}"),
        *((f"{t}: heap + indexes, KiB", functools.partial(_kib, t)) for t in TABLES),
        ("creates/s (HTTP, 2 replicas)", lambda r: f"{count / r.create_seconds:.0f}"),
        ("wall time, s", lambda r: f"{r.seconds:.1f}"),
        ("tasks/s, create to last finish", lambda r: f"{count / r.seconds:.0f}"),
        ("samples with a lock waiter", lambda r: f"{r.lock_wait_share:.1%}"),
        ("lock waits seen, by wait_event", lambda r: r.lock_waits),
        ("deadlocks logged", lambda r: str(r.deadlocks)),
    ]
    for label, value in figures:
        lines.append(f"| {label} | " + " | ".join(value(run) for run in runs) + " |")
    return "\n".join(lines)


def _hot_share(row: dict[str, int]) -> str:
    return f"{row['n_tup_hot_upd'] / max(row['n_tup_upd'], 1):.1%}"


def _kib(table: str, run: Run) -> str:
    row = run.stats.get(table, {})
    return f"{row.get('heap', 0) // 1024} + {row.get('indexes', 0) // 1024}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run every variant (or those named) and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.updates", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per variant (2000)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (4)")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="repeatable")
    args = parser.parse_args(argv)
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        runs = [
            run_variant(admin, name, VARIANTS[name], args.tasks, args.clients)
            for name in args.variant or VARIANTS
        ]
    finally:
        admin.dispose()
    print(render(runs, args.tasks))


if __name__ == "__main__":
    main()
