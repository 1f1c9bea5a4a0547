"""The HTTP API: every endpoint's success shape and every bad input's answer."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_smorest import Blueprint

from taskservice import tasks
from taskservice.api.tasks import TaskBlueprint
from taskservice.errors import QueueFull
from taskservice.extension import EXTENSION_KEY, get_extension
from taskservice.models import TaskPriority, TaskStatus

TASK_FIELDS = {
    "id",
    "name",
    "priority",
    "duration",
    "status",
    "create_time",
    "start_time",
    "time_to_execute",
    "finish_time",
    "error",
    "attempts",
    "slot",
    "source",
}


def stored_status(app: Flask, task_id: int) -> TaskStatus:
    with app.app_context():
        return get_extension().service.get(task_id).status


def stored_count(app: Flask) -> int:
    with app.app_context():
        return get_extension().service.list()[1]


def create(client: FlaskClient, **fields: object) -> dict:
    response = client.post("/tasks", json=fields)
    assert response.status_code == 201, response.json
    return response.json


class TestCreate:
    def test_empty_post_creates_a_task_with_defaults(self, client: FlaskClient, app: Flask):
        response = client.post("/tasks")

        assert response.status_code == 201
        body = response.json
        assert set(body) == TASK_FIELDS
        assert response.headers["Location"] == f"/tasks/{body['id']}"
        assert body["status"] == "In Queue"
        assert body["name"] is None
        assert body["priority"] == "medium"
        assert body["duration"] in range(11)
        assert body["start_time"] is None
        assert body["time_to_execute"] is None
        assert body["attempts"] == 0
        assert datetime.fromisoformat(body["create_time"]).utcoffset().total_seconds() == 0
        assert stored_status(app, body["id"]) is TaskStatus.IN_QUEUE

    def test_fields_are_stored(self, client: FlaskClient):
        body = create(client, name="report", duration=2.5, priority="high")

        assert body["name"] == "report"
        assert body["duration"] == 2.5
        assert body["priority"] == "high"
        assert client.get(f"/tasks/{body['id']}").json == body

    def test_empty_object_and_json_content_type_without_body(self, client: FlaskClient):
        assert client.post("/tasks", json={}).status_code == 201
        assert client.post("/tasks", content_type="application/json").status_code == 201

    def test_numbers_increase(self, client: FlaskClient):
        first, second = create(client), create(client)
        assert second["id"] == first["id"] + 1

    def test_default_duration_is_random_whole_seconds(self, client: FlaskClient):
        durations = {create(client)["duration"] for _ in range(40)}
        assert durations <= set(range(11))
        assert len(durations) > 1

    @pytest.mark.parametrize("duration", [0, 3600, 0.001, 13])
    def test_duration_bounds_accepted(self, client: FlaskClient, duration: float):
        assert create(client, duration=duration)["duration"] == duration

    def test_negative_zero_is_zero(self, client: FlaskClient):
        body = client.post("/tasks", data='{"duration": -0.0}', content_type="application/json")
        assert body.get_data(as_text=True).count('"duration":0.0') == 1

    @pytest.mark.parametrize("name", ["x", "n" * 200, "задача"])
    def test_names_accepted(self, client: FlaskClient, name: str):
        assert create(client, name=name)["name"] == name


INVALID_BODIES = [
    pytest.param({"duration": -1}, "duration", id="negative duration"),
    pytest.param({"duration": 3600.5}, "duration", id="duration over an hour"),
    pytest.param({"duration": "5"}, "duration", id="duration as string"),
    pytest.param({"duration": True}, "duration", id="duration as boolean"),
    pytest.param({"duration": float("nan")}, "duration", id="duration NaN"),
    pytest.param({"duration": float("inf")}, "duration", id="duration infinite"),
    pytest.param({"duration": None}, "duration", id="duration null"),
    pytest.param({"name": ""}, "name", id="empty name"),
    pytest.param({"name": "n" * 201}, "name", id="name too long"),
    pytest.param({"name": 5}, "name", id="name not a string"),
    pytest.param({"name": "a\ud800"}, "name", id="name with a lone surrogate"),
    pytest.param({"name": "a\u0000b"}, "name", id="name with NUL"),
    pytest.param({"name": "line\nbreak"}, "name", id="name with a control character"),
    pytest.param({"priority": "urgent"}, "priority", id="unknown priority"),
    pytest.param({"priority": "HIGH"}, "priority", id="priority in capitals"),
    pytest.param({"colour": "red"}, "colour", id="unknown field"),
]


class TestCreateRejects:
    @pytest.mark.parametrize(("body", "field"), INVALID_BODIES)
    def test_invalid_field(self, client: FlaskClient, app: Flask, body: dict, field: str):
        response = client.post("/tasks", json=body)

        assert response.status_code == 422
        assert response.json["code"] == 422
        assert field in response.json["errors"]["json"]
        assert "invalid" in response.json["message"]
        assert stored_count(app) == 0

    @pytest.mark.parametrize("body", ["[]", '"text"', "5", "null", "[{}]"])
    def test_body_not_an_object(self, client: FlaskClient, app: Flask, body: str):
        response = client.post("/tasks", data=body, content_type="application/json")

        assert response.status_code == 422
        assert response.json["errors"]["json"]["_schema"] == ["Invalid input type."]
        assert stored_count(app) == 0

    @pytest.mark.parametrize(
        "body",
        [
            "{",
            '{"duration": }',
            "{'a': 1}",
            b"\xff\xfe",
            "[" * 5000 + "]" * 5000,
            '{"name": ' + "[" * 5000 + "]" * 5000 + "}",
            '{"duration": ' + "9" * 5000 + "}",
        ],
        ids=["open", "no value", "single quotes", "not utf-8", "deep", "deep field", "huge"],
    )
    def test_malformed_json(self, client: FlaskClient, app: Flask, body: str | bytes):
        response = client.post("/tasks", data=body, content_type="application/json")

        assert response.status_code == 400
        assert response.json["message"] == "The body is not valid JSON."
        assert stored_count(app) == 0

    @pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
    def test_body_that_is_not_json(self, client: FlaskClient, app: Flask, content_type: str):
        response = client.post("/tasks", data='{"duration": 1}', content_type=content_type)

        assert response.status_code == 415
        assert "Content-Type: application/json" in response.json["message"]
        assert stored_count(app) == 0

    def test_body_too_large(self, client: FlaskClient, app: Flask):
        body = json.dumps({"name": "x" * 70_000})

        response = client.post("/tasks", data=body, content_type="application/json")

        assert response.status_code == 413
        assert response.json == {
            "code": 413,
            "status": "Request Entity Too Large",
            "message": "The body is larger than 65536 bytes, the most this service reads.",
            "errors": {},
        }
        assert stored_count(app) == 0


class TestRead:
    def test_read_a_task(self, client: FlaskClient):
        created = create(client, duration=1)

        response = client.get(f"/tasks/{created['id']}")

        assert response.status_code == 200
        assert response.json == created

    @pytest.mark.parametrize(
        ("path", "message"),
        [
            ("/tasks/999", "Task 999 does not exist."),
            (f"/tasks/{2**31}", f"Task {2**31} does not exist."),
            (f"/tasks/{2**63 - 1}", f"Task {2**63 - 1} does not exist."),
            *[
                (f"/tasks/{given}", f"Task ids are positive whole numbers, e.g. /tasks/7; {shown}")
                for given, shown in [
                    ("0", "'0' is not one."),
                    ("-1", "'-1' is not one."),
                    ("+1", "'+1' is not one."),
                    ("01", "'01' is not one."),
                    ("0001", "'0001' is not one."),
                    ("abc", "'abc' is not one."),
                    ("1.5", "'1.5' is not one."),
                    ("%D9%A1", "'\u0661' is not one."),  # Arabic-Indic digit one
                    ("%EF%BC%91", "'\uff11' is not one."),  # fullwidth digit one
                    ("x" * 100, f"'{'x' * 53}...' is not one."),
                ]
            ],
            *[
                (f"/tasks/{number}", f"No task has the number {number}: task ids are at most")
                for number in (2**63, 2**64, "9" * 400)
            ],
            ("/tasks/1/", "No route /tasks/1/ (did you mean /tasks/1?)"),
            ("/tasks//1", "No route /tasks//1 (did you mean /tasks/1?)"),
            ("/tasks/", "No route /tasks/ (did you mean /tasks?)"),
            ("/TASKS/1", "No route /TASKS/1 (did you mean /tasks/1?)"),
            ("/tasks/1/run", "No route /tasks/1/run; the API's routes are listed at /docs."),
        ],
    )
    def test_unknown_or_malformed_id(self, client: FlaskClient, path: str, message: str):
        create(client)  # task 1 exists: none of these paths may reach it
        response = client.get(path)

        assert response.status_code == 404
        assert response.json == {
            "code": 404,
            "status": "Not Found",
            "message": response.json["message"],
            "errors": {},
        }
        assert response.json["message"].startswith(message)
        assert client.delete(path).status_code in (404, 405)


class TestList:
    def test_newest_first_with_pagination_header(self, client: FlaskClient):
        ids = [create(client)["id"] for _ in range(5)]

        response = client.get("/tasks?page=1&page_size=2")

        assert response.status_code == 200
        assert [task["id"] for task in response.json] == ids[::-1][:2]
        pagination = json.loads(response.headers["X-Pagination"])
        assert pagination["total"] == 5
        assert pagination["total_pages"] == 3
        assert pagination["next_page"] == 2
        last = client.get("/tasks?page=3&page_size=2").json
        assert [task["id"] for task in last] == [ids[0]]

    def test_filters(self, client: FlaskClient):
        high = create(client, priority="high")
        low = create(client, priority="low")
        client.delete(f"/tasks/{low['id']}")

        by_priority = client.get("/tasks?priority=high").json
        by_status = client.get("/tasks?status=Cancelled").json
        both = client.get("/tasks?status=In%20Queue&priority=low").json

        assert [task["id"] for task in by_priority] == [high["id"]]
        assert [task["id"] for task in by_status] == [low["id"]]
        assert both == []

    def test_page_past_the_end_is_empty(self, client: FlaskClient):
        create(client)
        for page in (2, 10**6, 2**62, 10**30):
            response = client.get(f"/tasks?page={page}&page_size=100")
            assert response.status_code == 200
            assert response.json == []

    @pytest.mark.parametrize(
        ("query", "field"),
        [
            ("status=Done", "status"),
            ("priority=urgent", "priority"),
            ("page_size=101", "page_size"),
            ("page_size=0", "page_size"),
            ("page=0", "page"),
            ("page=abc", "page"),
            ("page=%E0%A5%A8", "page"),  # Devanagari digit two
            ("page_size=%EF%BC%95", "page_size"),  # fullwidth digit five
            ("page=1_0", "page"),
            ("page=%201", "page"),
            ("page_size=5.0", "page_size"),
        ],
    )
    def test_bad_query(self, client: FlaskClient, query: str, field: str):
        response = client.get(f"/tasks?{query}")

        assert response.status_code == 422
        assert field in response.json["errors"]["query"]


class TestCancel:
    def test_cancel_a_queued_task(self, client: FlaskClient, app: Flask):
        task = create(client)

        response = client.delete(f"/tasks/{task['id']}")

        assert response.status_code == 200
        assert response.json["status"] == "Cancelled"
        assert response.json["finish_time"] is not None
        assert stored_status(app, task["id"]) is TaskStatus.CANCELLED

    def test_cancel_twice(self, client: FlaskClient):
        task = create(client)
        client.delete(f"/tasks/{task['id']}")

        response = client.delete(f"/tasks/{task['id']}")

        assert response.status_code == 409
        assert response.json["message"] == (
            f"Task {task['id']} is 'Cancelled'; only a task that is 'In Queue' can be cancelled."
        )

    @pytest.mark.parametrize(
        ("finish", "status"), [(None, "Run"), (TaskStatus.COMPLETED, "Completed")]
    )
    def test_cancel_too_late(
        self, client: FlaskClient, app: Flask, finish: TaskStatus | None, status: str
    ):
        task_id = create(client)["id"]
        with app.app_context(), get_extension().db.writing() as session:
            tasks.claim_task(session, task_id, slot=1)
            if finish is not None:
                tasks.finish_task(session, task_id, 1, status=finish, exec_time=0.5)

        response = client.delete(f"/tasks/{task_id}")

        assert response.status_code == 409
        assert response.json["message"] == (
            f"Task {task_id} is '{status}'; only a task that is 'In Queue' can be cancelled."
        )
        assert stored_status(app, task_id).value == status

    def test_cancel_unknown(self, client: FlaskClient):
        response = client.delete("/tasks/42")

        assert response.status_code == 404
        assert response.json["message"] == "Task 42 does not exist."


class TestProtocol:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("put", "/tasks/1"), ("patch", "/tasks"), ("delete", "/tasks"), ("post", "/health")],
    )
    def test_wrong_method(self, client: FlaskClient, method: str, path: str):
        response = getattr(client, method)(path)

        assert response.status_code == 405
        assert response.json["code"] == 405
        assert response.json["message"].startswith(f"{method.upper()} is not allowed on {path}")
        assert response.json["errors"] == {}
        assert method.upper() not in response.headers["Allow"]
        assert "GET" in response.headers["Allow"]

    def test_unknown_path_is_json(self, client: FlaskClient):
        response = client.get("/nowhere")

        assert response.status_code == 404
        assert response.json == {
            "code": 404,
            "status": "Not Found",
            "message": "No route /nowhere; the API's routes are listed at /docs.",
            "errors": {},
        }

    @pytest.mark.parametrize(
        ("method", "path", "options", "status"),
        [
            ("post", "/tasks", {"data": "x", "content_type": "text/plain"}, 415),
            ("post", "/tasks", {"data": "{", "content_type": "application/json"}, 400),
            ("post", "/tasks", {"json": {"duration": -1}}, 422),
            ("get", "/tasks?page=0", {}, 422),
            ("get", "/tasks/7", {}, 404),
            ("delete", "/tasks/7", {}, 404),
            ("put", "/tasks", {}, 405),
        ],
    )
    def test_every_error_has_the_documented_shape(
        self, client: FlaskClient, method: str, path: str, options: dict, status: int
    ):
        response = getattr(client, method)(path, **options)

        assert response.status_code == status
        assert set(response.json) == {"code", "status", "message", "errors"}
        assert response.json["code"] == status
        assert isinstance(response.json["errors"], dict)
        assert response.json["message"]

    def test_a_cancel_too_late_has_the_documented_shape(self, client: FlaskClient, app: Flask):
        task = create(client)
        client.delete(f"/tasks/{task['id']}")

        response = client.delete(f"/tasks/{task['id']}")

        assert response.status_code == 409
        assert response.json == {
            "code": 409,
            "status": "Conflict",
            "message": f"Task {task['id']} is 'Cancelled'; only a task that is 'In Queue' can be"
            " cancelled.",
            "errors": {},
        }

    def test_openapi_document(self, client: FlaskClient):
        spec = client.get("/openapi.json").json

        assert spec["info"]["title"] == "taskservice"
        assert {"/tasks", "/tasks/{task_id}", "/health"} <= set(spec["paths"])
        responses = spec["paths"]["/tasks/{task_id}"]["delete"]["responses"]
        assert {"200", "404", "409"} <= set(responses)
        create_responses = spec["paths"]["/tasks"]["post"]["responses"]
        assert {"201", "400", "413", "415", "422"} <= set(create_responses)
        task_id = spec["paths"]["/tasks/{task_id}"]["parameters"][0]
        assert task_id["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}

    def test_swagger_ui_is_served_locally(self, client: FlaskClient):
        page = client.get("/docs")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert 'src="/docs/assets/swagger-ui-bundle.js"' in html
        assert "//" not in html.split("swagger-ui-bundle.js")[0].rsplit("src=", 1)[1]
        script = client.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200
        assert len(script.data) > 100_000
        script.close()


@pytest.mark.parametrize("item_count", [0, 1, 9, 10, 11, 25, 10**7])
@pytest.mark.parametrize("page", [1, 2, 3, 4, 10**6])
def test_pagination_header_is_flask_smorests(page: int, item_count: int):
    ours = TaskBlueprint._make_pagination_metadata(page, 10, item_count)

    assert ours == Blueprint._make_pagination_metadata(page, 10, item_count)


def test_an_answer_orjson_cannot_encode_is_still_json(client: FlaskClient):
    """A lone surrogate in a field name comes back in the error, escaped."""
    response = client.post(
        "/tasks", data='{"\\ud800": 1}', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json["errors"]["json"] == {"\ud800": ["Unknown field."]}


def test_error_answers_are_documented_with_their_headers(client: FlaskClient):
    responses = client.get("/openapi.json").json["paths"]["/tasks"]["post"]["responses"]

    assert "Retry-After" in responses["503"]["headers"]
    assert "WWW-Authenticate" in responses["401"]["headers"]
    assert responses["413"]["description"] == "The body is too large."


def test_the_openapi_document_keeps_its_order(client: FlaskClient):
    document = json.loads(client.get("/openapi.json").get_data(as_text=True))

    assert list(document["paths"]["/tasks/{task_id}"]) == ["get", "delete", "parameters"]


class TestBackPressure:
    @pytest.fixture
    def full_app(self, make_app) -> Flask:
        return make_app(start_pool=False, TASKSERVICE_MAX_QUEUED=2)

    def test_a_full_queue_refuses_with_retry_after_and_creates_nothing(self, full_app: Flask):
        client = full_app.test_client()
        first, _second = create(client), create(client)

        response = client.post("/tasks", json={"name": "one too many"})

        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.json["message"] == (
            "The queue is full: 2 tasks are waiting, the most this service accepts."
            " No task was created; try again in 5 s."
        )
        assert stored_count(full_app) == 2
        client.delete(f"/tasks/{first['id']}")
        assert create(client, name="room again")["name"] == "room again"
        assert stored_count(full_app) == 3  # one cancelled, two queued

    def test_creates_at_the_same_moment_cannot_pass_the_bound(self, make_app):
        app = make_app(start_pool=False, TASKSERVICE_MAX_QUEUED=5)
        service = app.extensions[EXTENSION_KEY].service
        start = threading.Barrier(16, timeout=10)

        def create_one(_: int) -> bool:
            start.wait()
            try:
                service.create(name=None, duration=1, priority=TaskPriority.MEDIUM)
            except QueueFull:
                return False
            return True

        with ThreadPoolExecutor(16) as pool:
            created = list(pool.map(create_one, range(16)))

        assert created.count(True) == 5
        assert stored_count(app) == 5

    def test_only_queued_tasks_count(self, make_app, gate):
        app = make_app(TASKSERVICE_MAX_QUEUED=1)
        client = app.test_client()
        for _ in range(2):
            create(client)
            gate.wait_for_entries(1)  # it runs now: the queue is empty again

        assert client.post("/tasks").status_code == 201
        assert client.post("/tasks").status_code == 503


def test_a_body_of_only_whitespace_is_malformed_json(client: FlaskClient):
    response = client.post("/tasks", data=" \t\n", headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert stored_count_of(client) == 0


@pytest.mark.parametrize(
    "query", ["page=1&page=2", "status=Run&status=Completed", "page_size=5&page_size=5"]
)
def test_a_repeated_query_parameter_is_refused(client: FlaskClient, query: str):
    response = client.get(f"/tasks?{query}")

    name = query.split("=", maxsplit=1)[0]
    assert response.status_code == 422
    assert response.json["message"] == f"The query parameter {name!r} is given more than once."
    assert response.json["errors"] == {"query": {name: ["Given more than once."]}}


def stored_count_of(client: FlaskClient) -> int:
    return int(json.loads(client.get("/tasks").headers["X-Pagination"])["total"])
