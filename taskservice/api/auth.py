"""Optional access control: a bearer token on every endpoint that reads or changes tasks.

/metrics and /health stay open: they hold counts and timings, no task's data.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection

from flask import request
from flask_smorest import abort

SCHEME_NAME = "bearerAuth"
SECURITY_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "The token the service was started with (TASKSERVICE_API_TOKEN).",
}
_CHALLENGE = 'Bearer realm="taskservice"'


def token_check(token: str, blueprints: Collection[str]) -> Callable[[], None]:
    """A before-request hook: 401 unless a request to one of `blueprints` carries `token`."""
    expected = token.encode()

    def check_token() -> None:
        if request.blueprint not in blueprints:
            return  # /health, the docs, the dashboard page, and paths that match no endpoint
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest takes as long whatever the first wrong character:
        # the answer's timing tells nothing about the token.
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return
        if scheme.lower() != "bearer":  # no bearer credentials: no error code (RFC 6750)
            abort(
                401,
                message="This endpoint needs 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        abort(
            401,
            message="The token is wrong.",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )

    return check_token
