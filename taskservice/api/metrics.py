"""GET /metrics for Prometheus."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app
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
    """Serve /metrics (each request is counted by taskservice.api.requests)."""
    app.extensions[EXTENSION_KEY] = metrics
    app.register_blueprint(blp)
