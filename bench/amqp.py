"""The benchmark's side of RabbitMQ: whether a broker answers, a scenario's names, and cleanup.

Each scenario gets a prefix of its own, so its queues and its exchange are its
own; they are deleted when it ends, even when it fails. The broker itself is
never stopped or reconfigured.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from bench.server import free_port, process_cpu_seconds
from bench.workspace import BenchError
from taskservice.broker import Topology

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
# CI sets it, as for the tests: a broker that does not answer then fails the
# run instead of leaving its section out.
REQUIRE_AMQP = "TASKSERVICE_REQUIRE_AMQP"
CONNECT_TIMEOUT = 5.0
# The bench's own queue is bound with this key, so every event is routed and counted.
EVENTS_BINDING = "task.#"
# RabbitMQ's Erlang VM, whose CPU time is read when it runs on this machine.
BROKER_PROCESS = "beam.smp"


@dataclass(frozen=True)
class BrokerCheck:
    """What answered at the broker's URL: its address, and its version or why not."""

    address: str
    version: str | None
    problem: str | None

    def describe(self) -> str:
        """The machine table's line: the version and address, or that none answered."""
        if self.version is not None:
            return f"RabbitMQ {self.version} at {self.address}"
        return f"none answered at {self.address}"


def address(url: str) -> str:
    """The broker's host, port and virtual host: the URL without its user and password."""
    parameters = pika.URLParameters(url)
    return f"{parameters.host}:{parameters.port}, vhost {parameters.virtual_host}"


def connect(url: str, name: str = "taskservice bench") -> pika.BlockingConnection:
    """A connection that gives up after CONNECT_TIMEOUT s, named for the broker's operator."""
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = CONNECT_TIMEOUT
    parameters.stack_timeout = CONNECT_TIMEOUT
    parameters.client_properties = {"connection_name": f"{name} (pid {os.getpid()})"}
    return pika.BlockingConnection(parameters)


def check_broker(url: str) -> BrokerCheck:
    """Connect once to `url`; BenchError if none answers and TASKSERVICE_REQUIRE_AMQP=1."""
    where = address(url)
    try:
        connection = connect(url)
    except pika.exceptions.AMQPError as error:
        problem = f"no RabbitMQ connection to {where} ({error!r})"
        if os.environ.get(REQUIRE_AMQP) == "1":
            raise BenchError(f"{problem}, and {REQUIRE_AMQP}=1 requires one") from error
        return BrokerCheck(where, None, problem)
    try:
        # pika keeps the broker's Connection.Start properties on its inner connection only.
        version = connection._impl.server_properties.get("version", "(version unknown)")
    finally:
        connection.close()
    return BrokerCheck(where, str(version), None)


def broker_cpu_seconds() -> float | None:
    """CPU time RabbitMQ's Erlang VM has used so far; None if it does not run on this machine."""
    total, found = 0.0, False
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == BROKER_PROCESS:
                total += process_cpu_seconds(int(comm.parent.name))
                found = True
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return total if found else None


class ScenarioBroker:
    """One scenario's queues and exchange on the broker, and the bench's channel to them."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.topology = Topology(prefix)
        # A quorum queue, as the README advises for a consumer of the events.
        self.events_queue = f"{prefix}.bench.events"
        self.connection = connect(url, f"taskservice bench {prefix}")
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()  # each publish returns once the broker has it

    def declare(self) -> None:
        """The service's topology, and the bench's queue bound to every event."""
        self.topology.declare(self.channel)
        self.channel.queue_declare(
            self.events_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        self.channel.queue_bind(
            self.events_queue, self.topology.events_exchange, routing_key=EVENTS_BINDING
        )

    def service_env(self, *, reachable: bool = True) -> dict[str, str]:
        """The service's settings for this prefix; not `reachable`: a port where nothing listens."""
        url = self.url if reachable else f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
        return {"TASKSERVICE_AMQP_URL": url, "TASKSERVICE_AMQP_PREFIX": self.topology.prefix}

    def publish_tasks(self, count: int, body: dict[str, Any]) -> None:
        """Publish `count` messages of `body` to the create queue, each with its own message_id."""
        data = json.dumps(body).encode()
        for _ in range(count):
            properties = pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=str(uuid.uuid4()),
            )
            self.channel.basic_publish(
                "", self.topology.create_queue, data, properties, mandatory=True
            )

    def depth(self, queue: str) -> int:
        """How many messages wait in `queue`, not counting those delivered and not yet acked."""
        declared = self.channel.queue_declare(queue, passive=True)
        return int(declared.method.message_count)

    def close(self) -> None:
        """Close the bench's connection; one already lost raises nothing."""
        try:
            if self.connection.is_open:
                self.connection.close()
        except pika.exceptions.AMQPError:
            pass  # the broker dropped it first; the cleanup connects anew

    def delete(self) -> None:
        """Delete the scenario's queues and exchange, on a connection of its own."""
        connection = connect(self.url, f"taskservice bench {self.topology.prefix} cleanup")
        try:
            channel = connection.channel()
            # RabbitMQ deletes a queue or an exchange that does not exist without an error.
            for queue in self.queues():
                channel.queue_delete(queue)
            channel.exchange_delete(self.topology.events_exchange)
        finally:
            connection.close()

    def queues(self) -> list[str]:
        """The scenario's three queues: the service's two and the bench's own."""
        return [self.topology.create_queue, self.topology.dead_letter_queue, self.events_queue]

    def names(self) -> list[str]:
        """Everything the scenario makes on the broker: its queues and its exchange."""
        return [*self.queues(), self.topology.events_exchange]


@contextmanager
def scenario_broker(url: str) -> Iterator[ScenarioBroker]:
    """A fresh prefix with its topology declared; all of it deleted when the block ends."""
    prefix = f"taskservice-bench-{uuid.uuid4().hex[:12]}"
    try:
        broker = ScenarioBroker(url, prefix)
    except pika.exceptions.AMQPError as error:
        raise BenchError(f"RabbitMQ at {address(url)}: {error!r}") from error
    try:
        broker.declare()
        yield broker
    except pika.exceptions.AMQPError as error:
        raise BenchError(f"RabbitMQ, prefix {prefix}: {error!r}") from error
    finally:
        broker.close()
        # Once the block's servers have stopped: a running service would declare them again.
        try:
            broker.delete()
        except pika.exceptions.AMQPError as error:
            raise BenchError(f"could not delete {', '.join(broker.names())}: {error!r}") from error
