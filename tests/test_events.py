"""The outbox: an event for each committed change, none for one that rolled back."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from taskservice import tasks
from taskservice.broker.publisher import Publisher
from taskservice.broker.topology import Topology
from taskservice.db import Database
from taskservice.errors import QueueFull, TaskNotCancellable
from taskservice.events import Outbox, pending_events, remove_events
from taskservice.metrics import Metrics
from taskservice.models import TaskPriority, TaskStatus
from taskservice.runner import TaskRunner
from taskservice.service import TaskService


@pytest.fixture
def outbox(db: Database) -> Outbox:
    outbox = Outbox(enabled=True)
    outbox.watch(db.session)
    return outbox


@pytest.fixture
def service(db: Database, outbox: Outbox) -> TaskService:
    return TaskService(db, max_queued=3, outbox=outbox)


def events(db: Database) -> list[dict[str, Any]]:
    with db.reading() as session:
        rows = pending_events(session, 1000)
    return [{**json.loads(row.body), "routing_key": row.routing_key, "row": row} for row in rows]


def test_each_change_of_a_task_writes_one_event_in_order(
    db: Database, service: TaskService, outbox: Outbox
):
    task = service.create(name="x", duration=0, priority=TaskPriority.HIGH)
    runner = TaskRunner(db, body=lambda _task: None, outbox=outbox)
    runner(task.id, 1)

    written = events(db)

    assert [(e["event"], e["routing_key"], e["status"]) for e in written] == [
        ("created", "task.in_queue", "In Queue"),
        ("started", "task.run", "Run"),
        ("completed", "task.completed", "Completed"),
    ]
    assert {e["id"] for e in written} == {task.id}
    assert all(e["row"].event_id == e["event_id"] for e in written)
    assert len({e["event_id"] for e in written}) == 3
    # The task as GET /tasks/{id} showed it after the change.
    assert written[1]["attempts"] == 1
    assert written[1]["slot"] == 1
    assert written[2]["time_to_execute"] is not None


def test_a_failed_a_cancelled_and_a_requeued_task(
    db: Database, service: TaskService, outbox: Outbox
):
    failed = service.create(name=None, duration=13, priority=TaskPriority.LOW)
    TaskRunner(db, body=_raise, outbox=outbox)(failed.id, 1)
    cancelled = service.create(name=None, duration=1, priority=TaskPriority.LOW)
    service.cancel(cancelled.id)
    interrupted = service.create(name=None, duration=1, priority=TaskPriority.LOW)
    with db.writing() as session:
        assert tasks.claim_task(session, interrupted.id, slot=2) is not None
    service.recover()  # as after a crash: it was left running

    by_task: dict[int, list[str]] = {}
    for event in events(db):
        by_task.setdefault(event["id"], []).append(event["routing_key"])

    assert by_task[failed.id] == ["task.in_queue", "task.run", "task.failed"]
    assert by_task[cancelled.id] == ["task.in_queue", "task.cancelled"]
    # The claim above went around the runner, so only the create and the requeue are there.
    assert by_task[interrupted.id] == ["task.in_queue", "task.in_queue"]
    assert [e["event"] for e in events(db) if e["id"] == interrupted.id] == [
        "created",
        "requeued",
    ]


def _raise(_task: Any) -> None:
    raise RuntimeError("boom")


def test_a_change_that_does_not_commit_writes_no_event(db: Database, service: TaskService):
    made = [service.create(name=None, duration=1, priority=TaskPriority.LOW) for _ in range(3)]
    with pytest.raises(QueueFull):
        service.create(name=None, duration=1, priority=TaskPriority.LOW)
    with db.writing() as session:
        tasks.claim_task(session, made[0].id, slot=1)
    with pytest.raises(TaskNotCancellable):
        service.cancel(made[0].id)

    assert [(e["id"], e["event"]) for e in events(db)] == [(t.id, "created") for t in made]


def test_a_commit_with_an_event_wakes_the_publisher(
    db: Database, service: TaskService, outbox: Outbox
):
    outbox.written.clear()
    service.count_by_status()  # a read: nothing to publish
    assert not outbox.written.is_set()

    service.create(name=None, duration=1, priority=TaskPriority.LOW)

    assert outbox.written.is_set()


def test_published_events_are_removed(db: Database, service: TaskService):
    for _ in range(3):
        service.create(name=None, duration=1, priority=TaskPriority.LOW)
    first, *rest = events(db)

    with db.writing() as session:
        remove_events(session, [first["row"].id])

    assert [e["row"].id for e in events(db)] == [e["row"].id for e in rest]
    assert service.count_events() == 2


def test_without_a_broker_no_event_is_kept(db: Database):
    service = TaskService(db, outbox=Outbox(enabled=False))
    task = service.create(name=None, duration=1, priority=TaskPriority.LOW)
    service.cancel(task.id)

    assert events(db) == []
    assert service.get(task.id).status is TaskStatus.CANCELLED


class SlowChannel:
    """A broker that takes 25 ms to confirm each event (busy, or a quorum queue far away)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def basic_publish(self, _exchange: str, _key: str, _body: bytes, properties: Any) -> None:
        time.sleep(0.025)  # the broker's confirm, not a wait of the test's
        self.sent.append(properties.message_id)


@pytest.mark.postgresql
def test_a_slow_broker_still_drains_the_outbox_within_the_idle_timeout(postgres_url: str):
    """A round publishes for at most a second, then deletes what was confirmed, and commits:
    the sessions end a transaction idle for longer than the lease (2 s here)."""
    db = Database(postgres_url, idle_in_transaction=2.0)
    try:
        db.upgrade_schema()
        outbox = Outbox(enabled=True)
        service = TaskService(db, outbox=outbox)
        for _ in range(100):  # 2.5 s of confirms in all
            service.create(name=None, duration=1, priority=TaskPriority.LOW)
        publisher = Publisher(
            url="amqp://127.0.0.1:1/",  # never connected: the test drives one round at a time
            topology=Topology("unused"),
            db=db,
            outbox=outbox,
            metrics=Metrics(),
            ready=threading.Event(),
            stopping=threading.Event(),
        )
        channel = SlowChannel()

        for _ in range(4):
            try:
                publisher._publish_batch(channel)
            finally:
                db.remove_session()

        assert len(channel.sent) == len(set(channel.sent)) == 100  # each once: none sent again
        with db.reading() as session:
            assert pending_events(session, 10) == []
    finally:
        db.dispose()
