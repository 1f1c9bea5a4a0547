"""RabbitMQ, against the real broker: tasks from messages, dead letters, replies, events, faults."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions
import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from taskservice.broker import DELIVERY_LIMIT, ERROR_HEADER, ERRORS_HEADER
from taskservice.db import sqlite_path
from taskservice.extension import EXTENSION_KEY
from tests.amqp import BrokerClient, broker_address, close_connections
from tests.conftest import AppFactory
from tests.helpers import all_tasks, wait_for
from tests.proxy import TcpProxy


def broker_app(make_app: AppFactory, url: str, prefix: str, **config: Any) -> Flask:
    """An app (with its pool) that consumes and publishes on `prefix`; connected."""
    app = make_app(TASKSERVICE_AMQP_URL=url, TASKSERVICE_AMQP_PREFIX=prefix, **config)
    wait_for(lambda: broker_health(app)["state"] == "connected", timeout=30)
    return app


def broker_health(app: Flask) -> dict[str, Any]:
    report, _healthy = app.extensions[EXTENSION_KEY].health()
    broker: dict[str, Any] = report["broker"]
    return broker


def health_answer(app: Flask) -> tuple[int, dict[str, Any]]:
    response = app.test_client().get("/health")
    return response.status_code, response.json


def reply_of(client: BrokerClient, queue: str) -> tuple[Any, dict[str, Any]]:
    """The next reply on `queue`: its properties and its JSON body."""
    _method, properties, body = wait_for(lambda: client.get(queue), timeout=15)
    return properties, json.loads(body)


def consumed(client: BrokerClient) -> bool:
    return client.depth(client.topology.create_queue) == 0


@pytest.fixture
def app(amqp_prefix: str, make_app: AppFactory, amqp_url: str) -> Flask:
    # amqp_prefix first: torn down last, after the app has closed its connections.
    return broker_app(make_app, amqp_url, amqp_prefix)


def test_the_topology_is_declared_as_documented(app: Flask, broker_client: BrokerClient):
    topology = broker_client.topology
    channel = broker_client.channel

    # Declaring with the same arguments succeeds; with any other, the broker refuses.
    channel.queue_declare(
        topology.create_queue, durable=True, arguments=topology.create_queue_arguments()
    )
    channel.queue_declare(
        topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    channel.exchange_declare(topology.events_exchange, exchange_type="topic", durable=True)
    other = broker_client.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="x-delivery-limit"):
        other.queue_declare(
            topology.create_queue,
            durable=True,
            arguments={**topology.create_queue_arguments(), "x-delivery-limit": 1},
        )
    assert topology.create_queue == f"{topology.prefix}.tasks.create"
    assert topology.dead_letter_queue == f"{topology.prefix}.tasks.create.dead"
    assert topology.events_exchange == f"{topology.prefix}.events"


def test_a_message_becomes_a_task_and_gets_a_reply(app: Flask, broker_client: BrokerClient):
    replies = broker_client.reply_queue()

    broker_client.publish(
        {"name": "from a message", "duration": 1, "priority": "high"},
        message_id="order-1",
        reply_to=replies,
        correlation_id="ask-1",
    )

    properties, task = reply_of(broker_client, replies)
    assert properties.correlation_id == "ask-1"
    assert properties.content_type == "application/json"
    assert task["name"] == "from a message"
    assert task["source"] == "amqp"
    assert task["priority"] == "high"
    answer = app.test_client().get(f"/tasks/{task['id']}")
    assert answer.status_code == 200
    assert answer.json["source"] == "amqp"
    wait_for(lambda: broker_client.depth(broker_client.topology.create_queue) == 0)
    assert len(all_tasks(app)) == 1


def test_n_messages_with_repeats_make_one_task_per_key(app: Flask, broker_client: BrokerClient):
    replies = broker_client.reply_queue()
    keys = [f"job-{number}" for number in range(20)]
    sent = [*keys, *keys[:10]]  # ten redeliveries, as a retrying publisher sends them
    for number, key in enumerate(sent):
        broker_client.publish(
            {"name": key}, message_id=key, reply_to=replies, correlation_id=str(number)
        )
    for number in range(5):  # no key: each is a task of its own
        broker_client.publish({"name": "no key"}, reply_to=replies, correlation_id=f"n{number}")

    answers = [reply_of(broker_client, replies) for _ in range(len(sent) + 5)]

    by_key: dict[str, set[int]] = {}
    for _properties, task in answers:
        assert "id" in task, task
        by_key.setdefault(task["name"], set()).add(task["id"])
    assert all(len(by_key[key]) == 1 for key in keys)
    assert len(by_key["no key"]) == 5
    tasks = all_tasks(app)
    assert len(tasks) == 25
    assert sorted(task.name for task in tasks if task.name != "no key") == sorted(keys)
    assert {properties.correlation_id for properties, _task in answers} == {
        *map(str, range(len(sent))),
        *(f"n{number}" for number in range(5)),
    }
    assert broker_client.depth(broker_client.topology.dead_letter_queue) == 0
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'taskservice_amqp_messages_total{outcome="created"} 25.0' in metrics
    assert 'taskservice_amqp_messages_total{outcome="replayed"} 10.0' in metrics
    assert 'taskservice_amqp_replies_total{outcome="sent"} 35.0' in metrics


BAD_MESSAGES = [
    pytest.param({"raw": b"{not json"}, "The body is not valid JSON", id="not-json"),
    pytest.param({"body": [1, 2]}, "must be a JSON object", id="not-an-object"),
    pytest.param({"body": {"colour": "red"}}, "colour: Unknown field", id="unknown-field"),
    pytest.param({"body": {"duration": "5"}}, "duration: Not a valid number", id="wrong-type"),
    pytest.param({"body": {"duration": 4000}}, "less than or equal to 3600", id="out-of-range"),
    pytest.param(
        {"body": {}, "content_type": "text/plain"}, "content_type", id="wrong-content-type"
    ),
    pytest.param({"raw": b" " * (64 * 1024 + 1)}, "larger than 65536 bytes", id="too-large"),
    pytest.param({"body": {}, "message_id": "é"}, "visible ASCII", id="bad-message-id"),
]


@pytest.mark.parametrize(("message", "reason"), BAD_MESSAGES)
def test_what_is_not_a_task_is_dead_lettered_with_its_reason(
    app: Flask, broker_client: BrokerClient, message: dict[str, Any], reason: str
):
    replies = broker_client.reply_queue()
    dead_queue = broker_client.topology.dead_letter_queue

    broker_client.publish(
        **message,
        reply_to=replies,
        correlation_id="bad-1",
        headers={"x-sender": "the test"},
    )

    _method, dead, body = wait_for(lambda: broker_client.get(dead_queue), timeout=15)
    assert reason in dead.headers[ERROR_HEADER]
    assert dead.headers["x-sender"] == "the test"  # the message as it came
    assert body == message.get("raw", json.dumps(message.get("body", {})).encode())
    assert dead.correlation_id == "bad-1"
    properties, error = reply_of(broker_client, replies)
    assert properties.correlation_id == "bad-1"
    assert properties.type == "error"
    assert set(error) == {"code", "status", "message", "errors"}
    assert reason in error["message"]
    if error["code"] == 422:
        assert json.loads(dead.headers[ERRORS_HEADER]) == error["errors"]
    assert all_tasks(app) == []
    assert consumed(broker_client)


def test_a_key_reused_with_another_body_is_dead_lettered(app: Flask, broker_client: BrokerClient):
    dead_queue = broker_client.topology.dead_letter_queue
    made = app.test_client().post("/tasks", json={"duration": 1}, headers={"Idempotency-Key": "k"})

    broker_client.publish({"duration": 1}, message_id="k")  # a retry the other way in
    broker_client.publish({"duration": 2}, message_id="k")

    _method, dead, body = wait_for(lambda: broker_client.get(dead_queue), timeout=15)
    assert dead.headers[ERROR_HEADER].startswith("idempotency key reused with a different body")
    assert json.loads(body) == {"duration": 2}
    assert [task.id for task in all_tasks(app)] == [made.json["id"]]


def test_events_of_every_change_arrive_in_order(app: Flask, broker_client: BrokerClient):
    events = broker_client.events_queue()
    client = app.test_client()

    ran = client.post("/tasks", json={"duration": 1}).json
    failed = client.post("/tasks", json={"duration": 13}).json  # 13 always fails
    wait_for(lambda: client.get(f"/tasks/{failed['id']}").json["status"] == "Failed")
    broker_client.publish({"duration": 0}, message_id="over-amqp")

    inbox = Inbox(broker_client, events)
    received = wait_for(lambda: inbox.at_least(9), timeout=20)

    by_task: dict[int, list[tuple[str, str]]] = {}
    for method, properties, body in received:
        event = json.loads(body)
        assert properties.message_id == event["event_id"]
        assert properties.delivery_mode == pika.DeliveryMode.Persistent.value
        assert properties.content_type == "application/json"
        assert method.routing_key == "task." + event["status"].lower().replace(" ", "_")
        by_task.setdefault(event["id"], []).append((event["event"], method.routing_key))
    assert by_task[ran["id"]] == [
        ("created", "task.in_queue"),
        ("started", "task.run"),
        ("completed", "task.completed"),
    ]
    assert by_task[failed["id"]] == [
        ("created", "task.in_queue"),
        ("started", "task.run"),
        ("failed", "task.failed"),
    ]
    (amqp_task,) = set(by_task) - {ran["id"], failed["id"]}
    assert [event for event, _key in by_task[amqp_task]] == ["created", "started", "completed"]
    wait_for(lambda: "taskservice_events_pending 0.0" in metrics_text(app))


def test_a_cancel_is_published(app: Flask, broker_client: BrokerClient, gate: Any):
    events = broker_client.events_queue("task.cancelled")
    client = app.test_client()
    for _ in range(2):  # both slots busy, so the third waits
        client.post("/tasks", json={"duration": 1})
    gate.wait_for_entries(2)
    queued = client.post("/tasks", json={"duration": 1}).json

    assert client.delete(f"/tasks/{queued['id']}").status_code == 200

    method, _properties, body = wait_for(lambda: broker_client.get(events), timeout=15)
    event = json.loads(body)
    assert (method.routing_key, event["event"], event["id"]) == (
        "task.cancelled",
        "cancelled",
        queued["id"],
    )
    assert event["status"] == "Cancelled"


class Inbox:
    """What a queue has delivered so far, read as it arrives."""

    def __init__(self, client: BrokerClient, queue: str) -> None:
        self._client = client
        self._queue = queue
        self.messages: list[tuple[Any, Any, bytes]] = []

    def at_least(self, count: int) -> list[tuple[Any, Any, bytes]] | None:
        """Every message so far, once there are `count`; None before."""
        self.messages.extend(self._client.drain(self._queue))
        return self.messages if len(self.messages) >= count else None


def metrics_text(app: Flask) -> str:
    return app.test_client().get("/metrics").get_data(as_text=True)


def test_a_cut_connection_is_made_again(app: Flask, broker_client: BrokerClient, amqp_prefix: str):
    replies = broker_client.reply_queue()

    assert close_connections(amqp_prefix) == 2  # the consumer's and the publisher's

    wait_for(lambda: broker_health(app)["last_error"] is not None, timeout=15)
    wait_for(lambda: broker_health(app)["state"] == "connected", timeout=30)
    broker_client.publish({"name": "after the cut"}, message_id="after", reply_to=replies)
    _properties, task = reply_of(broker_client, replies)
    assert task["name"] == "after the cut"
    assert "CONNECTION_FORCED" in broker_health(app)["last_error"]


def test_the_service_starts_and_serves_without_its_broker(
    amqp_prefix: str, broker_client: BrokerClient, make_app: AppFactory
):
    proxy = TcpProxy(broker_address()).start()
    try:
        proxy.cut()
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        app = make_app(TASKSERVICE_AMQP_URL=url, TASKSERVICE_AMQP_PREFIX=amqp_prefix)
        client = app.test_client()

        wait_for(lambda: broker_health(app)["last_error"] is not None, timeout=15)
        status, health = health_answer(app)
        assert status == 200
        assert health["broker"]["state"] == "connecting"
        created = client.post("/tasks", json={"duration": 0})
        assert created.status_code == 201
        wait_for(lambda: client.get(f"/tasks/{created.json['id']}").json["status"] == "Completed")
        assert "taskservice_events_pending 3.0" in metrics_text(app)

        broker_client.declare()
        events = broker_client.events_queue()
        proxy.restore()

        wait_for(lambda: broker_health(app)["state"] == "connected", timeout=30)
        inbox = Inbox(broker_client, events)
        received = wait_for(lambda: inbox.at_least(3), timeout=20)
        assert [json.loads(body)["event"] for _m, _p, body in received] == [
            "created",
            "started",
            "completed",
        ]
    finally:
        proxy.close()


@contextmanager
def refusing_writes(app: Flask) -> Iterator[str]:
    """The database refuses to create tasks until the block ends; what the hold should say.

    SQLite: another connection holds the write lock. PostgreSQL: a trigger
    answers as a read-only server does (SQLSTATE 25006, as after a failover to a
    standby), which psycopg raises as an InternalError, not an OperationalError.
    """
    url = app.config["DATABASE_URL"]
    path = sqlite_path(url)
    if path is not None:
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            yield "locked"
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        return
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(READ_ONLY_TRIGGER))
        yield "read-only"
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER refuse_writes ON tasks"))
    finally:
        engine.dispose()


READ_ONLY_TRIGGER = """
CREATE FUNCTION refuse_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = '25006';
END $$;
CREATE TRIGGER refuse_writes BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION refuse_writes();
"""


def test_a_message_is_held_while_the_database_refuses_writes(
    app: Flask, broker_client: BrokerClient
):
    replies = broker_client.reply_queue()
    with refusing_writes(app) as why:
        broker_client.publish({"name": "held"}, message_id="held", reply_to=replies)
        wait_for(lambda: broker_health(app)["holding"] is not None, timeout=20)
        assert why in broker_health(app)["holding"]
        assert broker_client.get(replies) is None

    _properties, task = reply_of(broker_client, replies)
    assert task["name"] == "held"
    wait_for(lambda: broker_health(app)["holding"] is None)
    assert [stored.name for stored in all_tasks(app)] == ["held"]
    assert broker_client.depth(broker_client.topology.dead_letter_queue) == 0
    assert 'outcome="returned"' not in metrics_text(app)


def test_a_message_that_keeps_failing_ends_in_the_dead_letter_queue(
    app: Flask, broker_client: BrokerClient, monkeypatch: pytest.MonkeyPatch
):
    consumer = app.extensions[EXTENSION_KEY].broker.consumer
    calls = []

    def broken(message: Any) -> Any:
        calls.append(message)
        raise RuntimeError("a bug in the service")

    monkeypatch.setattr(consumer._intake, "take", broken)
    broker_client.publish({"name": "poison"}, message_id="poison")

    _method, dead, body = wait_for(
        lambda: broker_client.get(broker_client.topology.dead_letter_queue), timeout=30
    )
    assert json.loads(body) == {"name": "poison"}
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert len(calls) == DELIVERY_LIMIT + 1
    assert all_tasks(app) == []


def test_health_says_disabled_without_a_broker(make_app: AppFactory):
    app = make_app()

    status, health = health_answer(app)

    assert status == 200
    assert health["broker"] == {"state": "disabled", "last_error": None, "holding": None}


def test_a_message_with_a_property_that_is_not_utf8_is_dead_lettered(
    app: Flask, broker_client: BrokerClient
):
    broker_client.publish({"name": "x"}, message_id=b"\xff\xfe-key")  # type: ignore[arg-type]

    _method, dead, _body = wait_for(
        lambda: broker_client.get(broker_client.topology.dead_letter_queue), timeout=15
    )
    assert dead.headers[ERROR_HEADER] == "The message's message_id is not UTF-8 text."
    assert json.loads(dead.headers[ERRORS_HEADER]) == {
        "properties": {"message_id": ["Not UTF-8 text."]}
    }
    assert all_tasks(app) == []


def test_too_many_field_errors_for_a_header_still_give_the_reason(
    app: Flask, broker_client: BrokerClient
):
    broker_client.publish({f"unknown field {number}": 1 for number in range(600)})

    _method, dead, _body = wait_for(
        lambda: broker_client.get(broker_client.topology.dead_letter_queue), timeout=15
    )
    assert dead.headers[ERROR_HEADER].startswith("The body's fields are not valid: unknown field")
    assert ERRORS_HEADER not in dead.headers
    assert all_tasks(app) == []


def test_a_reply_the_broker_refuses_does_not_repeat_the_message(
    app: Flask, broker_client: BrokerClient
):
    full = str(
        broker_client.channel.queue_declare(
            "", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        ).method.queue
    )

    broker_client.publish({"name": "no room for the answer"}, reply_to=full)

    wait_for(lambda: 'taskservice_amqp_replies_total{outcome="lost"} 1.0' in metrics_text(app))
    assert [task.name for task in all_tasks(app)] == ["no room for the answer"]
    assert consumed(broker_client)
    assert broker_health(app)["state"] == "connected"


def test_consuming_goes_on_after_the_queue_is_deleted(app: Flask, broker_client: BrokerClient):
    replies = broker_client.reply_queue()
    broker_client.channel.queue_delete(broker_client.topology.create_queue)

    def answered() -> Any:
        # The queue comes back when the consumer reconnects and declares it.
        try:
            broker_client.publish({"name": "after"}, message_id="after", reply_to=replies)
        except pika.exceptions.UnroutableError:
            return None
        return wait_for(lambda: broker_client.get(replies), timeout=15)

    wait_for(answered, timeout=30, interval=0.2)
    assert [task.name for task in all_tasks(app)] == ["after"]


def test_an_unexpected_error_in_a_broker_thread_is_survived(
    app: Flask, broker_client: BrokerClient, monkeypatch: pytest.MonkeyPatch
):
    consumer = app.extensions[EXTENSION_KEY].broker.consumer
    real_handle = consumer._handle
    failures = []

    def fail_once(*args: Any) -> None:
        if not failures:
            failures.append(args)
            raise RuntimeError("a bug outside the intake")
        real_handle(*args)

    monkeypatch.setattr(consumer, "_handle", fail_once)
    replies = broker_client.reply_queue()
    broker_client.publish({"name": "survived"}, message_id="s", reply_to=replies)

    _properties, task = reply_of(broker_client, replies)
    assert task["name"] == "survived"
    assert failures
    assert "RuntimeError: a bug outside the intake" in broker_health(app)["last_error"]
    assert consumer.is_alive()


def test_a_connection_lost_between_commit_and_ack_makes_no_second_task(
    app: Flask, broker_client: BrokerClient, monkeypatch: pytest.MonkeyPatch
):
    """The window a SIGKILL can hit: the task is committed, the ack never sent."""
    consumer = app.extensions[EXTENSION_KEY].broker.consumer
    real_reply = consumer._reply
    cuts = []

    def cut_once(*args: Any) -> None:
        if not cuts:  # the row is committed; the connection goes before the ack
            cuts.append(args)
            raise pika.exceptions.StreamLostError("cut by the test")
        real_reply(*args)

    monkeypatch.setattr(consumer, "_reply", cut_once)
    replies = broker_client.reply_queue()
    broker_client.publish({"name": "once"}, message_id="once", reply_to=replies)

    _properties, task = reply_of(broker_client, replies)
    assert cuts
    assert [stored.id for stored in all_tasks(app)] == [task["id"]]
    metrics = metrics_text(app)
    assert 'taskservice_amqp_messages_total{outcome="created"} 1.0' in metrics
    assert 'taskservice_amqp_messages_total{outcome="replayed"} 1.0' in metrics
    wait_for(lambda: consumed(broker_client))
