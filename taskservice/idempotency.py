"""Idempotency keys: the same key makes one task, and another body under it is refused.

A key is the client's name for one create (the `Idempotency-Key` header of
`POST /tasks`). Keys live in one table whatever way a create comes in, so a
client may retry one way after failing another.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select
from sqlalchemy.orm import Session

from taskservice.models import IDEMPOTENCY_KEY_MAX_LENGTH, IdempotencyKey, utcnow

# What a key may be, the same whichever way it comes: visible ASCII and spaces,
# as an HTTP header carries them.
KEY_RULE = f"1 to {IDEMPOTENCY_KEY_MAX_LENGTH} visible ASCII characters"
_KEY = re.compile(rf"[\x20-\x7e]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}")

KEYS = cast("Table", IdempotencyKey.__table__)

_FIND = select(KEYS.c.task_id, KEYS.c.fingerprint).where(KEYS.c.key == bindparam("key"))
_RECORD = insert(KEYS)


def is_valid_key(key: str) -> bool:
    """Whether `key` may be an idempotency key (see KEY_RULE)."""
    return _KEY.fullmatch(key) is not None and bool(key.strip())


def fingerprint(fields: dict[str, Any]) -> str:
    """The SHA-256 of a create's fields as the client sent them, key order aside."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_key(session: Session, key: str) -> tuple[int, str] | None:
    """The task a key made and the fingerprint it was made with, or None for a new key."""
    row = session.execute(_FIND, {"key": key}).one_or_none()
    return None if row is None else (row.task_id, row.fingerprint)


def record_key(session: Session, key: str, print_: str, task_id: int) -> None:
    """Tie `key` to the task it made; IntegrityError if another create took the key first."""
    session.execute(
        _RECORD, {"key": key, "fingerprint": print_, "task_id": task_id, "create_time": utcnow()}
    )
