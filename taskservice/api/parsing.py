"""Reading requests safely: the JSON body and the task number in the path."""

from __future__ import annotations

import json
import re
from typing import Any

import marshmallow as ma
from flask import Request
from flask_smorest import abort
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.routing import IntegerConverter, Map, MapAdapter

from taskservice.idempotency import KEY_RULE, is_valid_key

# The largest integer SQLite and PostgreSQL store; a larger number is no task.
MAX_TASK_ID = 2**63 - 1


class TaskIdConverter(IntegerConverter):
    """A task number in a path: ASCII digits without leading zeros, at most MAX_TASK_ID.

    werkzeug's int converter also takes "01" and the digits of other scripts
    (Arabic-Indic one is 1), which would give one task many URLs.
    """

    regex = r"[1-9][0-9]*"

    def __init__(self, url_map: Map) -> None:
        super().__init__(url_map, max=MAX_TASK_ID)


def task_id_schema(_converter: TaskIdConverter) -> dict[str, Any]:
    """How OpenAPI describes a task number in a path."""
    return {"type": "integer", "minimum": 1, "maximum": MAX_TASK_ID}


IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key, or None; a 422 if it is empty, too long or not text.

    The IETF draft sends it as a structured-field string ("..."); a bare value
    is taken as it is.
    """
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not is_valid_key(key):
        abort(
            422,
            message=f"The {IDEMPOTENCY_HEADER} header must be {KEY_RULE}.",
            errors={"headers": {IDEMPOTENCY_HEADER: [f"Must be {KEY_RULE}."]}},
        )
    return key


# How much of a client's path an error message repeats.
_ECHO_LIMIT = 60
_TASK_PATH = re.compile(r"/tasks/([^/]+)")


def explain_unknown_path(path: str, method: str, routes: MapAdapter) -> str:
    """Why `path` names no endpoint, and the path the client probably meant."""
    shown = path if len(path) <= _ECHO_LIMIT else path[:_ECHO_LIMIT] + "..."
    task = _TASK_PATH.fullmatch(path)
    if task is not None:
        given = task.group(1)
        if given.isascii() and given.isdigit() and given[0] != "0":
            return f"No task has the number {given}: task ids are at most {MAX_TASK_ID}."
        return (
            f"Task ids are positive whole numbers, e.g. /tasks/7; {shown[len('/tasks/') :]!r}"
            " is not one."
        )
    tidy = re.sub("/{2,}", "/", path).rstrip("/")
    for candidate in (tidy, tidy.lower()):
        if candidate and candidate != path and routes.test(candidate, method):
            return f"No route {shown} (did you mean {candidate}?)"
    return f"No route {shown}; the API's routes are listed at /docs."


def body_too_large(limit: int) -> str:
    """The message of a 413."""
    return f"The body is larger than {limit} bytes, the most this service reads."


def read_body(request: Request) -> bytes:
    """The whole request body; 413 if it is over the limit, 400 if it cannot be read."""
    try:
        data = request.get_data(cache=True)
    except ClientDisconnected:
        # The client hung up, or stalled past the worker's read deadline
        # (taskservice.worker), which the body reader takes for a hang-up.
        abort(408, message="The body did not arrive in full within the time allowed (10 s).")
    except HTTPException:
        raise
    except Exception:  # the server's body reader: e.g. a malformed chunk size
        abort(400, message="The body could not be read: its transfer encoding is malformed.")
    limit = request.max_content_length
    # A streamed (chunked) body has no Content-Length for werkzeug to check
    # first, and its reader silently stops at the limit: a body that reaches
    # it may have been cut short.
    if request.content_length is None and limit is not None and len(data) >= limit:
        abort(413, message=body_too_large(limit))
    return data


class SchemaParser(FlaskParser):
    """webargs' parser, with one instance of each schema class it is given.

    webargs builds a schema given as a class for every request, and building
    a marshmallow schema (it deep-copies its fields) cost more than the rest
    of a read. A schema instance holds no state between loads, so one serves
    every request and thread (flask-smorest shares its response schemas so).
    """

    def __init__(self) -> None:
        super().__init__()
        self._schemas: dict[type[ma.Schema], ma.Schema] = {}

    def _get_schema(self, argmap: Any, req: Request) -> ma.Schema:
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            if argmap not in self._schemas:
                self._schemas[argmap] = argmap()
            return self._schemas[argmap]
        return super()._get_schema(argmap, req)


class JSONBodyParser(SchemaParser):
    """webargs' parser, stricter about bodies.

    An empty body means "all defaults", so `curl -X POST .../tasks` works; a
    non-empty body must say it is JSON, or the client would silently get a
    task without the fields it meant to send. JSON that Python cannot hold
    (nesting too deep, integers too long) is malformed input, not a crash.
    """

    def _raw_load_json(self, req: Request) -> Any:
        data = read_body(req)
        if not data:
            return core.missing
        if not is_json_request(req):
            abort(415, message="The body must be JSON, sent with 'Content-Type: application/json'.")
        try:
            return core.parse_json(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise  # webargs answers these itself
        except (RecursionError, ValueError) as exc:
            abort(400, messages={"json": [f"Invalid JSON body: {exc}"]})
