"""GET /metrics for Prometheus, and the timing of every request it reports."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST

from taskservice.metrics import Metrics

blp = Blueprint("metrics", __name__)

EXTENSION_KEY = "taskservice.metrics"


@blp.get("/metrics")
def metrics() -> Response:
    """Every metric in Prometheus' text format (not in the OpenAPI document: it is not JSON)."""
    registry: Metrics = current_app.extensions[EXTENSION_KEY]
    return Response(registry.render(), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask, metrics: Metrics) -> None:
    """Serve /metrics and time every request."""
    app.extensions[EXTENSION_KEY] = metrics
    app.register_blueprint(blp)

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            # The route's pattern, not the path: one series per endpoint, not per task.
            endpoint = request.url_rule.rule if request.url_rule else "unmatched"
            seconds = time.perf_counter() - started
            metrics.request_answered(request.method, endpoint, response.status_code, seconds)
        return response
