"""The composition root: builds the Flask app and wires config, database, API and pool."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from taskservice import api
from taskservice.config import load_config
from taskservice.db import Database, sqlite_path
from taskservice.extension import EXTENSION_KEY, Pool, TaskServiceExtension
from taskservice.pool import WorkerPool, pool_lock_for
from taskservice.runner import TaskRunner, sleep_body
from taskservice.service import TaskService

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
    app.config.from_mapping(load_config(os.environ, app.instance_path))
    if test_config is not None:
        app.config.from_mapping(test_config)
    database_file = sqlite_path(app.config["DATABASE_URL"])
    if database_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(database_file)), exist_ok=True)

    db = Database(app.config["DATABASE_URL"])
    db.upgrade_schema()
    app.teardown_appcontext(lambda _exc: db.remove_session())

    extension = TaskServiceExtension(
        db=db, service=TaskService(db), concurrency=app.config["TASKSERVICE_CONCURRENCY"]
    )
    if start_pool:
        try:
            extension.pool = start_task_pool(app, extension)
        except BaseException:
            db.dispose()
            raise
    app.extensions[EXTENSION_KEY] = extension

    api.init_app(app)
    return app


def start_task_pool(app: Flask, extension: TaskServiceExtension) -> Pool:
    """Take the database's pool lock, requeue what a dead process left, start the workers."""
    config = app.config
    lock = pool_lock_for(extension.db, timeout=config["TASKSERVICE_LOCK_TIMEOUT"])
    lock.acquire()
    runner = TaskRunner(
        extension.db,
        sleep_body(config["TASKSERVICE_TIME_SCALE"], config["TASKSERVICE_FAILURE_RATE"]),
    )
    workers = WorkerPool(runner, concurrency=extension.concurrency)
    for rank, task_id in extension.service.recover():
        workers.submit(rank, task_id)
    extension.service = TaskService(extension.db, submit=workers.submit)
    workers.start()
    return Pool(workers=workers, runner=runner, lock=lock)
