"""The /tasks endpoints: create, read, list and cancel tasks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flask import request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from flask_smorest.pagination import PaginationParameters

from taskservice.api.parsing import (
    IDEMPOTENCY_HEADER,
    JSONBodyParser,
    SchemaParser,
    idempotency_key,
)
from taskservice.api.responses import RETRY_AFTER_HEADER, unauthorized, unavailable
from taskservice.api.schemas import ErrorSchema, TaskFilterSchema
from taskservice.extension import get_extension
from taskservice.idempotency import fingerprint
from taskservice.models import IDEMPOTENCY_KEY_MAX_LENGTH, TaskRow
from taskservice.schemas import TaskCreateSchema, TaskSchema


class TaskBlueprint(Blueprint):
    """A blueprint whose JSON bodies go through JSONBodyParser, and cheap pagination."""

    ARGUMENTS_PARSER = JSONBodyParser()
    PAGINATION_ARGUMENTS_PARSER = SchemaParser()

    def _document_pagination_metadata(self, spec: Any, resp_doc: dict[str, Any]) -> None:
        """Document X-Pagination as what it is: a header whose value is a JSON object."""
        # flask-smorest gives the header an object schema, which says the header's
        # text itself is an object; OpenAPI describes a JSON value with content.
        resp_doc.setdefault("headers", {})[self.PAGINATION_HEADER_NAME] = {
            "description": "Pagination metadata, a JSON object.",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PaginationMetadata"}}
            },
        }

    @staticmethod
    def _make_pagination_metadata(page: int, page_size: int, item_count: int) -> dict[str, int]:
        """flask-smorest's X-Pagination fields, without building a schema per request."""
        last_page = (item_count + page_size - 1) // page_size
        metadata = {"total": item_count, "total_pages": last_page}
        if item_count:
            metadata.update(first_page=1, last_page=last_page)
            if page <= last_page:
                metadata["page"] = page
                if page > 1:
                    metadata["previous_page"] = page - 1
                if page < last_page:
                    metadata["next_page"] = page + 1
        return metadata


blp = TaskBlueprint("tasks", __name__, url_prefix="/tasks", description="Create and follow tasks.")

TASK_ID = "<task_id:task_id>"
UNAVAILABLE = unavailable(blp)
UNAUTHORIZED = unauthorized(blp)
LOCATION_HEADER = {"Location": {"description": "The task's URL.", "schema": {"type": "string"}}}
REPLAYED = "Idempotent-Replayed"
REPLAYED_HEADER = {
    REPLAYED: {
        "description": "`true` when the Idempotency-Key had already made this task.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header",
    "name": IDEMPOTENCY_HEADER,
    "required": False,
    "description": "Your name for this create (IETF httpapi draft): sent again with the same"
    " body, it answers the task it made instead of making another.",
    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
    "example": "order-1234-report",
}


LIST_PARAMETERS = {"status", "priority", "page", "page_size"}
# Python's int() also reads "1_0", " 7 " and the digits of other scripts ("२" is 2):
# a page number is ASCII digits, with a sign for the range check to refuse.
PAGE_NUMBER = re.compile(r"-?[0-9]+")


@blp.before_request
def refuse_ambiguous_query_parameters() -> None:
    """422 for `?page=1&page=2` (which one was meant is a guess) and for `?page=२`.

    Only the list's own parameters count; unknown ones are ignored, repeated or not.
    """
    for name in LIST_PARAMETERS & set(request.args):
        values = request.args.getlist(name)
        if len(values) > 1:
            abort(
                422,
                message=f"The query parameter {name!r} is given more than once.",
                errors={"query": {name: ["Given more than once."]}},
            )
        if name in ("page", "page_size") and not PAGE_NUMBER.fullmatch(values[0]):
            abort(
                422,
                message=f"The query parameter {name!r} must be a whole number in ASCII digits.",
                errors={"query": {name: ["Not a valid integer."]}},
            )


@blp.route("")
class Tasks(MethodView):
    """The collection of tasks."""

    @blp.doc(operationId="list_tasks")
    @blp.arguments(TaskFilterSchema, location="query")
    @blp.response(200, TaskSchema(many=True))
    @UNAUTHORIZED
    @UNAVAILABLE
    @blp.paginate()
    def get(
        self, filters: dict[str, Any], pagination_parameters: PaginationParameters
    ) -> Sequence[TaskRow]:
        """List tasks, newest first

        Filter by `status` and `priority`; page with `page` and `page_size` (at most 100).
        The `X-Pagination` header gives the total and the neighbouring pages.
        """
        page, total = get_extension().service.list(
            **filters,
            offset=pagination_parameters.first_item,
            limit=pagination_parameters.page_size,
        )
        pagination_parameters.item_count = total
        return page

    @blp.doc(operationId="create_task", parameters=[IDEMPOTENCY_KEY_PARAMETER])
    @blp.arguments(TaskCreateSchema, required=False)
    @blp.response(201, TaskSchema, headers={**LOCATION_HEADER, **REPLAYED_HEADER})
    @UNAUTHORIZED
    @blp.alt_response(400, schema=ErrorSchema, description="The body is not valid JSON.")
    @blp.alt_response(
        408, schema=ErrorSchema, description="The body did not arrive in full within 10 s."
    )
    @blp.alt_response(413, schema=ErrorSchema, description="The body is too large.")
    @blp.alt_response(415, schema=ErrorSchema, description="The body is not JSON.")
    @blp.alt_response(
        503,
        schema=ErrorSchema,
        description=(
            "The queue is full (TASKSERVICE_MAX_QUEUED; nothing was created), the database"
            " is unavailable, or the service is still waiting for it to start; try again after"
            " Retry-After seconds."
        ),
        headers=RETRY_AFTER_HEADER,
    )
    def post(self, fields: dict[str, Any]) -> tuple[TaskRow, int, dict[str, str]]:
        """Create a task

        The task is queued and its number returned at once. The body and each field
        are optional: an empty POST creates a task with the defaults. With an
        `Idempotency-Key`, a retry of the same request makes no second task: it
        answers the first one, with `Idempotent-Replayed: true`; the same key with
        other fields is a 422.
        """
        service = get_extension().service
        key = idempotency_key(request)
        headers: dict[str, str] = {}
        if key is None:
            task = service.create(**fields)
        else:
            # The fields the client gave, as read (1 and 1.0 are one duration); not
            # the defaults, or a random duration would differ between two tries.
            given = {name: fields[name] for name in request.get_json(silent=True) or {}}
            task, replayed = service.create_once(key=key, fingerprint=fingerprint(given), **fields)
            if replayed:
                headers[REPLAYED] = "true"
        headers["Location"] = url_for("tasks.TaskView", task_id=task.id)
        return task, 201, headers


@blp.route(f"/{TASK_ID}")
class TaskView(MethodView):
    """One task."""

    @blp.doc(operationId="get_task")
    @blp.response(200, TaskSchema)
    @UNAUTHORIZED
    @UNAVAILABLE
    @blp.alt_response(404, schema=ErrorSchema, description="No such task.")
    def get(self, task_id: int) -> TaskRow:
        """Read a task's status and timings"""
        return get_extension().service.get(task_id)

    @blp.doc(operationId="cancel_task")
    @blp.response(200, TaskSchema)
    @UNAUTHORIZED
    @UNAVAILABLE
    @blp.alt_response(404, schema=ErrorSchema, description="No such task.")
    @blp.alt_response(409, schema=ErrorSchema, description="The task is no longer queued.")
    def delete(self, task_id: int) -> TaskRow:
        """Cancel a queued task

        Only a task that is still `In Queue` can be cancelled; it then never runs.
        """
        return get_extension().service.cancel(task_id)
