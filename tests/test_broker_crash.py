"""A real gunicorn consuming from the real broker, killed and stopped mid-stream.

Every message is exactly one task, whatever moment the process dies at; every
change of every task is published at least once, in order per task.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select

from taskservice.db import Database
from taskservice.models import IdempotencyKey, Task, TaskEventRecord
from tests.amqp import BrokerClient
from tests.helpers import wait_for
from tests.server import Server

MESSAGES = 400
# The order one task's events may come in: a rerun after a crash is
# "requeued" then "started" again.
NEXT_EVENT = {
    None: {"created"},
    "created": {"started"},
    "started": {"completed", "failed", "requeued"},
    "requeued": {"started"},
}


def count(database_url: str, column: Any, *where: Any) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.count(column)).where(*where)).scalar_one())
    finally:
        engine.dispose()


def test_sigkill_and_sigterm_while_consuming_make_each_message_one_task(
    amqp_prefix: str, broker_client: BrokerClient, database_url: str, tmp_path: Path, amqp_url: str
):
    migrated = Database(database_url)
    migrated.upgrade_schema()  # so that the test can count tasks before the first start
    migrated.dispose()
    broker_client.declare()
    events = broker_client.events_queue()
    for number in range(MESSAGES):
        broker_client.publish({"name": f"m-{number}", "duration": 0}, message_id=f"m-{number}")
    log = tmp_path / "gunicorn.log"
    env = {
        "TASKSERVICE_AMQP_URL": amqp_url,
        "TASKSERVICE_AMQP_PREFIX": amqp_prefix,
        "TASKSERVICE_TIME_SCALE": "0.001",
    }

    def tasks_made() -> int:
        return count(database_url, Task.id)

    server = Server(database_url, log, **env).start()
    try:
        wait_for(lambda: tasks_made() >= 60, timeout=60)
        server.kill(signal.SIGKILL)  # mid-stream, with messages in hand
        server = Server(database_url, log, **env).start()
        wait_for(lambda: tasks_made() >= 180, timeout=60)
        assert server.kill(signal.SIGTERM) == 0  # a clean stop: the messages in hand end
        server = Server(database_url, log, **env).start()
        server.wait_healthy()
        wait_for(lambda: tasks_made() >= MESSAGES, timeout=60)
        wait_for(lambda: broker_client.depth(broker_client.topology.create_queue) == 0)
        wait_for(lambda: count(database_url, TaskEventRecord.id) == 0, timeout=30)
        finished = Task.status.in_(["Completed", "Failed"])
        wait_for(lambda: count(database_url, Task.id, finished) == MESSAGES, timeout=60)
        wait_for(lambda: count(database_url, TaskEventRecord.id) == 0, timeout=30)
    finally:
        server.kill(signal.SIGKILL)

    assert tasks_made() == MESSAGES
    assert count(database_url, func.distinct(Task.name)) == MESSAGES
    assert count(database_url, IdempotencyKey.key) == MESSAGES
    assert broker_client.depth(broker_client.topology.dead_letter_queue) == 0
    assert "Traceback" not in log.read_text()

    # Every change was published at least once (a repeat has the same event_id), in order.
    seen: set[str] = set()
    by_task: dict[int, list[str]] = {}
    for _method, properties, body in broker_client.drain(events):
        event = json.loads(body)
        assert properties.message_id == event["event_id"]
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        by_task.setdefault(event["id"], []).append(event["event"])
    assert len(by_task) == MESSAGES
    for task_id, happened in by_task.items():
        previous = None
        for event in happened:
            assert event in NEXT_EVENT[previous], (task_id, happened)
            previous = event
        assert previous in ("completed", "failed"), (task_id, happened)
