"""Each request's id, log line and metrics: one line per request, the id also in the answer."""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import urlencode

from flask import Flask, Response, g, request
from werkzeug.datastructures import MultiDict

from taskservice.metrics import Metrics

logger = logging.getLogger(__name__)

# A caller's own id is kept if it is short and plain (it goes into every log line).
_CALLERS_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The query parameters whose values the log shows: the API's own, which hold no
# secret. Any other value (`?access_token=...`, `?api_key=...`) is masked.
_LOGGED_PARAMETERS = frozenset({"status", "priority", "page", "page_size"})
_MASK = "***"


def logged_path(path: str, query: MultiDict[str, str]) -> str:
    """The request's path and query for the log, with every value but the API's own masked."""
    if not query:
        return path
    shown = [
        (name, value if name in _LOGGED_PARAMETERS else _MASK)
        for name, values in query.lists()
        for value in values
    ]
    return f"{path}?{urlencode(shown, safe='*')}"


def init_app(app: Flask, metrics: Metrics) -> None:
    """Give each request an id (X-Request-ID, the caller's or a new one), log and count it."""

    @app.before_request
    def assign_request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _CALLERS_ID.fullmatch(given) else uuid.uuid4().hex
        g.request_began = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is not None:
            response.headers["X-Request-ID"] = request_id
            seconds = time.perf_counter() - g.request_began
            logger.info(
                "%s %s %d %.1f ms (request %s)",
                request.method,
                logged_path(request.path, request.args),
                response.status_code,
                seconds * 1000,
                request_id,
            )
            # The route's pattern, not the path: one series per endpoint, not per task.
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.request_answered(request.method, endpoint, response.status_code, seconds)
        return response
