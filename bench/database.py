"""Benchmark databases: built by the service's own migrations, filled with sqlite3."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.server import SERVICE_APP, Server

# One row per number n in 1..:count. A multiplicative hash of n (Knuth's
# constant) spreads statuses and priorities without a visible pattern, the same
# way on every run; create_time grows with n, 0.5 s apart, ending now. Times
# are in microseconds until ts() writes them as SQLAlchemy does: naive UTC
# text with a 6-digit fraction.
_FILL = """
WITH RECURSIVE
  n(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM n WHERE n < :count),
  r AS (
    SELECT n,
      (n * 2654435761) % 4294967296 % 100 AS roll,
      (n * 2246822519) % 4294967296 % 3 AS pick,
      (n * 3266489917) % 4294967296 % 10 + 1 AS seconds,
      :now - (:count - n) * 500000 AS created
    FROM n),
  s AS (
    SELECT *,
      CASE WHEN :queued THEN 'In Queue'
           WHEN roll < 90 THEN 'Completed' WHEN roll < 94 THEN 'Failed'
           WHEN roll < 98 THEN 'Cancelled' ELSE 'In Queue' END AS status,
      created + 250000 + roll * 40000 AS started
    FROM r),
  t AS (
    SELECT *, status IN ('Completed', 'Failed') AS ran,
      started + seconds * 1000000 + 183 AS finished
    FROM s)
INSERT INTO tasks (name, priority, duration, status, create_time, start_time, exec_time,
                   finish_time, error, attempts)
SELECT
  'bench ' || n,
  CASE pick WHEN 0 THEN 'high' WHEN 1 THEN 'medium' ELSE 'low' END,
  CASE status WHEN 'In Queue' THEN 3600.0 ELSE seconds END,
  status,
  ts(created),
  CASE WHEN ran THEN ts(started) END,
  CASE WHEN ran THEN seconds + 0.000183 END,
  CASE WHEN ran THEN ts(finished) WHEN status = 'Cancelled' THEN ts(created + 1000000) END,
  CASE status WHEN 'Failed' THEN 'random failure (failure rate 0.04)' END,
  ran
FROM t
"""


def _stored_time(microseconds: int) -> str:
    """A time in microseconds since the epoch as SQLAlchemy stores it in SQLite."""
    moment = datetime.fromtimestamp(microseconds / 1_000_000, UTC)
    return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def migrate(path: Path, log_path: Path) -> None:
    """Create an empty database at `path` the service's way: start it once on it, stop it."""
    with Server(SERVICE_APP, path, log_path) as server:
        server.start()
    # The service closes its connections on stop, which checkpoints the WAL
    # into the main file; a leftover WAL would hold part of the schema.
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        with closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def copy_database(template: Path, path: Path) -> Path:
    """A fresh database at `path`, a copy of `template` (whose WAL is checkpointed)."""
    if Path(f"{path}-wal").exists():
        # A WAL left by another database would be replayed into this one.
        raise FileExistsError(f"{path}-wal exists; copy to a new name")
    shutil.copyfile(template, path)
    return path


def fill(path: Path, count: int, *, queued: bool) -> None:
    """Insert `count` tasks: all queued with long durations, or the realistic mix.

    The mix: about 90% Completed, 4% Failed, 4% Cancelled and 2% In Queue,
    priorities mixed, create_time growing with the id.
    """
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.create_function("ts", 1, _stored_time, deterministic=True)
        now = int(time.time() * 1_000_000)
        connection.execute("BEGIN")
        connection.execute(_FILL, {"count": count, "queued": int(queued), "now": now})
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def status_counts(path: Path) -> dict[str, int]:
    """How many tasks have each status."""
    with read_only(path) as connection:
        rows = connection.execute("SELECT status, count(*) FROM tasks GROUP BY status")
        return dict(rows)


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection in autocommit mode, so that it holds no snapshot between reads."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        yield connection
    finally:
        connection.close()


# Row counts the broker scenarios poll: the tasks made, the events not yet published.
_ROW_COUNTS = {
    "tasks": "SELECT count(*) FROM tasks",
    "task_events": "SELECT count(*) FROM task_events",
}


def row_count(connection: sqlite3.Connection, table: str) -> int:
    """How many rows `table` (tasks or task_events) holds now."""
    return int(connection.execute(_ROW_COUNTS[table]).fetchone()[0])


def unfinished(path: Path) -> int:
    """How many tasks are still queued or running."""
    with read_only(path) as connection:
        row = connection.execute(
            "SELECT count(*) FROM tasks WHERE status IN ('In Queue', 'Run')"
        ).fetchone()
        return int(row[0])


@dataclass(frozen=True)
class Run:
    """When one finished task was created, started and finished (UTC, seconds)."""

    task_id: int
    created: float
    started: float
    finished: float


def finished_runs(path: Path) -> list[Run]:
    """Every task that ran to an end, as recorded in the database, by start time."""
    with read_only(path) as connection:
        rows = connection.execute(
            "SELECT id, create_time, start_time, finish_time FROM tasks"
            " WHERE status IN ('Completed', 'Failed') AND start_time IS NOT NULL"
        ).fetchall()
    runs = [Run(row[0], _seconds(row[1]), _seconds(row[2]), _seconds(row[3])) for row in rows]
    return sorted(runs, key=lambda run: (run.started, run.task_id))


def _seconds(stored: str) -> float:
    """A stored naive-UTC timestamp as seconds (only differences are used)."""
    return datetime.fromisoformat(stored).replace(tzinfo=UTC).timestamp()


class RunningSampler:
    """A thread that counts the tasks in status Run every `interval` s, on its own connection."""

    def __init__(self, path: Path, interval: float = 0.002) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="running-sampler", daemon=True)
        self.samples = 0
        self.most = 0
        self.histogram: dict[int, int] = {}

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _sample(self) -> None:
        with read_only(self._path) as connection:
            while not self._stop.wait(self._interval):
                row = connection.execute("SELECT count(*) FROM tasks WHERE status = 'Run'")
                running = int(row.fetchone()[0])
                self.samples += 1
                self.most = max(self.most, running)
                self.histogram[running] = self.histogram.get(running, 0) + 1
