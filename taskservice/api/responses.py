"""Error answers that several endpoints share, for their OpenAPI documentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask_smorest import Blueprint

from taskservice.api.schemas import ErrorSchema

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}


def unavailable(blp: Blueprint) -> Callable[[Any], Any]:
    """Document the 503 of an endpoint that reads or writes the database."""
    decorator: Callable[[Any], Any] = blp.alt_response(
        503,
        schema=ErrorSchema,
        description=(
            "The database is unavailable, or the service is still waiting for it to start;"
            " try again after Retry-After seconds."
        ),
        headers=RETRY_AFTER_HEADER,
    )
    return decorator


def unauthorized(blp: Blueprint) -> Callable[[Any], Any]:
    """Document the 401 of an endpoint that needs the token, when one is set."""
    decorator: Callable[[Any], Any] = blp.alt_response(
        401,
        schema=ErrorSchema,
        description="The service needs a token (TASKSERVICE_API_TOKEN); it is missing or wrong.",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}}},
    )
    return decorator
