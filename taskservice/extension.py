"""The parts of one running service, kept in `app.extensions`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from taskservice.broker import Broker, disabled_health
from taskservice.db import Database
from taskservice.pool import PoolHealth, TaskPool
from taskservice.service import TaskService
from taskservice.startup import Startup

logger = logging.getLogger(__name__)

EXTENSION_KEY = "taskservice"


@dataclass
class TaskServiceExtension:
    """The database, the task service and, when started, the worker pool."""

    db: Database
    service: TaskService
    concurrency: int
    startup: Startup
    replica_id: str
    pool: TaskPool | None = None
    broker: Broker | None = None

    def health(self) -> tuple[dict[str, Any], bool]:
        """A health report, and whether the service can take and run tasks."""
        try:
            self.db.ping()
            database = "ok"
        except SQLAlchemyError as exc:
            database = f"error: {type(exc).__name__}"
        pool = self.pool.health() if self.pool is not None else PoolHealth()
        alive, stuck, lock_held = pool.workers_alive, pool.workers_stuck, pool.lock_held
        starting = self.startup.waiting_for
        healthy = (
            database == "ok"
            and starting is None
            and alive == self.concurrency
            and lock_held
            and not stuck
        )
        report = {
            "status": "ok" if healthy else "unavailable",
            "replica": {"id": self.replica_id, "pid": os.getpid()},
            "database": database,
            "workers_alive": alive,
            "workers_expected": self.concurrency,
            "workers_stuck": stuck,
            "pool_lock": "held" if lock_held else "not held",
            "queued": pool.queued,
            "running": pool.running,
            "starting": starting,
            # Not part of `healthy`: HTTP serves and runs tasks while the broker is down.
            "broker": disabled_health() if self.broker is None else self.broker.health(),
        }
        return report, healthy

    def close(self, timeout: float = 5.0) -> None:
        """Stop the broker and the pool (running tasks get `timeout` s); release the database."""
        if self.broker is not None:
            # First, so that no message becomes a task the stopping pool would not run.
            self.broker.stop(timeout)
        if not self.startup.stop(timeout):
            # A start is still trying (connecting, waiting for the lock): what it
            # holds stays held until the process exits, which it is about to.
            if self.pool is not None:
                self.pool.keep_until_exit()
            logger.warning("stopped while the service was still starting")
            return
        if self.pool is not None:
            self.pool.stop(timeout)
            self.pool = None
        self.db.dispose()


def get_extension() -> TaskServiceExtension:
    """The running service's parts, from the current Flask app."""
    extension: TaskServiceExtension = current_app.extensions[EXTENSION_KEY]
    return extension
