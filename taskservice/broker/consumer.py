"""Consuming `<prefix>.tasks.create`: each message becomes a task, exactly once, or a dead letter.

A message is acked only after its task's row has committed (and its dead
letter or its reply has been confirmed by the broker), so a crash at any
moment leaves it in the queue to be delivered again; its `message_id`, the
idempotency key, makes the second delivery answer the first task instead of
making another. While the database refuses writes or the queue is full, the
message is held and tried again in place: returning it (a nack) would count
against the delivery limit, and a long outage would dead-letter good work.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
from sqlalchemy.exc import OperationalError

from taskservice.broker.link import Link
from taskservice.broker.topology import Topology
from taskservice.db import is_transient
from taskservice.errors import QueueFull
from taskservice.intake import Accepted, Message, Refused, TaskIntake
from taskservice.metrics import Metrics
from taskservice.schemas import encode_json, task_document

logger = logging.getLogger(__name__)

# Messages the broker sends ahead of the one in hand: enough to keep the
# consumer busy between acks; few, since each is returned if the process stops.
PREFETCH = 10
# How long the loop waits for a message before it looks at the stop flag.
POLL_SECONDS = 0.25
FIRST_HOLD = 0.1
LAST_HOLD = 5.0

ERROR_HEADER = "x-taskservice-error"
ERRORS_HEADER = "x-taskservice-errors"
MAX_ERRORS_HEADER = 8192

Delivery = tuple[Any, Any, bytes]  # (method, properties, body) as pika hands them over


def must_hold(error: BaseException) -> bool:
    """Whether a message that met `error` should be held and tried again, not returned."""
    if isinstance(error, QueueFull):
        return True
    return isinstance(error, OperationalError) and is_transient(error)


class Consumer(Link):
    """The thread that turns the create queue's messages into tasks."""

    def __init__(
        self,
        *,
        url: str,
        topology: Topology,
        intake: TaskIntake,
        end_transaction: Callable[[], None],
        metrics: Metrics,
        ready: threading.Event,
        stopping: threading.Event,
    ) -> None:
        super().__init__(
            name="amqp-consumer",
            url=url,
            connection_name=f"taskservice {topology.prefix} consumer",
            ready=ready,
            stopping=stopping,
        )
        self._topology = topology
        self._intake = intake
        self._end_transaction = end_transaction
        self._metrics = metrics
        self.holding: str | None = None  # why the message in hand waits, while it does

    def work(self, connection: pika.BlockingConnection) -> None:
        """Consume until stopped; then end the messages already received and return."""
        channel = connection.channel()
        channel.confirm_delivery()  # a dead letter or a reply is sent before the ack
        self._topology.declare(channel)
        channel.basic_qos(prefetch_count=PREFETCH)
        inbox: deque[Delivery] = deque()
        tag = channel.basic_consume(
            self._topology.create_queue,
            on_message_callback=lambda _channel, method, properties, body: inbox.append(
                (method, properties, body)
            ),
        )
        while not self.stopping.is_set():
            connection.process_data_events(time_limit=POLL_SECONDS)
            while inbox:
                self._handle(connection, channel, *inbox.popleft())
        # The broker sends no more; what it sent but pika has not handed over
        # goes back now, and what was handed over is ended here.
        channel.basic_cancel(tag)
        while inbox:
            self._handle(connection, channel, *inbox.popleft())

    def _handle(
        self, connection: Any, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        """Make the message a task or a dead letter, answer it, then ack it."""
        message = Message(
            body=body,
            message_id=properties.message_id,
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
        )
        outcome = self._take(connection, channel, method, message)
        if outcome is None:
            return
        if isinstance(outcome, Refused):
            self._dead_letter(channel, properties, body, outcome)
            logger.warning(
                "amqp: message %s dead-lettered: %s", properties.message_id, outcome.message
            )
            self._metrics.message_consumed("dead_lettered")
        else:
            self._metrics.message_consumed("replayed" if outcome.replayed else "created")
            if outcome.replayed:
                logger.info(
                    "amqp: message %s is a repeat: task %s", properties.message_id, outcome.task.id
                )
        if properties.reply_to:
            self._reply(channel, properties, outcome)
        channel.basic_ack(method.delivery_tag)

    def _take(
        self, connection: Any, channel: Any, method: Any, message: Message
    ) -> Accepted | Refused | None:
        """The intake's answer, holding the message while the error passes; None if given up."""
        delay = FIRST_HOLD
        try:
            while True:
                try:
                    return self._intake.take(message)
                except Exception as error:
                    if not must_hold(error):
                        # A bug, or a fault no retry cures: back to the queue, whose
                        # delivery limit ends it in the dead-letter queue if it recurs.
                        logger.exception(
                            "amqp: message %s could not be handled; returned to the queue",
                            message.message_id,
                        )
                        channel.basic_nack(method.delivery_tag, requeue=True)
                        self._metrics.message_consumed("returned")
                        return None
                    if self.stopping.is_set():
                        # Unacked: the broker delivers it again, to whoever consumes next.
                        return None
                    if self.holding is None:
                        logger.warning(
                            "amqp: message %s held, trying again until it passes: %s",
                            message.message_id,
                            error,
                        )
                    self.holding = str(error).splitlines()[0][:200]
                finally:
                    self._end_transaction()
                _sleep(connection, delay, self.stopping)
                delay = min(delay * 2, LAST_HOLD)
        finally:
            if self.holding is not None:
                logger.info("amqp: message %s no longer held", message.message_id)
                self.holding = None

    def _dead_letter(self, channel: Any, properties: Any, body: bytes, refused: Refused) -> None:
        """Put the message, as it came, on the dead-letter queue with the reason in its headers."""
        headers = dict(properties.headers or {})
        headers[ERROR_HEADER] = refused.message[:1000]
        errors = encode_json(refused.errors).decode()
        # A header must fit in one frame with the rest; the reason above still says it all.
        if refused.errors and len(errors) <= MAX_ERRORS_HEADER:
            headers[ERRORS_HEADER] = errors
        dead = pika.BasicProperties(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=headers,
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            type=properties.type,
            app_id=properties.app_id,
        )
        channel.basic_publish("", self._topology.dead_letter_queue, body, dead, mandatory=True)

    def _reply(self, channel: Any, properties: Any, outcome: Accepted | Refused) -> None:
        """Answer on `reply_to`: the task as GET /tasks/{id} shows it, or the error."""
        document = (
            task_document(outcome.task) if isinstance(outcome, Accepted) else outcome.document
        )
        reply = pika.BasicProperties(
            content_type="application/json",
            correlation_id=properties.correlation_id,
            delivery_mode=pika.DeliveryMode.Persistent,
            type="task" if isinstance(outcome, Accepted) else "error",
        )
        try:
            channel.basic_publish(
                "", properties.reply_to, encode_json(document), reply, mandatory=True
            )
        except pika.exceptions.UnroutableError:
            # The asker's queue is gone; the task stands, and the message is done.
            logger.warning(
                "amqp: no queue %r to reply to for message %s",
                properties.reply_to,
                properties.message_id,
            )
            return
        self._metrics.reply_sent()


def _sleep(connection: Any, seconds: float, stopping: threading.Event) -> None:
    """Wait `seconds` while the connection keeps its heartbeats; end early when stopping."""
    remaining = seconds
    while remaining > 0 and not stopping.is_set():
        step = min(remaining, POLL_SECONDS)
        connection.sleep(step)
        remaining -= step
