"""GET /health: can the service take and run tasks?"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from taskservice.api.schemas import HealthSchema
from taskservice.extension import get_extension

blp = Blueprint("health", __name__, description="Liveness of the database and the workers.")


@blp.route("/health")
class Health(MethodView):
    """The service's health."""

    # Open even when the /tasks endpoints need a token.
    @blp.doc(operationId="get_health", security=[])
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Database or a worker is down.")
    def get(self) -> tuple[dict[str, Any], int]:
        """Check the database and the worker threads

        200 when the database answers, every worker thread is alive and this process holds
        the database's pool lock; 503 otherwise.
        """
        report, healthy = get_extension().health()
        return report, 200 if healthy else 503
