"""The dashboard: a page at / and the JSON snapshot it polls, GET /overview."""

from __future__ import annotations

from typing import Any

from flask import Blueprint as FlaskBlueprint
from flask import Response, current_app, render_template
from flask.views import MethodView
from flask_smorest import Blueprint

from taskservice.api.responses import unauthorized, unavailable
from taskservice.api.schemas import OverviewSchema
from taskservice.extension import get_extension
from taskservice.models import TaskPriority

# The page loads its script and styles from this app and talks only to it;
# nothing inline runs, so injected markup could not run either.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

page = FlaskBlueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)


@page.get("/")
def dashboard() -> Response:
    """The live dashboard."""
    html = render_template(
        "dashboard.html",
        priorities=[priority.value for priority in TaskPriority],
        default_priority=TaskPriority.MEDIUM.value,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


blp = Blueprint("overview", __name__, description="A snapshot of the queue, for the dashboard.")


@blp.route("/overview")
class Overview(MethodView):
    """The queue at this moment."""

    @blp.doc(operationId="get_overview")
    @blp.response(200, OverviewSchema)
    @unauthorized(blp)
    @unavailable(blp)
    def get(self) -> dict[str, Any]:
        """Counts, running tasks, the head of the queue and a timeline

        What the dashboard at `/` shows, read from one snapshot with bounded queries:
        counts by status, the running tasks with their slots, the next 10 tasks to run,
        the 10 latest to finish, and the tasks that ran in the last three minutes (at
        most 400). The page polls it every second.
        """
        extension = get_extension()
        overview = extension.service.overview()
        return {
            **vars(overview),
            "concurrency": extension.concurrency,
            "time_scale": current_app.config["TASKSERVICE_TIME_SCALE"],
        }
