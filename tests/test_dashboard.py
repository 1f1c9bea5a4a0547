"""The dashboard over HTTP: the page at /, its assets, and the snapshot it polls."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from taskservice.api.dashboard import CONTENT_SECURITY_POLICY
from taskservice.api.schemas import TimelineBars, TimelineBarSchema
from taskservice.extension import get_extension
from tests.conftest import Gate
from tests.helpers import wait_for


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_the_page_is_served_at_the_root(client: FlaskClient):
    response = client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    page = response.get_data(as_text=True)
    assert 'data-overview-url="/overview"' in page
    assert 'data-tasks-url="/tasks"' in page
    assert re.search(r"<option selected>medium</option>", page)


def test_the_page_loads_nothing_from_elsewhere(client: FlaskClient):
    page = client.get("/").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)

    assert assets  # the script, the styles and the links
    assert all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        with client.get(asset) as response:
            assert response.status_code != 404, asset  # /health is 503 here: no pool
    # Nothing inline runs: the policy allows scripts and styles from the app only.
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "style=" not in page


@pytest.mark.parametrize(
    ("asset", "mimetype"),
    [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")],
)
def test_the_assets_are_served(client: FlaskClient, asset: str, mimetype: str):
    with client.get(f"/dashboard/static/{asset}") as response:
        assert response.status_code == 200
        assert response.mimetype == mimetype


def test_the_script_never_inserts_markup(client: FlaskClient):
    """Task names are text: the script builds nodes and never parses strings as HTML."""
    with client.get("/dashboard/static/dashboard.js") as response:
        script = response.get_data(as_text=True)

    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert "document.write" not in script


def test_the_overview_of_an_empty_service(client: FlaskClient):
    response = client.get("/overview")

    assert response.status_code == 200
    body = response.json
    assert body["counts"] == {
        "In Queue": 0,
        "Run": 0,
        "Completed": 0,
        "Failed": 0,
        "Cancelled": 0,
    }
    assert (body["running"], body["queue_head"], body["recent"], body["timeline"]) == (
        [],
        [],
        [],
        [],
    )
    assert body["concurrency"] == 2
    assert body["time_scale"] == 0.001


def test_the_overview_follows_the_tasks(make_app, gate: Gate):
    client = make_app().test_client()
    first, second, third = (
        client.post("/tasks", json={"name": f"task {n}", "duration": 1}).json["id"]
        for n in range(3)
    )
    gate.wait_for_entries(2)
    cancelled = client.post("/tasks", json={"priority": "high"}).json["id"]
    client.delete(f"/tasks/{cancelled}")

    body = client.get("/overview").json

    assert body["counts"]["Run"] == 2
    assert {(task["id"], task["slot"]) for task in body["running"]} in (
        {(first, 1), (second, 2)},
        {(first, 2), (second, 1)},
    )
    assert [task["id"] for task in body["queue_head"]] == [third]
    assert body["queue_head"][0]["name"] == "task 2"
    assert body["counts"]["Cancelled"] == 1
    assert body["recent"] == []  # the cancelled task never ran

    gate.open.set()
    done = wait_for(lambda: (b := client.get("/overview").json)["counts"]["Completed"] == 3 and b)
    assert sorted(bar["id"] for bar in done["timeline"]) == [first, second, third]
    assert sorted(task["id"] for task in done["recent"]) == [first, second, third]
    assert all(
        set(bar) == {"id", "slot", "status", "start_time", "finish_time"}
        for bar in done["timeline"]
    )
    assert done["running"] == []


def test_the_overview_is_documented(client: FlaskClient):
    spec = client.get("/openapi.json").json

    operation = spec["paths"]["/overview"]["get"]
    assert operation["summary"] == "Counts, running tasks, the head of the queue and a timeline"
    assert set(operation["responses"]) == {"200", "401", "503", "default"}


def test_the_timeline_is_written_as_its_schema_would(make_app, gate: Gate):
    client = make_app().test_client()
    for _ in range(3):
        client.post("/tasks", json={"duration": 1})
    gate.open.set()
    wait_for(lambda: client.get("/overview").json["counts"]["Completed"] == 3)
    app = client.application
    with app.app_context():
        bars = get_extension().service.overview().timeline

    assert len(bars) == 3
    assert TimelineBars()._serialize(bars, "timeline", None) == TimelineBarSchema(many=True).dump(
        bars
    )
