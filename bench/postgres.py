"""The benchmark's side of PostgreSQL: whether a server answers, a scenario's schema and replicas.

Each scenario gets a schema of its own in the server's database (its replicas
reach it through `search_path`), dropped when the scenario ends, even when it
fails. The server itself is never stopped or reconfigured.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from bench.server import SERVICE_APP, Server, process_cpu_seconds
from bench.workspace import BenchError, Workspace

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# The test suite's switch: set, a server that does not answer fails the run
# instead of leaving the replicas' section out.
REQUIRE_POSTGRES = "TASKSERVICE_REQUIRE_POSTGRES"
CONNECT_TIMEOUT = 5
# The server's processes (postmaster, backends, writers), whose CPU time is read
# when they run on this machine.
POSTGRES_PROCESS = "postgres"
# How long dropping a scenario's schema is retried.
DROP_TIMEOUT = 30.0
# Backends that hold a lock on the schema or on a table in it: DROP SCHEMA would wait for them.
_SCHEMA_LOCKERS = text(
    "SELECT DISTINCT locks.pid FROM pg_locks AS locks, pg_namespace AS schema"
    " WHERE schema.nspname = :schema AND locks.pid <> pg_backend_pid()"
    " AND locks.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND (locks.relation IN (SELECT oid FROM pg_class WHERE relnamespace = schema.oid)"
    " OR (locks.classid = 'pg_namespace'::regclass AND locks.objid = schema.oid))"
)
# What the report says about the server's durability: it explains the cost of a commit.
_DURABILITY = ("synchronous_commit", "fsync")


@dataclass(frozen=True)
class PostgresCheck:
    """What answered at the server's URL: its address, and its version and settings or why not."""

    address: str
    version: str | None
    settings: str | None
    problem: str | None

    def describe(self) -> str:
        """The machine table's line: the version, address and settings, or that none answered."""
        if self.version is not None:
            return f"PostgreSQL {self.version} at {self.address} ({self.settings})"
        return f"none answered at {self.address}"


def address(url: str) -> str:
    """The server's host, port and database: the URL without its user and password."""
    parsed = make_url(url)
    return f"{parsed.host}:{parsed.port or 5432}, database {parsed.database}"


def admin_engine(url: str) -> Engine:
    """Autocommit statements from the bench, a connection each, named for the operator."""
    return create_engine(
        url,
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={
            "application_name": f"taskservice bench (pid {os.getpid()})",
            "connect_timeout": CONNECT_TIMEOUT,
        },
    )


def check_postgres(url: str) -> PostgresCheck:
    """Connect once to `url`; BenchError if none answers and TASKSERVICE_REQUIRE_POSTGRES=1."""
    where = address(url)
    engine = admin_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.exec_driver_sql("SHOW server_version").scalar_one()
            settings = ", ".join(
                f"{name}={connection.exec_driver_sql(f'SHOW {name}').scalar_one()}"
                for name in _DURABILITY
            )
    except SQLAlchemyError as error:
        # Its first line only: the rest may repeat the URL.
        problem = f"no PostgreSQL connection to {where} ({str(error).splitlines()[0]})"
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            raise BenchError(f"{problem}, and {REQUIRE_POSTGRES}=1 requires one") from error
        return PostgresCheck(where, None, None, problem)
    finally:
        engine.dispose()
    return PostgresCheck(where, str(version).split(" ")[0], settings, None)


def postgres_cpu() -> dict[int, float]:
    """CPU time used so far by each of the server's processes on this machine, by pid."""
    found = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == POSTGRES_PROCESS:
                pid = int(comm.parent.name)
                found[pid] = process_cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return found


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float | None:
    """The server's CPU time from `before` to `after`; None if it does not run on this machine.

    A backend that ended in between is missing from `after`: its last CPU time is lost, so
    the figure can only fall short. The replicas keep their connections, so it is small.
    """
    if not after:
        return None
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass(frozen=True)
class Schema:
    """A scenario's schema: its name, the URL that reaches it, and the bench's engine on it."""

    name: str
    url: str
    admin: Engine

    def replica_url(self, name: str) -> str:
        """The schema's URL for a replica whose sessions carry `name` (pg_stat_activity)."""
        url = make_url(self.url).update_query_dict({"application_name": name})
        return url.render_as_string(hide_password=False)


@contextmanager
def scenario_schema(url: str) -> Iterator[Schema]:
    """A fresh schema; dropped when the block ends, once the block's replicas have stopped."""
    name = f"taskservice_bench_{uuid.uuid4().hex[:12]}"
    server = admin_engine(url)
    try:
        with server.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    except SQLAlchemyError as error:
        server.dispose()
        raise BenchError(f"PostgreSQL at {address(url)}: {str(error).splitlines()[0]}") from error
    on_schema = make_url(url).update_query_dict({"options": f"-csearch_path={name}"})
    schema_url = on_schema.render_as_string(hide_password=False)
    admin = admin_engine(schema_url)
    try:
        yield Schema(name, schema_url, admin)
    finally:
        admin.dispose()
        try:
            drop_schema(server, name)
        finally:
            server.dispose()


def drop_schema(server: Engine, name: str) -> None:
    """Drop schema `name`, ending the backends that lock it; retry a lost connection."""
    deadline = time.monotonic() + DROP_TIMEOUT
    while True:
        try:
            with server.connect() as connection:
                lockers = connection.execute(_SCHEMA_LOCKERS, {"schema": name}).scalars().all()
                for pid in lockers:
                    connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                connection.exec_driver_sql("SET lock_timeout = '5s'")
                connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                return
        except OperationalError as error:
            if time.monotonic() > deadline:
                raise BenchError(f"could not drop schema {name}: {error.orig}") from error
            time.sleep(0.1)  # the retry interval, within the deadline


@contextmanager
def replicas(
    workspace: Workspace, schema: Schema, names: list[str], env: Mapping[str, str] | None = None
) -> Iterator[list[Server]]:
    """Replicas called `names` on `schema`, booted together; every one stopped at the end."""
    servers = []
    for name in names:
        settings = {**(env or {}), "DATABASE_URL": schema.replica_url(name)}
        servers.append(Server(SERVICE_APP, None, workspace.log_path(name), settings))
    try:
        # Together: migrations take a lock, so the replicas migrate the schema once.
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_started()
        yield servers
    finally:
        stop_all(servers)


def stop_all(servers: list[Server]) -> None:
    """Stop every server at once (each has its own deadline), resuming any paused first."""
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            # A paused worker could not stop otherwise.
            os.killpg(server.process.pid, signal.SIGCONT)
    with ThreadPoolExecutor(max(1, len(servers))) as executor:
        for done in [executor.submit(server.stop) for server in servers]:
            done.result()
