"""What a test leaves behind: threads, child processes and open database connections.

conftest.py takes a snapshot before each test's setup and compares after its
teardown. Only what the test made counts: what existed before it, and what a
fixture of wider scope made for many tests (see `Snapshot.allow`), is left alone.
"""

from __future__ import annotations

import gc
import itertools
import sqlite3
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry, Pool

# How long a thread, a process or a connection may take to go once its test
# is over: stopping threads are joined, exiting processes reaped meanwhile.
GRACE = 5.0
_SESSION_SCOPED = "tests.leaks: session-scoped"
# The threads of an event loop's default executor, started on the loop's first
# use of it, end when the loop closes. The one loop that outlives a test is
# that of Playwright, which the browser tests' module fixture holds
# (asyncio.run shuts its loop's executor down before it returns).
_EVENT_LOOP_EXECUTOR = "asyncio_"


@dataclass
class _Opened:
    """When a pooled DB-API connection was opened (a serial number), and where in the tests."""

    serial: int
    where: str


# Every DB-API connection any engine opens, by the pool entry that holds it.
# The entries are held weakly: an engine that is dropped takes its entries along.
_opened: weakref.WeakKeyDictionary[ConnectionPoolEntry, _Opened] = weakref.WeakKeyDictionary()
_serials = itertools.count()
_opened_lock = threading.Lock()  # engines connect in many threads


@event.listens_for(Pool, "connect")
def _track_connection(_dbapi_connection: Any, entry: ConnectionPoolEntry) -> None:
    # An entry that reconnects holds a new connection: it gets a new number.
    opened = _Opened(next(_serials), _caller())
    with _opened_lock:
        _opened[entry] = opened


def _all_opened() -> list[tuple[ConnectionPoolEntry, _Opened]]:
    with _opened_lock:
        return list(_opened.items())


def _caller() -> str:
    """The innermost line of the tests on the stack, or the thread: who opened the connection."""
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.name.startswith("test_") or path.name == "conftest.py":
            return f"{path.name}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return f"thread {threading.current_thread().name!r}"


def mark_session_scoped(engine: Engine) -> None:
    """Let `engine`'s connections outlive a test: the engine serves the whole session."""
    event.listen(engine, "connect", lambda _conn, entry: entry.info.update({_SESSION_SCOPED: 1}))


def _is_open(connection: Any) -> bool:
    if isinstance(connection, sqlite3.Connection):
        try:
            connection.total_changes  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            return False
        return True
    return not connection.closed


def _describe(connection: Any) -> str:
    if isinstance(connection, sqlite3.Connection):
        try:
            return f"SQLite {connection.execute('PRAGMA database_list').fetchone()[2]}"
        except sqlite3.Error:
            return "SQLite (a connection of another thread)"
    parameters = connection.info.get_parameters()
    described = " ".join(
        f"{key}={parameters[key]}"
        for key in ("dbname", "options", "application_name")
        if key in parameters
    )
    return f"PostgreSQL backend {connection.info.backend_pid} ({described})"


def open_connections() -> list[Any]:
    """The DB-API connections that engines opened and nobody has closed yet."""
    connections = []
    for entry, _opened_at in _all_opened():
        if entry.dbapi_connection is not None and _is_open(entry.dbapi_connection):
            connections.append(entry.dbapi_connection)
    return connections


def _child_processes() -> dict[tuple[int, str], str]:
    """This process's children, by (pid, start time), with their state."""
    children = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # the child was reaped meanwhile
                continue
            # The command may hold spaces and parentheses: fields count from the last ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            children[(int(pid), fields[19])] = fields[0]
    return children


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


@dataclass
class Snapshot:
    """The threads, child processes and pooled connections alive at one moment."""

    threads: set[threading.Thread] = field(default_factory=set)
    processes: set[tuple[int, str]] = field(default_factory=set)
    connections: set[int] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        """What is alive now."""
        return cls(
            set(threading.enumerate()),
            set(_child_processes()),
            {opened.serial for _entry, opened in _all_opened()},
        )

    def since(self, before: Snapshot) -> Snapshot:
        """What this snapshot holds that `before` does not."""
        return Snapshot(
            self.threads - before.threads,
            self.processes - before.processes,
            self.connections - before.connections,
        )

    def allow(self, other: Snapshot) -> None:
        """Count what `other` holds as there before, for every later comparison."""
        self.threads |= other.threads
        self.processes |= other.processes
        self.connections |= other.connections

    def leaks(self) -> list[str]:
        """What is alive now and was not in this snapshot, after up to GRACE s to go."""
        deadline = time.monotonic() + GRACE
        leaked = self._new_resources()
        if leaked:
            gc.collect()  # an engine nobody holds takes its connections along
        while leaked and time.monotonic() < deadline:
            for thread in self._new_threads():
                thread.join(max(0.0, deadline - time.monotonic()))
            time.sleep(0.01)  # a poll interval for exiting processes, within the deadline
            leaked = self._new_resources()
        return leaked

    def _new_threads(self) -> list[threading.Thread]:
        return [
            thread
            for thread in threading.enumerate()
            if thread not in self.threads
            and thread.is_alive()
            and not thread.name.startswith(_EVENT_LOOP_EXECUTOR)
        ]

    def _new_resources(self) -> list[str]:
        leaked = [f"thread {thread.name!r}" for thread in self._new_threads()]
        for (pid, start), state in _child_processes().items():
            if (pid, start) not in self.processes:
                unreaped = " (exited, never waited for)" if state == "Z" else ""
                leaked.append(f"child process {pid}{unreaped}: {_command(pid)}")
        for entry, opened in _all_opened():
            if opened.serial in self.connections or _SESSION_SCOPED in entry.info:
                continue
            connection = entry.dbapi_connection
            if connection is not None and _is_open(connection):
                leaked.append(f"connection {_describe(connection)} opened at {opened.where}")
        return leaked
