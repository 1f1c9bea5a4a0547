"""Publishing the outbox to `<prefix>.events`, oldest first, each confirmed before it is deleted.

An event is deleted from the outbox only after the broker has confirmed it,
so a crash or a lost connection between the two publishes it again (consumers
drop the repeat by its `message_id`), and never loses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
from sqlalchemy.exc import SQLAlchemyError

from taskservice.broker.link import Link
from taskservice.broker.topology import Topology
from taskservice.db import Database, is_sqlite
from taskservice.events import Outbox, pending_events, remove_events, take_publisher_turn
from taskservice.metrics import Metrics

logger = logging.getLogger(__name__)

# Events read and deleted per transaction.
BATCH = 100
# The longest the publisher waits without looking at the outbox: events
# written by another process (a migration, a tool) are published by then.
POLL_SECONDS = 1.0
# After a commit wakes it, the publisher waits this long for the commits that
# come with it: one round then publishes them all and deletes them in one
# transaction. Deleting each commit's event on its own cost POST /tasks half
# its rate (a second write transaction, with its fsync, per create).
LINGER_SECONDS = 0.05
# The longest a round in its transaction publishes before it deletes what it
# sent: the replicas' sessions end a transaction idle for longer than a lease
# (2 s at least), and a slow broker must not make every round end so.
ROUND_SECONDS = 1.0
FIRST_RETRY = 0.1
LAST_RETRY = 5.0


class Publisher(Link):
    """The thread that sends the outbox's events to the events exchange."""

    def __init__(
        self,
        *,
        url: str,
        topology: Topology,
        db: Database,
        outbox: Outbox,
        metrics: Metrics,
        ready: threading.Event,
        stopping: threading.Event,
    ) -> None:
        super().__init__(
            name="amqp-publisher",
            url=url,
            connection_name=f"taskservice {topology.prefix} publisher",
            ready=ready,
            stopping=stopping,
        )
        self._topology = topology
        self._db = db
        self._outbox = outbox
        self._metrics = metrics
        self.database_error: str | None = None

    def work(self, connection: pika.BlockingConnection) -> None:
        """Publish what the outbox holds, then wait for more, until stopped."""
        channel = connection.channel()
        channel.confirm_delivery()
        self._topology.declare(channel)
        self.ready_to_work()
        delay = FIRST_RETRY
        while not self.stopping.is_set():
            # Cleared before the read: an event committed after it sets it again.
            self._outbox.written.clear()
            try:
                published = self._publish_batch(channel)
            except SQLAlchemyError as error:
                self._db_failed(error, delay)
                _wait(connection, delay, self.stopping.wait)
                delay = min(delay * 2, LAST_RETRY)
                continue
            finally:
                self._db.remove_session()
            delay = FIRST_RETRY
            self.database_error = None
            if published is None:
                # Another replica publishes now; its round may end before a poll would.
                _wait(connection, LINGER_SECONDS, self.stopping.wait)
            elif published < BATCH and _wait(connection, POLL_SECONDS, self._outbox.written.wait):
                _wait(connection, LINGER_SECONDS, self.stopping.wait)

    def _publish_batch(self, channel: Any) -> int | None:
        """Publish up to BATCH events in order, then delete them; how many, None if not our turn."""
        if not is_sqlite(self._db.url):
            return self._publish_batch_in_turn(channel)
        # One process per SQLite database: no other publisher, and a write
        # transaction held while publishing would hold up every create.
        with self._db.reading() as session:
            events = pending_events(session, BATCH)
        self._send(channel, events)
        if events:
            with self._db.writing() as session:
                remove_events(session, [event.id for event in events])
        return len(events)

    def _publish_batch_in_turn(self, channel: Any) -> int | None:
        """As _publish_batch, in one transaction that only one replica's publisher holds."""
        with self._db.writing() as session:
            if not take_publisher_turn(session):
                return None
            events = pending_events(session, BATCH)
            sent = self._send(channel, events, until=time.monotonic() + ROUND_SECONDS)
            remove_events(session, [event.id for event in events[:sent]])
        # A round cut short by its time leaves events behind: the next one comes at once.
        return sent if sent == len(events) else BATCH

    def _send(self, channel: Any, events: Sequence[Any], until: float | None = None) -> int:
        """Publish `events` in order, each confirmed, until the monotonic time `until`; how many."""
        for sent, event in enumerate(events):
            if until is not None and time.monotonic() >= until:
                return sent
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=event.event_id,
                type=event.routing_key,
                timestamp=int(event.create_time.timestamp()),
            )
            # With confirms on, this returns once the broker has the event.
            channel.basic_publish(
                self._topology.events_exchange, event.routing_key, event.body.encode(), properties
            )
            self._metrics.event_published()
        return len(events)

    def _db_failed(self, error: SQLAlchemyError, delay: float) -> None:
        first = self.database_error is None
        self.database_error = str(error).splitlines()[0][:200]
        if first:
            logger.warning(
                "amqp-publisher: the outbox cannot be read or cleared (%s); retrying every"
                " %.1f s at most",
                self.database_error,
                LAST_RETRY,
            )


def _wait(connection: Any, seconds: float, wait: Callable[[float], bool]) -> bool:
    """Wait up to `seconds` on `wait`, keeping the connection's heartbeats; whether it came."""
    waited = 0.0
    while waited < seconds:
        step = min(0.25, seconds - waited)
        if wait(step):
            return True
        connection.process_data_events(time_limit=0)
        waited += step
    return False
