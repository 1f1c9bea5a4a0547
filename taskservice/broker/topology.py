"""The queues and the exchange the service declares, by name, so other programs can rely on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Deliveries of one message before the broker dead-letters it: a message whose
# handling keeps failing for an unexpected reason (a bug, a crash) ends there
# instead of looping forever. RabbitMQ 3.x counts every return, a connection
# that closes with the message unacked included, so this leaves room for
# restarts; the service never returns a message on purpose for an error that
# passes (it holds it and retries instead).
DELIVERY_LIMIT = 20


@dataclass(frozen=True)
class Topology:
    """`<prefix>.tasks.create` (consumed), its dead letters, and `<prefix>.events`."""

    prefix: str

    @property
    def create_queue(self) -> str:
        """The quorum queue whose messages become tasks."""
        return f"{self.prefix}.tasks.create"

    @property
    def dead_letter_queue(self) -> str:
        """Where a message that is not a task ends, with the reason."""
        return f"{self.prefix}.tasks.create.dead"

    @property
    def events_exchange(self) -> str:
        """The topic exchange every change of a task is published to."""
        return f"{self.prefix}.events"

    def create_queue_arguments(self) -> dict[str, Any]:
        """The create queue's arguments: quorum, with its delivery limit and dead letters."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_letter_queue,
            # The broker moves a message to the dead-letter queue only once that
            # queue has it, so a dead letter is never lost on the way; this
            # strategy needs the queue to refuse publishes when full.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def declare(self, channel: Any) -> None:
        """Declare the queues and the exchange on `channel`, durable; a no-op if they exist.

        A queue that exists with other arguments is a PRECONDITION_FAILED
        channel error, which the caller reports and retries.
        """
        channel.queue_declare(
            self.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        channel.queue_declare(
            self.create_queue, durable=True, arguments=self.create_queue_arguments()
        )
        channel.exchange_declare(self.events_exchange, exchange_type="topic", durable=True)
