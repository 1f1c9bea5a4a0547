"""Creating a task from a message: the body of `POST /tasks`, by another way in.

`TaskIntake.take` reads a message's body with the rules of `POST /tasks`
(`TaskCreateSchema`), and its `message_id` as the idempotency key, in the
same namespace as the HTTP `Idempotency-Key`. It knows nothing of the broker:
taskservice.broker acks, dead-letters and replies by what it answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from marshmallow import ValidationError

from taskservice.errors import IdempotencyKeyReused
from taskservice.idempotency import KEY_RULE, fingerprint, is_valid_key
from taskservice.models import TaskRow, TaskSource
from taskservice.schemas import TaskCreateSchema
from taskservice.service import TaskService

# As for an HTTP body (app.MAX_BODY_BYTES): a task's fields fit in far less.
MAX_BODY_BYTES = 64 * 1024
_JSON_TYPES = ("application/json",)
_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True)
class Message:
    """What the intake reads of a message."""

    body: bytes
    message_id: str | None = None
    content_type: str | None = None
    content_encoding: str | None = None


@dataclass(frozen=True)
class Accepted:
    """The message is a task: made now, or (`replayed`) by an earlier message with its key."""

    task: TaskRow
    replayed: bool


@dataclass(frozen=True)
class Refused:
    """The message is not a task; nothing was made. Shaped like an HTTP error answer."""

    code: int
    message: str
    errors: dict[str, Any] = field(default_factory=dict)

    @property
    def document(self) -> dict[str, Any]:
        """The error as an answer's body: code, status, message, errors."""
        status = HTTPStatus(self.code).phrase
        return {"code": self.code, "status": status, "message": self.message, "errors": self.errors}


class TaskIntake:
    """Turns messages into tasks through the task service."""

    def __init__(self, service: TaskService) -> None:
        self._service = service
        self._schema = TaskCreateSchema()

    def take(self, message: Message) -> Accepted | Refused:
        """Create the task a message asks for, or say why it is not one.

        Errors that pass (the database is down, the queue is full) are raised:
        the message must then be held and tried again, not refused.
        """
        refused = _check_envelope(message)
        if refused is not None:
            return refused
        document = _parse(message.body)
        if isinstance(document, Refused):
            return document
        try:
            fields = self._schema.load(document)
        except ValidationError as error:
            return Refused(
                422,
                "The body's fields are not valid: " + _summary(error.messages),
                {"json": error.messages},
            )
        if message.message_id is None:
            return Accepted(self._service.create(**fields, source=TaskSource.AMQP), False)
        given = {name: fields[name] for name in document}
        try:
            task, replayed = self._service.create_once(
                key=message.message_id,
                fingerprint=fingerprint(given),
                source=TaskSource.AMQP,
                **fields,
            )
        except IdempotencyKeyReused as error:
            return Refused(
                422,
                f"idempotency key reused with a different body: the message_id"
                f" {message.message_id!r} already made task {error.task_id} from other fields;"
                " send a new message_id for a new task.",
                {"properties": {"message_id": ["Already used with other fields."]}},
            )
        return Accepted(task, replayed)


def _check_envelope(message: Message) -> Refused | None:
    """Refuse what is wrong before the body is read: its type, encoding, size or key."""
    content_type = (message.content_type or "application/json").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        return Refused(
            415,
            f"The body must be JSON, sent with content_type 'application/json', not"
            f" {message.content_type!r}.",
            {"properties": {"content_type": ["Must be application/json."]}},
        )
    if message.content_encoding not in (None, "", "utf-8", "UTF-8"):
        return Refused(
            415,
            f"The body must be plain UTF-8 JSON; content_encoding {message.content_encoding!r}"
            " is not read.",
            {"properties": {"content_encoding": ["Must be absent or utf-8."]}},
        )
    if len(message.body) > MAX_BODY_BYTES:
        return Refused(
            413, f"The body is larger than {MAX_BODY_BYTES} bytes, the most this service reads."
        )
    key = message.message_id
    if key is not None and not is_valid_key(key):
        return Refused(
            422,
            f"The message_id, the message's idempotency key, must be {KEY_RULE}.",
            {"properties": {"message_id": [f"Must be {KEY_RULE}."]}},
        )
    return None


def _parse(body: bytes) -> dict[str, Any] | Refused:
    """The body as a JSON object; an empty body is an empty object (every field defaults)."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        return Refused(400, f"The body is not UTF-8: {error.reason} at byte {error.start}.")
    except json.JSONDecodeError as error:
        return Refused(400, f"The body is not valid JSON: {error.msg} at character {error.pos}.")
    except (RecursionError, ValueError) as error:  # nesting too deep, an integer too long
        return Refused(400, f"The body is not JSON this service can read: {error}")
    if not isinstance(document, dict):
        return Refused(
            422,
            "The body must be a JSON object of a task's fields, not"
            f" {_JSON_KINDS[type(document)]}.",
            {"json": {"_schema": ["Invalid input type."]}},
        )
    return document


def _summary(messages: Any) -> str:
    """'duration: Must be ...; name: ...' from marshmallow's errors."""
    if not isinstance(messages, dict):
        return str(messages)
    return "; ".join(
        f"{name}: {' '.join(map(str, problems)) if isinstance(problems, list) else problems}"
        for name, problems in sorted(messages.items(), key=lambda item: str(item[0]))
    )
