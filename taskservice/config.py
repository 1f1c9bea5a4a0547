"""Settings read from the environment, checked once at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pika
from sqlalchemy.exc import ArgumentError

from taskservice.db import SQLITE_SYNCHRONOUS, SUPPORTED_BACKENDS, backend_name, sqlite_path
from taskservice.errors import ConfigError

N = TypeVar("N", int, float)

DEFAULT_DATABASE_FILE = "taskservice.sqlite3"
MAX_CONCURRENCY = 64
# Seconds a starting pool waits for the lock: longer than a stopping predecessor
# may hold it (gunicorn's 10 s graceful timeout, a second to stop its pool and a
# request's 10 s read deadline overlap), so a reload (SIGHUP), whose new worker
# starts while the old one stops, does not stop the server.
LOCK_TIMEOUT = 15.0
# Seconds a replica on PostgreSQL holds a running task without renewing it
# (docs/architecture.md): renewed every fifth of it, so a replica rides out a
# database or scheduling stall of about three seconds, and a dead one's tasks
# are taken over within five seconds and a poll.
LEASE_SECONDS = 5.0


def load_config(environ: Mapping[str, str], instance_path: str) -> dict[str, Any]:
    """The service's settings from `environ`, with defaults; ConfigError if malformed."""
    default_url = "sqlite:///" + os.path.join(instance_path, DEFAULT_DATABASE_FILE)
    url = environ.get("DATABASE_URL") or default_url
    try:
        backend = backend_name(url)
    except ArgumentError:
        # Not echoed back: a URL may carry a password.
        raise ConfigError(
            "DATABASE_URL is not a database URL; expected sqlite:///<file> or postgresql://..."
        ) from None
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigError(
            f"DATABASE_URL: {backend} is not supported; use sqlite:///<file> or postgresql://..."
        )
    if backend == "sqlite" and sqlite_path(url) is None:
        raise ConfigError(
            "DATABASE_URL: an in-memory SQLite database cannot be shared between threads "
            "and is lost on restart; name a file, e.g. sqlite:///tasks.sqlite3"
        )
    run_tasks = _flag(environ, "TASKSERVICE_RUN_TASKS", default=True)
    if backend == "sqlite" and not run_tasks:
        # The pool on SQLite is fed at create, in its own process: a task made
        # by another process would wait for that pool's next start.
        raise ConfigError(
            "TASKSERVICE_RUN_TASKS=false needs PostgreSQL: on SQLite the process that"
            " creates a task runs it"
        )
    return {
        "DATABASE_URL": url,
        "TASKSERVICE_API_TOKEN": _token(environ, "TASKSERVICE_API_TOKEN"),
        "TASKSERVICE_CONCURRENCY": _number(
            environ, "TASKSERVICE_CONCURRENCY", kind=int, default=2, low=1, high=MAX_CONCURRENCY
        ),
        "TASKSERVICE_TIME_SCALE": _number(
            environ, "TASKSERVICE_TIME_SCALE", kind=float, default=1.0, low=0, high=1e6
        ),
        "TASKSERVICE_FAILURE_RATE": _number(
            environ, "TASKSERVICE_FAILURE_RATE", kind=float, default=0.0, low=0, high=1
        ),
        "TASKSERVICE_LOCK_TIMEOUT": _number(
            environ, "TASKSERVICE_LOCK_TIMEOUT", kind=float, default=LOCK_TIMEOUT, low=0, high=3600
        ),
        "TASKSERVICE_MAX_QUEUED": _number(
            environ, "TASKSERVICE_MAX_QUEUED", kind=int, default=100_000, low=1, high=10**9
        ),
        "TASKSERVICE_SQLITE_SYNCHRONOUS": _choice(
            environ, "TASKSERVICE_SQLITE_SYNCHRONOUS", SQLITE_SYNCHRONOUS, default="FULL"
        ),
        "TASKSERVICE_LEASE_SECONDS": _number(
            environ, "TASKSERVICE_LEASE_SECONDS", kind=float, default=LEASE_SECONDS, low=2, high=600
        ),
        "TASKSERVICE_RUN_TASKS": run_tasks,
        "TASKSERVICE_AMQP_URL": _amqp_url(environ, "TASKSERVICE_AMQP_URL"),
        "TASKSERVICE_AMQP_PREFIX": _amqp_prefix(environ, "TASKSERVICE_AMQP_PREFIX"),
    }


def _amqp_url(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    # Not echoed back: a URL may carry a password.
    expected = "expected amqp://user:password@host:5672/vhost (or amqps://)"
    if not raw.startswith(("amqp://", "amqps://")):
        raise ConfigError(f"{name} is not an AMQP URL; {expected}")
    try:
        pika.URLParameters(raw)
    except Exception:  # pika raises whatever its parsing meets
        raise ConfigError(f"{name} is not a valid AMQP URL; {expected}") from None
    return raw


DEFAULT_AMQP_PREFIX = "taskservice"
# Queue and exchange names are at most 255 bytes; the longest is <prefix>.tasks.create.dead.
_AMQP_PREFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def _amqp_prefix(environ: Mapping[str, str], name: str) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return DEFAULT_AMQP_PREFIX
    if not _AMQP_PREFIX.fullmatch(raw) or raw.startswith("amq."):
        raise ConfigError(
            f"{name} must be 1 to 100 letters, digits, '.', '_' or '-', not starting with"
            f" '.' or 'amq.' (reserved by RabbitMQ), got {raw!r}"
        )
    return raw


# Long enough not to be guessed; visible ASCII, so that any HTTP client can send it.
MIN_TOKEN_LENGTH = 16


def _token(environ: Mapping[str, str], name: str) -> str | None:
    token = environ.get(name, "").strip()
    if not token:
        return None
    # The value is never echoed: it is a secret.
    if len(token) < MIN_TOKEN_LENGTH or not all("!" <= c <= "~" for c in token):
        raise ConfigError(
            f"{name} must be at least {MIN_TOKEN_LENGTH} visible ASCII characters without"
            " spaces; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE + _FALSE:
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return raw in _TRUE


def _choice(environ: Mapping[str, str], name: str, choices: Sequence[str], *, default: str) -> str:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if raw.upper() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw.upper()


def _number(
    environ: Mapping[str, str],
    name: str,
    *,
    kind: Callable[[str], N],
    default: N,
    low: N,
    high: N,
) -> N:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {expected}, got {raw!r}") from None
    if not low <= value <= high:  # also rejects nan
        raise ConfigError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value
