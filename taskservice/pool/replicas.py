"""The replicas on a shared PostgreSQL database: who they are and when each was last alive.

Each replica writes its row when it starts, touches it with every lease
renewal (its heartbeat) and deletes it when it stops cleanly. A row whose
heartbeat is older than FORGET_AFTER is a replica that died: the next one to
start deletes it. Claims and leases never read them: they inform `/overview`
(which reads them itself) and a starting replica's check of TASKSERVICE_CONCURRENCY.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import cast

from sqlalchemy import Interval, Table, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from taskservice.models import Replica
from taskservice.pool.claims import NOW

REPLICAS = cast("Table", Replica.__table__)
FORGET_AFTER = timedelta(minutes=10)

_REGISTER = pg_insert(REPLICAS).values(
    id=bindparam("replica_id"),
    pid=bindparam("pid"),
    host=bindparam("host"),
    runs_tasks=bindparam("runs_tasks"),
    started_at=NOW,
    heartbeat_at=NOW,
)
_REGISTER = _REGISTER.on_conflict_do_update(
    index_elements=["id"], set_={"heartbeat_at": _REGISTER.excluded.heartbeat_at}
)
_LEAVE = delete(REPLICAS).where(REPLICAS.c.id == bindparam("replica_id"))
_FORGET = delete(REPLICAS).where(
    REPLICAS.c.heartbeat_at < NOW - bindparam("older_than", type_=Interval())
)
_RUNNING_TASKS_SINCE = (
    select(func.count())
    .select_from(REPLICAS)
    .where(
        REPLICAS.c.runs_tasks,
        REPLICAS.c.heartbeat_at >= NOW - bindparam("within", type_=Interval()),
    )
)


def register(session: Session, replica_id: str, *, runs_tasks: bool) -> None:
    """Record this process as a replica, and forget those silent for FORGET_AFTER."""
    session.execute(_FORGET, {"older_than": FORGET_AFTER})
    beat(session, replica_id, runs_tasks=runs_tasks)


def beat(session: Session, replica_id: str, *, runs_tasks: bool) -> None:
    """Say this replica is alive now (recording it again if it was forgotten)."""
    values = {"pid": os.getpid(), "host": socket.gethostname()[:255], "runs_tasks": runs_tasks}
    session.execute(_REGISTER, {"replica_id": replica_id, **values})


def leave(session: Session, replica_id: str) -> None:
    """Remove this replica's row: it stops."""
    session.execute(_LEAVE, {"replica_id": replica_id})


def count_live(session: Session, *, within: timedelta) -> int:
    """How many replicas that run tasks have beaten within `within`."""
    count: int = session.execute(_RUNNING_TASKS_SINCE, {"within": within}).scalar_one()
    return count
