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
import pika.exceptions
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError, SQLAlchemyError

from taskservice.broker.link import Link
from taskservice.broker.topology import Topology
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
# How long a message that met an unexpected error waits before it goes back:
# its deliveries then take seconds, not milliseconds, to reach the limit.
RETURN_DELAY = 0.5

ERROR_HEADER = "x-taskservice-error"
ERRORS_HEADER = "x-taskservice-errors"
MAX_ERRORS_HEADER = 8192  # bytes
# The message's own headers are copied to its dead letter up to this size (as
# pika encodes them, roughly): the broker refuses a header frame over its frame_max.
MAX_COPIED_HEADERS = 64 * 1024
# Properties that are short strings in AMQP, which pika hands over as bytes
# when they are not UTF-8.
_TEXT_PROPERTIES = ("message_id", "content_type", "content_encoding", "reply_to", "correlation_id")

Delivery = tuple[Any, Any, bytes]  # (method, properties, body) as pika hands them over


def must_hold(error: BaseException) -> bool:
    """Whether a message that met `error` should be held and tried again, not returned.

    Every database error but those that say the statement itself is wrong
    (an integrity, data or programming error) is taken to pass: a database
    that is down, read-only (a failover), out of connections, or that chose
    this transaction to abort. Holding costs time; returning the message would
    count against the delivery limit and, over a long outage, dead-letter it.
    """
    if isinstance(error, QueueFull):
        return True
    return isinstance(error, SQLAlchemyError) and not isinstance(
        error, (IntegrityError, DataError, ProgrammingError)
    )


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
        cancelled: list[Any] = []
        # The broker cancels a consumer whose queue is deleted; pika would drop
        # that silently and the service would consume nothing while connected.
        channel.add_on_cancel_callback(cancelled.append)
        tag = channel.basic_consume(
            self._topology.create_queue,
            on_message_callback=lambda _channel, method, properties, body: inbox.append(
                (method, properties, body)
            ),
        )
        self.ready_to_work()
        while not self.stopping.is_set():
            connection.process_data_events(time_limit=POLL_SECONDS)
            while inbox:
                self._handle(connection, channel, *inbox.popleft())
            if cancelled:
                raise pika.exceptions.ConsumerCancelled(
                    f"the broker cancelled the consumer of {self._topology.create_queue}"
                )
        # The broker sends no more; what it sent but pika has not handed over
        # goes back now, and what was handed over is ended here.
        channel.basic_cancel(tag)
        while inbox:
            self._handle(connection, channel, *inbox.popleft())

    def _handle(
        self, connection: Any, channel: Any, method: Any, properties: Any, body: bytes
    ) -> None:
        """Make the message a task or a dead letter, answer it, then ack it."""
        garbled = [
            name for name in _TEXT_PROPERTIES if isinstance(getattr(properties, name), bytes)
        ]
        outcome: Accepted | Refused | None
        if garbled:
            for name in garbled:  # so that the dead letter and the reply can carry them
                setattr(properties, name, getattr(properties, name).decode("utf-8", "replace"))
            outcome = Refused(
                422,
                f"The message's {', '.join(garbled)} is not UTF-8 text.",
                {"properties": {name: ["Not UTF-8 text."] for name in garbled}},
            )
        else:
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
                        _sleep(connection, RETURN_DELAY, self.stopping)
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
        if len(repr(headers)) > MAX_COPIED_HEADERS:
            headers = {}
        headers[ERROR_HEADER] = refused.message[:1000]
        errors = encode_json(refused.errors)
        # A header must fit in one frame with the rest; the reason above still says it all.
        if refused.errors and len(errors) <= MAX_ERRORS_HEADER:
            headers[ERRORS_HEADER] = errors.decode()
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
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
            # The asker's queue is gone or refuses the reply (full): the task
            # stands and the message is done; retrying could make it twice.
            logger.warning(
                "amqp: reply to %r for message %s not delivered: %s",
                properties.reply_to,
                properties.message_id,
                type(error).__name__,
            )
            self._metrics.reply_lost()
            return
        self._metrics.reply_sent()


def _sleep(connection: Any, seconds: float, stopping: threading.Event) -> None:
    """Wait `seconds` while the connection keeps its heartbeats; end early when stopping."""
    remaining = seconds
    while remaining > 0 and not stopping.is_set():
        step = min(remaining, POLL_SECONDS)
        connection.sleep(step)
        remaining -= step
