"""Keeping the leases of the attempts a replica runs, and stopping before one can lapse.

A slot's lease is set by the database's clock: `lease_until` = the server's
time when the claim or renewal ran, plus the lease. That time is no earlier
than the moment this replica began the transaction, so the lease holds at
least until then plus the lease, by this replica's own clock (`lease_clock`). The
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
from sqlalchemy.orm import Session

from taskservice.db import Database
from taskservice.metrics import Metrics
from taskservice.pool import claims

logger = logging.getLogger(__name__)

# How often the watch looks for a lease about to lapse: a small part of any margin.
WATCH_INTERVAL = 0.1


# Linux's monotonic clock stops while the machine is suspended, but a lease runs
# out all the same: the boot-time clock counts that time too (elsewhere, monotonic).
BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def lease_clock() -> float:
    """Seconds by a clock that never goes back and counts a suspended machine's sleep."""
    return time.clock_gettime(BOOTTIME)


@dataclass(frozen=True)
class Held:
    """An attempt this replica runs in a slot, and until when its lease surely holds."""

    task_id: int
    attempt: int
    safe_until: float  # by the monotonic clock


class LeaseKeeper:
    """Renews the held slots every `interval` s; calls `on_lost` once a lease may lapse.

    Each renewal also calls `beat` in its transaction (the replica's
    heartbeat); `chores` run every `interval` s in a thread of their own.
    """

    def __init__(
        self,
        db: Database,
        *,
        lease: timedelta,
        interval: float,
        margin: float,
        on_lost: Callable[[str], None],
        beat: Callable[[Session], None] | None = None,
        chores: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = lease_clock,
    ) -> None:
        if not 0 < interval < lease.total_seconds() - margin:
            raise ValueError("renew more often than the lease, less its margin, lasts")
        self._db = db
        self._beat = beat
        self._chores = chores
        self._metrics = metrics
        self._lease = lease
        self._interval = interval
        self._margin = margin
        self._on_lost = on_lost
        self._clock = clock
        self._held: dict[int, Held] = {}
        self._guard = threading.Lock()
        self.renewals = 0
        self.lost = threading.Event()
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def hold(self, slot: int, task_id: int, attempt: int, began: float) -> bool:
        """Keep the lease of a claim whose transaction began at `began` (the monotonic clock).

        Whether its task may start: not once this replica has lost a lease, nor
        if the claim took so long that its lease is already within the margin.
        """
        held = Held(task_id, attempt, began + self._lease.total_seconds())
        with self._guard:
            self._held[slot] = held
        if held.safe_until - self._clock() < self._margin:
            self._lose(f"the claim of slot {slot} took too long to commit")
        return not self.lost.is_set()

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
        self.renew()
        self.watch()

    def renew(self) -> None:
        """Renew every held slot, and beat; call `on_lost` if a slot was taken over."""
        began = self._clock()
        held = self.held()
        try:
            with self._db.writing(urgent=True) as session:
                if self._beat is not None:
                    self._beat(session)
                refused_slots = [
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
            refused = set(refused_slots)
            renewed = len(held) - len(refused)
            self.renewals += renewed
            with self._guard:
                for slot, attempt in held.items():
                    if slot not in refused and self._held.get(slot) == attempt:
                        self._held[slot] = Held(
                            attempt.task_id, attempt.attempt, began + self._lease.total_seconds()
                        )
                # A slot dropped meanwhile was freed by its own hand-over, not taken.
                taken = sorted(slot for slot in refused if self._held.get(slot) == held[slot])
            if self._metrics is not None:
                self._metrics.leases_renewed(renewed)
                for _slot in taken:
                    self._metrics.write_fenced("renew")
            if taken:
                self._lose(f"slot(s) {taken} were taken over by another replica")
        finally:
            self._db.remove_session()

    def watch(self) -> None:
        """Call `on_lost` if a held lease could lapse within the margin."""
        now = self._clock()
        lapsing = [
            slot for slot, attempt in self.held().items() if attempt.safe_until - now < self._margin
        ]
        if lapsing:
            self._lose(f"the lease of slot(s) {lapsing} could not be renewed in time")

    def start(self) -> None:
        """Renew every `interval` s and watch every WATCH_INTERVAL s, each in a daemon thread.

        The chores, if any, run every `interval` s in a third: a slow one must
        not hold up a renewal.
        """
        loops = [("lease-renewer", self._interval, self.renew)]
        loops.append(("lease-watch", WATCH_INTERVAL, self.watch))
        if self._chores is not None:
            loops.append(("replica-chores", self._interval, self._chores))
        self._threads = [
            threading.Thread(target=self._every, args=(interval, check), name=name, daemon=True)
            for name, interval, check in loops
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing and watching."""
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    def _every(self, interval: float, check: Callable[[], None]) -> None:
        while not self.stopping.wait(interval):
            try:
                check()
            except SQLAlchemyError as error:  # the next round tries again
                logger.warning(
                    "%s: %s", threading.current_thread().name, str(error).splitlines()[0]
                )
            except Exception:  # never let the keeper die: its leases would lapse
                logger.exception("%s: unexpected error", threading.current_thread().name)

    def _lose(self, reason: str) -> None:
        """Report the first loss: once is enough, the process ends."""
        with self._guard:
            first = not self.lost.is_set()
            self.lost.set()
        if first:
            logger.critical("this replica must stop: %s", reason)
            self._on_lost(reason)
