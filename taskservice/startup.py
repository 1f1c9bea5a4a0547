"""Starting the service once its database answers: at once, or from a background thread.

A database that is down (not up yet in a compose file, restarting, cut off)
must not stop the process: gunicorn would halt when a fresh worker fails to
boot, and nothing would be listening when the database came back. So the
process starts anyway, answers 503 where it needs the database, and keeps
trying to start in a daemon thread until the database answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from taskservice.db import is_transient
from taskservice.errors import DatabaseInUse

logger = logging.getLogger(__name__)

# Backoff between tries: quick at first, so a short outage costs little, and
# never so slow that a database that is back waits long for the service.
FIRST_RETRY = 0.1
LAST_RETRY = 2.0


def is_passing(error: BaseException) -> bool:
    """Whether the start may succeed if tried again: the database is down or busy."""
    return isinstance(error, OperationalError) and is_transient(error)


class Startup:
    """The service's start (pool lock, migrations, recovery, workers), tried until it succeeds."""

    def __init__(self, start: Callable[[], None]) -> None:
        self._start = start
        self.ready = threading.Event()
        self.waiting_for: str | None = "the first start"
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Start now; if the database does not answer, go on trying in the background.

        Any other error (a bad setting, another process on the database) is raised.
        """
        try:
            self._start()
        except Exception as error:
            if not is_passing(error):
                raise
            self._wait_for(error)
            logger.warning(
                "the database does not answer (%s); serving 503 until it does", _describe(error)
            )
            self._thread = threading.Thread(target=self._retry, name="startup", daemon=True)
            self._thread.start()
            return
        self._started()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop trying; wait up to `timeout` s for a try in progress to end."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _retry(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping.wait(delay):
            try:
                self._start()
            except DatabaseInUse as error:  # another process took the pool meanwhile
                self._wait_for(error)
            except Exception as error:
                if not is_passing(error):
                    logger.exception("the service could not start; trying again")
                self._wait_for(error)
            else:
                self._started()
                logger.info("the database answers: the service has started")
                return
            delay = min(delay * 2, LAST_RETRY)

    def _wait_for(self, error: BaseException) -> None:
        self.waiting_for = _describe(error)

    def _started(self) -> None:
        self.waiting_for = None
        self.ready.set()


def _describe(error: BaseException) -> str:
    """What the start waits for, without the hosts or files a driver's message may name."""
    if isinstance(error, DatabaseInUse):
        return "another process runs the task pool on this database"
    if is_passing(error):
        return f"the database does not answer ({type(error).__name__})"
    return f"the start failed ({type(error).__name__}); see the log"
