"""The composition root: builds the Flask app and wires config, database, API and pool."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
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
from taskservice.pool import LocalPool, LockWatchdog, Recovery, WorkerPool, pool_lock_for
from taskservice.runner import TaskRunner, sleep_body
from taskservice.service import TaskService
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
    )
    amqp_url = app.config["TASKSERVICE_AMQP_URL"]
    # Events are written only when a broker is configured to publish them.
    outbox = Outbox(enabled=amqp_url is not None)
    outbox.watch(db.session)
    pool = build_task_pool(app.config, db, metrics, outbox) if start_pool else None
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
        concurrency=app.config["TASKSERVICE_CONCURRENCY"],
        startup=startup,
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
    config: Config, db: Database, metrics: Metrics | None = None, outbox: Outbox | None = None
) -> LocalPool:
    """The pool lock and the workers, neither taken nor started yet."""
    lock = pool_lock_for(db, timeout=config["TASKSERVICE_LOCK_TIMEOUT"])
    watchdog = LockWatchdog(lock)  # started by the server process (gunicorn.conf.py)
    body = sleep_body(config["TASKSERVICE_TIME_SCALE"], config["TASKSERVICE_FAILURE_RATE"])
    runner = TaskRunner(
        db, body, may_claim=lambda: not watchdog.lost.is_set(), metrics=metrics, outbox=outbox
    )
    workers = WorkerPool(runner, concurrency=config["TASKSERVICE_CONCURRENCY"])
    return LocalPool(workers=workers, runner=runner, lock=lock, watchdog=watchdog)


def start_service(recovery: Recovery, pool: LocalPool | None, stopping: threading.Event) -> bool:
    """Migrate and, with a pool, start it; whether it started (see LocalPool.start)."""
    if pool is None:
        recovery.migrate()
        return True
    return pool.start(recovery, stopping)
