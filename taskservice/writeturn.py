"""The one write turn of an SQLite database among the threads of this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class WriteTurn:
    """Writers take turns here before SQLite's own lock; urgent ones go first, within bounds.

    SQLite's busy handler sleep-polls for its lock, so a writer could starve
    while others kept taking it; here a waiting writer is woken as soon as the
    turn is free. The task pool's writes are urgent: a worker waiting to claim
    its next task leaves a slot idle, while a request waiting to create one
    only answers a little later. Precedence is bounded: after an urgent turn,
    a waiting ordinary writer goes next, so two busy workers cannot hold off
    every create and cancel.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._taken = False
        self._waiting = {True: 0, False: 0}  # by urgency
        self._ordinary_next = False

    @contextmanager
    def take(self, urgent: bool) -> Iterator[None]:
        """Hold the turn for the block."""
        with self._changed:
            self._waiting[urgent] += 1
            try:
                self._changed.wait_for(lambda: self._may_take(urgent))
            except BaseException:
                self._changed.notify_all()  # another waiter may go now that this one does not
                raise
            finally:
                self._waiting[urgent] -= 1
            self._taken = True
        try:
            yield
        finally:
            with self._changed:
                self._taken = False
                self._ordinary_next = urgent
                self._changed.notify_all()

    def _may_take(self, urgent: bool) -> bool:
        if self._taken:
            return False
        ordinary_owed = self._ordinary_next and self._waiting[False] > 0
        return not ordinary_owed if urgent else ordinary_owed or not self._waiting[True]
