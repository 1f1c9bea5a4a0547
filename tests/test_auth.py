"""TASKSERVICE_API_TOKEN: /tasks and /overview need the bearer token; /health stays open."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

TOKEN = "s3cret-token-for-the-tests"  # noqa: S105 - a test fixture, not a secret
GOOD = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def guarded(make_app) -> Flask:
    return make_app(start_pool=False, TASKSERVICE_API_TOKEN=TOKEN)


@pytest.fixture
def client(guarded: Flask) -> FlaskClient:
    return guarded.test_client()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/tasks"),
        ("get", "/tasks"),
        ("get", "/tasks/1"),
        ("delete", "/tasks/1"),
        ("get", "/overview"),
    ],
)
def test_every_task_endpoint_needs_the_token(client: FlaskClient, method: str, path: str):
    response = getattr(client, method)(path)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="taskservice"'
    assert response.json["message"] == "This endpoint needs 'Authorization: Bearer <token>'."
    assert response.headers["X-Request-ID"]  # refused requests are logged and counted too


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", "Bearer é", f"bearer {TOKEN}-"],
)
def test_a_wrong_token_is_refused(client: FlaskClient, authorization: str):
    response = client.post("/tasks", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="taskservice", error="invalid_token"'
    )
    assert response.json["message"] == "The token is wrong."


@pytest.mark.parametrize("authorization", [f"Basic {TOKEN}", TOKEN, ""])
def test_credentials_of_another_scheme_get_the_plain_challenge(
    client: FlaskClient, authorization: str
):
    response = client.post("/tasks", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="taskservice"'


def test_the_right_token_opens_every_endpoint(client: FlaskClient):
    created = client.post("/tasks", headers=GOOD)
    task_id = created.json["id"]

    assert created.status_code == 201
    assert client.get(f"/tasks/{task_id}", headers=GOOD).status_code == 200
    assert client.get("/tasks", headers=GOOD).status_code == 200
    assert client.delete(f"/tasks/{task_id}", headers=GOOD).status_code == 200
    assert client.get("/overview", headers=GOOD).status_code == 200
    lower_case = {"Authorization": f"bearer {TOKEN}"}
    assert client.get(f"/tasks/{task_id}", headers=lower_case).status_code == 200


def test_a_refused_request_changes_nothing(client: FlaskClient):
    client.post("/tasks", json={"name": "intruder"})

    assert client.get("/tasks", headers=GOOD).json == []


def test_health_docs_and_the_dashboard_page_stay_open(client: FlaskClient):
    assert client.get("/health").status_code in (200, 503)  # no pool here: 503, but no 401
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    # The page holds no task data; it asks for the token before it polls /overview.
    assert client.get("/").status_code == 200
    with client.get("/dashboard/static/dashboard.js") as script:
        assert script.status_code == 200


def test_the_openapi_document_declares_the_scheme(client: FlaskClient):
    spec = client.get("/openapi.json").json

    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/health"]["get"]["security"] == []
    assert "401" in spec["paths"]["/tasks"]["post"]["responses"]


def test_without_a_token_nothing_is_asked(make_app):
    client = make_app(start_pool=False).test_client()

    assert client.post("/tasks").status_code == 201
    spec = client.get("/openapi.json").json
    assert spec["security"] == []
    assert "securitySchemes" not in spec["components"]
