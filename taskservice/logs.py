"""Logging for the server: plain lines or one JSON object per line, with request ids."""

from __future__ import annotations

import logging
from typing import Any

from flask import g, has_request_context

LOG_FORMATS = ("text", "json")

_TEXT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
_JSON_FIELDS = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Give every record the id of the request it was logged in ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `request_id` to the record; never drops it."""
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """A logging.config.dictConfig for gunicorn: its loggers, the service's, and the format."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": _TEXT, "datefmt": "[%Y-%m-%d %H:%M:%S %z]"}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "main",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"main": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "taskservice": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            # Alembic: which migrations ran, not which plugins it loaded.
            "alembic": {"level": "WARNING"},
            "alembic.runtime.migration": {"level": "INFO"},
        },
    }
