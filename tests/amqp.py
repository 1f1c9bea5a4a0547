"""The tests' side of RabbitMQ: a client that publishes and reads, and cleanup by prefix.

Each test gets a prefix of its own (`amqp_prefix`), so its queues and exchange
are its own; they are deleted when it ends, even when it fails. The broker is
never stopped or reconfigured: to cut the service off, its own connections are
closed (`rabbitmqctl close_connection`) or it goes through a TcpProxy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from typing import Any

import pika
import pika.exceptions
import pytest

from taskservice.broker import Topology

AMQP_URL = os.environ.get("TASKSERVICE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
# CI sets it, so that a broker that does not answer fails the tests instead of skipping them.
REQUIRE_AMQP = os.environ.get("TASKSERVICE_REQUIRE_AMQP") == "1"


def broker_address() -> tuple[str, int]:
    parameters = pika.URLParameters(AMQP_URL)
    return parameters.host, parameters.port


def skip_without_broker() -> None:
    """Skip the test (fail it in CI) where no broker answers."""
    if not broker_answers():
        reason = f"no RabbitMQ answers at {broker_address()} (set TASKSERVICE_TEST_AMQP_URL)"
        if REQUIRE_AMQP:
            pytest.fail(reason)
        pytest.skip(reason)


def broker_answers() -> bool:
    try:
        with socket.create_connection(broker_address(), timeout=2):
            return True
    except OSError:
        return False


def delete_topology(url: str, topology: Topology) -> list[str]:
    """Delete the queues and the exchange of `topology`; the names that were still there after."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in (topology.create_queue, topology.dead_letter_queue):
            channel.queue_delete(queue)
        channel.exchange_delete(topology.events_exchange)
        # Something still running (an app not yet closed) would declare them again.
        left = []
        for name, declare in (
            (topology.create_queue, lambda c, n: c.queue_declare(n, passive=True)),
            (topology.dead_letter_queue, lambda c, n: c.queue_declare(n, passive=True)),
            (topology.events_exchange, lambda c, n: c.exchange_declare(n, passive=True)),
        ):
            probe = connection.channel()
            try:
                declare(probe, name)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # 404: gone, as it should be
            left.append(name)
            probe.close()
        return left
    finally:
        connection.close()


class BrokerClient:
    """A program that uses the service through RabbitMQ: publishes creates, reads answers."""

    def __init__(self, url: str, prefix: str) -> None:
        self.topology = Topology(prefix)
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def declare(self) -> None:
        """Declare the topology as the service does, for publishing before it runs."""
        self.topology.declare(self.channel)

    def publish(
        self,
        body: Any = None,
        *,
        raw: bytes | None = None,
        message_id: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        content_type: str | None = "application/json",
        **properties: Any,
    ) -> None:
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.channel.basic_publish(
            "",
            self.topology.create_queue,
            data,
            pika.BasicProperties(
                content_type=content_type,
                message_id=message_id,
                reply_to=reply_to,
                correlation_id=correlation_id,
                delivery_mode=pika.DeliveryMode.Persistent,
                **properties,
            ),
            mandatory=True,
        )

    def reply_queue(self) -> str:
        """A queue of this client's own for replies, deleted with its connection."""
        return str(self.channel.queue_declare("", exclusive=True).method.queue)

    def events_queue(self, binding: str = "task.#") -> str:
        """A queue bound to the events exchange, deleted with this client's connection."""
        self.channel.exchange_declare(
            self.topology.events_exchange, exchange_type="topic", durable=True
        )
        queue = str(self.channel.queue_declare("", exclusive=True).method.queue)
        self.channel.queue_bind(queue, self.topology.events_exchange, routing_key=binding)
        return queue

    def get(self, queue: str) -> tuple[Any, Any, bytes] | None:
        """One message of `queue`, acked; None if it is empty."""
        method, properties, body = self.channel.basic_get(queue, auto_ack=True)
        return None if method is None else (method, properties, body)

    def drain(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        """Every message `queue` holds now, acked."""
        messages = []
        while (message := self.get(queue)) is not None:
            messages.append(message)
        return messages

    def depth(self, queue: str) -> int:
        """How many messages wait in `queue` (not counting unacked ones)."""
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)


def close_connections(prefix: str) -> int:
    """Close the service's connections of `prefix` from the broker's side; how many."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not installed")
    listing = subprocess.run(
        [ctl, "list_connections", "pid", "client_properties", "--no-table-headers", "-q"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if listing.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot list connections: {listing.stderr.strip()}")
    closed = 0
    for line in listing.stdout.splitlines():
        if f"taskservice {prefix} " in line:
            pid = line.split("\t", 1)[0]
            subprocess.run(
                [ctl, "close_connection", pid, "closed by the test"],
                capture_output=True,
                check=True,
                timeout=30,
            )
            closed += 1
    return closed
