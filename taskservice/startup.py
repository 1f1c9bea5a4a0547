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


# SQLite's result codes that pass at start: busy and locked (another writer).
# Read-only or cannot open is the file's permissions, which no retry cures.
_SQLITE_PASSING = {5, 6}

Start = Callable[[threading.Event], bool]


def is_passing(error: BaseException) -> bool:
    """Whether the start may succeed if tried again: the database is down or busy."""
    if not isinstance(error, OperationalError) or not is_transient(error):
        return False
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is None or code & 0xFF in _SQLITE_PASSING


class Startup:
    """The service's start (pool lock, migrations, recovery, workers), tried until it succeeds.

    `start` gets the stop flag, which it checks before it starts the workers,
    and says whether it started; each try holds a lock that `stop` waits for,
    so no try can start workers once `stop` has returned True.
    """

    def __init__(self, start: Start) -> None:
        self._start = start
        self.ready = threading.Event()
        self.waiting_for: str | None = "the first start"
        self._stopping = threading.Event()
        self._trying = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Start now; if the database does not answer, go on trying in the background.

        Any other error (a bad setting, another process on the database) is raised.
        """
        try:
            started = self._try()
        except Exception as error:
            if not is_passing(error):
                raise
            self._wait_for(error)
            started = False
        if started:
            self._started()
            return
        logger.warning("%s: serving 503 while the start is tried again", self.waiting_for)
        self._thread = threading.Thread(target=self._retry, name="startup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop trying; whether a try in progress ended within `timeout` s."""
        self._stopping.set()
        if not self._trying.acquire(timeout=timeout):
            return False
        self._trying.release()
        if self._thread is not None:
            self._thread.join(timeout)
        return True

    def _try(self) -> bool:
        with self._trying:
            if self._stopping.is_set():
                return False
            started = self._start(self._stopping)
            if not started and not self._stopping.is_set():
                self.waiting_for = "the pool lock, lost while starting"
            return started

    def _retry(self) -> None:
        delay = FIRST_RETRY
        while not self._stopping.wait(delay):
            try:
                started = self._try()
            except DatabaseInUse as error:  # another process took the pool meanwhile
                self._wait_for(error)
            except Exception as error:
                if not is_passing(error):
                    logger.exception("the service could not start; trying again")
                self._wait_for(error)
            else:
                if started:
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
