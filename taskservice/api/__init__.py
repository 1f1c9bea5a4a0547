"""The HTTP API: flask-smorest blueprints, JSON errors and the OpenAPI docs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from http import HTTPStatus
from importlib.resources import files
from typing import Any

from flask import Blueprint as FlaskBlueprint
from flask import Flask, Response, current_app, request, send_from_directory
from flask_smorest import Api as SmorestApi
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from taskservice.api import auth, dashboard, health, requests, tasks
from taskservice.api import metrics as metrics_api
from taskservice.api.jsonprovider import OrjsonProvider
from taskservice.api.parsing import (
    TaskIdConverter,
    body_too_large,
    explain_unknown_path,
    task_id_schema,
)
from taskservice.api.schemas import ErrorSchema
from taskservice.db import is_transient
from taskservice.errors import (
    RETRY_AFTER_SECONDS,
    IdempotencyKeyReused,
    QueueFull,
    ServiceStarting,
    TaskNotCancellable,
    TaskNotFound,
    TaskServiceError,
)
from taskservice.extension import get_extension
from taskservice.metrics import Metrics

logger = logging.getLogger(__name__)

SWAGGER_UI_ASSETS = "/docs/assets/"
# Swagger UI 5 (it reads OpenAPI 3.1), as the flask-swagger-ui package ships it.
SWAGGER_UI_DIST = str(files("flask_swagger_ui") / "dist")

API_SETTINGS: dict[str, Any] = {
    "API_TITLE": "taskservice",
    "API_VERSION": "1.0",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    # Served by this app from the flask-swagger-ui package: no CDN, so the
    # docs work on a machine without internet.
    "OPENAPI_SWAGGER_UI_URL": SWAGGER_UI_ASSETS,
    "API_SPEC_OPTIONS": {
        "info": {
            "description": "Create tasks, poll their status and timings; at most two run at once."
        },
        # Relative: the service that serves this document, wherever it is reached.
        "servers": [{"url": "/", "description": "This service"}],
    },
}


class Api(SmorestApi):
    """flask-smorest's Api whose every error carries a message and `errors`."""

    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Answer any HTTP error as JSON `{code, status, message, errors}`."""
        payload, code, headers = super().handle_http_exception(error)
        # Keep the exception's own headers, such as Allow on a 405.
        own = {name: value for name, value in error.get_headers() if name != "Content-Type"}
        headers = {**own, **(headers or {})}
        if "errors" in payload and "message" not in payload:
            payload["message"] = _INVALID_INPUT.get(code, error.description)
        payload.setdefault("message", _explain(error))
        payload.setdefault("errors", {})
        return payload, code, headers


def _explain(error: HTTPException) -> str | None:
    """A message for an error that the request's routing or size raised, not the app."""
    if isinstance(error, NotFound) and request.url_rule is None:
        routes = current_app.url_map.bind("")
        return explain_unknown_path(request.path, request.method, routes)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        allowed = ", ".join(sorted(error.valid_methods))
        return f"{request.method} is not allowed on {request.path}; it takes {allowed}."
    if isinstance(error, RequestEntityTooLarge) and request.max_content_length is not None:
        return body_too_large(request.max_content_length)
    return error.description


# Messages for webargs' validation errors, whose details are in "errors".
_INVALID_INPUT = {
    400: "The body is not valid JSON.",
    422: "Some input is invalid; 'errors' names each field and what is wrong with it.",
}


# The service's own errors that a client can cause, and the answer to each.
ERROR_STATUS: dict[type[TaskServiceError], HTTPStatus] = {
    TaskNotFound: HTTPStatus.NOT_FOUND,
    TaskNotCancellable: HTTPStatus.CONFLICT,
    IdempotencyKeyReused: HTTPStatus.UNPROCESSABLE_ENTITY,
    QueueFull: HTTPStatus.SERVICE_UNAVAILABLE,
    ServiceStarting: HTTPStatus.SERVICE_UNAVAILABLE,
}


def handle_task_error(
    error: TaskServiceError,
) -> tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]:
    """Answer one of the service's own errors in flask-smorest's error shape."""
    status = ERROR_STATUS[type(error)]
    body: dict[str, Any] = {
        "code": status.value,
        "status": status.phrase,
        "message": str(error),
        "errors": getattr(error, "errors", {}),
    }
    if status is HTTPStatus.SERVICE_UNAVAILABLE:
        return body, status.value, {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return body, status.value


def handle_database_error(error: OperationalError) -> Any:
    """Answer 503 when the database is busy, full, read-only or unreachable; else a 500.

    The client's request was fine, so a passing fault is not a 500; but an
    error that no retry can cure (a missing table, bad SQL) is a bug and must
    look like one. The details, which may name hosts or files, go to the log.
    """
    if not is_transient(error):
        raise error
    logger.error("database error during %s %s", request.method, request.path, exc_info=error)
    status = HTTPStatus.SERVICE_UNAVAILABLE
    message = f"The database is unavailable; try again in {RETRY_AFTER_SECONDS} s."
    body: dict[str, Any] = {
        "code": status.value,
        "status": status.phrase,
        "message": message,
        "errors": {},
    }
    return body, status.value, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def refuse_until_started(blueprints: Collection[str]) -> Callable[[], None]:
    """A before-request hook: 503 on `blueprints` until the service has started.

    Until then the schema may not be migrated yet, so a query could fail as a
    bug would (a missing table) rather than as the outage it is.
    """

    def check_started() -> None:
        if request.blueprint in blueprints:
            startup = get_extension().startup
            if not startup.ready.is_set():
                raise ServiceStarting(startup.waiting_for or "almost done")

    return check_started


swagger_assets = FlaskBlueprint("swagger_assets", __name__)


@swagger_assets.get(f"{SWAGGER_UI_ASSETS}<path:filename>")
def swagger_asset(filename: str) -> Response:
    """Swagger UI's scripts and styles."""
    return send_from_directory(SWAGGER_UI_DIST, filename, max_age=86_400)


@swagger_assets.get("/favicon.ico")
def favicon() -> Response:
    """Swagger UI's icon: flask-smorest's page links none, so browsers ask for this one."""
    return send_from_directory(
        SWAGGER_UI_DIST, "favicon-32x32.png", mimetype="image/png", max_age=86_400
    )


def init_app(app: Flask, metrics: Metrics) -> Api:
    """Register the API's blueprints, error handlers, docs and /metrics on `app`."""
    for key, value in API_SETTINGS.items():
        app.config.setdefault(key, value)
    # "/tasks//1" is not found, rather than redirected to a URL built from Host.
    app.url_map.merge_slashes = False
    app.url_map.converters["task_id"] = TaskIdConverter
    app.json = OrjsonProvider(app)
    api = Api(app)
    # First of the request hooks, so that a request refused by the next ones is logged too.
    requests.init_app(app, metrics)
    token = app.config.get("TASKSERVICE_API_TOKEN")
    if token:
        api.spec.components.security_scheme(auth.SCHEME_NAME, auth.SECURITY_SCHEME)
        api.spec.options["security"] = [{auth.SCHEME_NAME: []}]  # /health opts out
        protected = {tasks.blp.name, dashboard.blp.name}
        app.before_request(auth.token_check(token, blueprints=protected))
    else:
        api.spec.options["security"] = []  # said outright: no endpoint needs a token
    app.before_request(refuse_until_started(blueprints={tasks.blp.name, dashboard.blp.name}))
    api.register_converter(TaskIdConverter, task_id_schema)
    api.register_blueprint(tasks.blp)
    api.register_blueprint(health.blp)
    api.register_blueprint(dashboard.blp)
    app.register_blueprint(dashboard.page)
    app.register_blueprint(swagger_assets)
    metrics_api.init_app(app, metrics)
    for error in ERROR_STATUS:
        app.register_error_handler(error, handle_task_error)
    app.register_error_handler(OperationalError, handle_database_error)
    return api
