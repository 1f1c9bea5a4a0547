"""Keeping the leases of the attempts a replica runs, and stopping before one can lapse.

A slot's lease is set by the database's clock: `lease_until` = the server's
time when the claim or renewal ran, plus the lease. That time is no earlier
than the moment this replica began the transaction, so the lease holds at
least until then plus the lease, by this replica's own monotonic clock. The
keeper renews every held slot often; if it cannot (the database is down, this
process was paused) and a slot's lease could lapse within `margin`, it calls
`on_lost`, which ends the process: a sleeping task cannot be interrupted, and
another replica will take the slot over once the lease has passed. A renewal
the database refuses (the slot holds another attempt: it was taken over while
this process was paused) ends it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from taskservice.db import Database
from taskservice.pool import claims

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    """An attempt this replica runs in a slot, and until when its lease surely holds."""

    task_id: int
    attempt: int
    safe_until: float  # by the monotonic clock


class LeaseKeeper:
    """Renews the held slots every `interval` s; calls `on_lost` once a lease may lapse."""

    def __init__(
        self,
        db: Database,
        *,
        lease: timedelta,
        interval: float,
        margin: float,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < interval < lease.total_seconds() - margin:
            raise ValueError("renew more often than the lease, less its margin, lasts")
        self._db = db
        self._lease = lease
        self._interval = interval
        self._margin = margin
        self._on_lost = on_lost
        self._clock = clock
        self._held: dict[int, Held] = {}
        self._guard = threading.Lock()
        self.renewals = 0
        self.stopping = threading.Event()

    def hold(self, slot: int, task_id: int, attempt: int, began: float) -> None:
        """Keep the lease of a claim whose transaction began at `began` (the monotonic clock)."""
        with self._guard:
            self._held[slot] = Held(task_id, attempt, began + self._lease.total_seconds())

    def drop(self, slot: int) -> None:
        """Stop keeping `slot`: its attempt ended and freed it."""
        with self._guard:
            self._held.pop(slot, None)

    def held(self) -> dict[int, Held]:
        """The slots kept now."""
        with self._guard:
            return dict(self._held)

    def check(self) -> None:
        """Renew every held slot once; call `on_lost` if one was taken or may lapse."""
        began = self._clock()
        held = self.held()
        try:
            with self._db.writing(urgent=True) as session:
                taken = [
                    slot
                    for slot, attempt in held.items()
                    if not claims.renew(
                        session,
                        slot=slot,
                        task_id=attempt.task_id,
                        attempt=attempt.attempt,
                        lease=self._lease,
                    )
                ]
        except SQLAlchemyError as error:
            logger.warning("leases could not be renewed: %s", str(error).splitlines()[0])
        else:
            self.renewals += len(held) - len(taken)
            with self._guard:
                for slot, attempt in held.items():
                    if slot not in taken and self._held.get(slot) == attempt:
                        self._held[slot] = Held(
                            attempt.task_id, attempt.attempt, began + self._lease.total_seconds()
                        )
            if taken:
                self._on_lost(f"slot(s) {taken} were taken over by another replica")
                return
        finally:
            self._db.remove_session()
        now = self._clock()
        lapsing = [
            slot for slot, attempt in self.held().items() if attempt.safe_until - now < self._margin
        ]
        if lapsing:
            self._on_lost(f"the lease of slot(s) {lapsing} could not be renewed in time")

    def run(self) -> None:
        """Check every `interval` s until stopped."""
        while not self.stopping.wait(self._interval):
            self.check()
