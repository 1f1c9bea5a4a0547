"""RabbitMQ, the second way in and out: tasks from messages, and an event for every change.

Optional: without TASKSERVICE_AMQP_URL none of this runs. With it, two daemon
threads each keep a connection of their own: the consumer makes tasks of the
messages of `<prefix>.tasks.create`, the publisher sends the outbox's events
to `<prefix>.events`. The HTTP API never waits on either.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from taskservice.broker.consumer import ERROR_HEADER, ERRORS_HEADER, Consumer
from taskservice.broker.publisher import Publisher
from taskservice.broker.topology import DELIVERY_LIMIT, Topology
from taskservice.db import Database
from taskservice.events import Outbox
from taskservice.intake import TaskIntake
from taskservice.metrics import Metrics
from taskservice.service import TaskService

__all__ = ["DELIVERY_LIMIT", "ERRORS_HEADER", "ERROR_HEADER", "Broker", "Topology"]

logger = logging.getLogger(__name__)


class Broker:
    """The consumer and the publisher threads, started and stopped together."""

    def __init__(
        self,
        *,
        url: str,
        prefix: str,
        db: Database,
        service: TaskService,
        outbox: Outbox,
        metrics: Metrics,
        ready: threading.Event,
    ) -> None:
        self.topology = Topology(prefix)
        self._stopping = threading.Event()
        self._outbox = outbox
        self.consumer = Consumer(
            url=url,
            topology=self.topology,
            intake=TaskIntake(service),
            end_transaction=db.remove_session,
            metrics=metrics,
            ready=ready,
            stopping=self._stopping,
        )
        self.publisher = Publisher(
            url=url,
            topology=self.topology,
            db=db,
            outbox=outbox,
            metrics=metrics,
            ready=ready,
            stopping=self._stopping,
        )

    def start(self) -> None:
        """Start both threads; they connect once the service has started."""
        self.consumer.start()
        self.publisher.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop consuming, end the messages in hand, close both connections; whether they did.

        A thread that does not end in `timeout` s (a message held while the
        database is down ends without its ack) is left to the process's exit:
        it is a daemon, and an unacked message goes back to the queue.
        """
        self._stopping.set()
        self._outbox.written.set()  # wake the publisher
        threads = (self.consumer, self.publisher)
        for thread in threads:
            if thread.ident is not None:  # started
                thread.join(timeout)
        stopped = not any(thread.is_alive() for thread in threads)
        if not stopped:
            logger.warning("the broker's threads did not stop in %.1f s", timeout)
        return stopped

    def health(self) -> dict[str, Any]:
        """`connected` when both connections are up, else `connecting`; the last error met."""
        links = (self.consumer.state, self.publisher.state)
        # The error of a connection that is down comes first: it is the one to fix.
        errors = sorted(
            (link.connected, link.last_error) for link in links if link.last_error is not None
        )
        return {
            "state": "connected" if all(link.connected for link in links) else "connecting",
            "last_error": errors[0][1] if errors else None,
            "holding": self.consumer.holding,
        }


def disabled_health() -> dict[str, Any]:
    """The broker's health when no broker is configured."""
    return {"state": "disabled", "last_error": None, "holding": None}
