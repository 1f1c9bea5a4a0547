"""The composition root: builds the Flask app and wires config, database, API and pool."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Config, Flask

from taskservice import api
from taskservice.broker import Broker
from taskservice.config import load_config
from taskservice.db import Database, sqlite_path
from taskservice.events import Outbox
from taskservice.extension import EXTENSION_KEY, TaskServiceExtension
from taskservice.metrics import Metrics
from taskservice.models import TaskStatus
from taskservice.pool import (
    LocalPool,
    LockWatchdog,
    Recovery,
    TaskPool,
    WorkerPool,
    pool_lock_for,
    replicas,
)
from taskservice.pool.leases import LeaseKeeper
from taskservice.pool.shared import SharedPool
from taskservice.runner import TaskRunner, sleep_body
from taskservice.service import CountFolder, TaskService
from taskservice.slots import SlotRunner
from taskservice.startup import Startup

# Bodies larger than this are refused with 413; a task's fields fit in far less.
MAX_BODY_BYTES = 64 * 1024


def create_app(test_config: Mapping[str, Any] | None = None, *, start_pool: bool = True) -> Flask:
    """Build the service; with `start_pool`, also recover and start the task pool.

    Call it once per process, after any fork: the pool's threads live in the
    process that built the app. Tests pass `start_pool=False` to drive the
    runner themselves.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Flask reads FLASK_DEBUG from the environment; a stray one must not make a
    # production server propagate exceptions (and tracebacks) out of the app.
    app.config["DEBUG"] = False
    app.config.from_mapping(load_config(os.environ, app.instance_path))
    if test_config is not None:
        app.config.from_mapping(test_config)
    database_file = sqlite_path(app.config["DATABASE_URL"])
    if database_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(database_file)), exist_ok=True)

    metrics = Metrics()
    api.init_app(app, metrics)
    db = Database(
        app.config["DATABASE_URL"],
        sqlite_synchronous=app.config["TASKSERVICE_SQLITE_SYNCHRONOUS"],
        # No transaction here waits between statements for long (the longest:
        # the publisher's round of confirms); one that does is a replica
        # paused or cut off, whose locks must not outlast its leases.
        idle_in_transaction=app.config["TASKSERVICE_LEASE_SECONDS"],
    )
    # Which process answers: a name of its own, for the life of the process.
    replica_id = uuid.uuid4().hex[:12]
    amqp_url = app.config["TASKSERVICE_AMQP_URL"]
    # Events are written only when a broker is configured to publish them.
    outbox = Outbox(enabled=amqp_url is not None)
    outbox.watch(db.session)
    shared = database_file is None  # PostgreSQL: any number of replicas
    pool: TaskPool | None = None
    if start_pool:
        if shared:
            pool = build_shared_pool(app.config, db, metrics, outbox, replica_id=replica_id)
        else:
            pool = build_task_pool(app.config, db, metrics, outbox)
    service = TaskService(
        db,
        submit=None if pool is None else pool.submit,
        max_queued=app.config["TASKSERVICE_MAX_QUEUED"],
        metrics=metrics,
        outbox=outbox,
    )
    metrics.watch_database(service.count_by_status)
    recovery = Recovery(
        migrate=db.upgrade_schema,
        count_running=lambda: service.count(status=TaskStatus.RUN),
        recover=service.recover,
    )
    startup = Startup(lambda stopping: start_service(recovery, pool, stopping))
    broker = None
    if amqp_url is not None and start_pool:
        metrics.watch_outbox(service.count_events)
        broker = Broker(
            url=amqp_url,
            prefix=app.config["TASKSERVICE_AMQP_PREFIX"],
            db=db,
            service=service,
            outbox=outbox,
            metrics=metrics,
            ready=startup.ready,
        )
    extension = TaskServiceExtension(
        db=db,
        service=service,
        concurrency=app.config["TASKSERVICE_CONCURRENCY"]
        if app.config["TASKSERVICE_RUN_TASKS"]
        else 0,
        startup=startup,
        replica_id=replica_id,
        pool=pool,
        broker=broker,
    )
    try:
        startup.run()  # now, or in the background while the database does not answer
    except BaseException:
        db.dispose()
        raise
    if broker is not None:
        broker.start()  # it waits for the start above, and never holds up HTTP
    app.teardown_appcontext(lambda _exc: db.remove_session())
    app.extensions[EXTENSION_KEY] = extension
    return app


def build_task_pool(
    config: Config,
    db: Database,
    metrics: Metrics | None = None,
    outbox: Outbox | None = None,
) -> LocalPool:
    """The pool of a SQLite database: its lock and its workers, neither taken nor started yet."""
    lock = pool_lock_for(db, timeout=config["TASKSERVICE_LOCK_TIMEOUT"])
    watchdog = LockWatchdog(lock)  # started by the server process (gunicorn.conf.py)
    body = sleep_body(config["TASKSERVICE_TIME_SCALE"], config["TASKSERVICE_FAILURE_RATE"])
    runner = TaskRunner(
        db, body, may_claim=lambda: not watchdog.lost.is_set(), metrics=metrics, outbox=outbox
    )
    workers = WorkerPool(runner, concurrency=config["TASKSERVICE_CONCURRENCY"])
    return LocalPool(workers=workers, runner=runner, lock=lock, watchdog=watchdog)


def build_shared_pool(
    config: Config,
    db: Database,
    metrics: Metrics | None = None,
    outbox: Outbox | None = None,
    *,
    replica_id: str,
) -> SharedPool:
    """The pool of a replica on PostgreSQL: workers claiming from the shared slots, not started.

    With TASKSERVICE_RUN_TASKS false it has no workers: the replica takes
    requests, and only registers itself and beats.
    """
    lease = timedelta(seconds=config["TASKSERVICE_LEASE_SECONDS"])
    # Renewed every fifth of the lease; the replica ends itself when less than
    # a fifth is left, well before another replica may take its slots over.
    fifth = lease.total_seconds() / 5
    runs_tasks = config["TASKSERVICE_RUN_TASKS"]

    def lose(reason: str) -> None:
        pool.lose(reason)

    keeper = LeaseKeeper(
        db,
        lease=lease,
        interval=fifth,
        margin=fifth,
        on_lost=lose,
        beat=lambda session: replicas.beat(session, replica_id, runs_tasks=runs_tasks),
        chores=CountFolder(db),
        metrics=metrics,
    )
    body = sleep_body(config["TASKSERVICE_TIME_SCALE"], config["TASKSERVICE_FAILURE_RATE"])
    runner = SlotRunner(
        db,
        body,
        replica_id=replica_id,
        slots=config["TASKSERVICE_CONCURRENCY"],
        lease=lease,
        keeper=keeper,
        metrics=metrics,
        outbox=outbox,
    )
    pool = SharedPool(
        db=db,
        runner=runner,
        keeper=keeper,
        replica_id=replica_id,
        concurrency=config["TASKSERVICE_CONCURRENCY"] if runs_tasks else 0,
        single_pool_lock=pool_lock_for(db, timeout=config["TASKSERVICE_LOCK_TIMEOUT"]),
    )
    return pool


def start_service(recovery: Recovery, pool: TaskPool | None, stopping: threading.Event) -> bool:
    """Migrate and, with a pool, start it; whether it started (see LocalPool.start)."""
    if pool is None:
        recovery.migrate()
        return True
    return pool.start(recovery, stopping)
