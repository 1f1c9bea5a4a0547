"""GET /metrics: counters of what happened, gauges of what the database holds."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def test_task_life_and_requests_are_counted(pool_app: Flask):
    client = pool_app.test_client()
    for priority in ("high", "high", "low"):
        client.post("/tasks", json={"priority": priority, "duration": 1})
    client.post("/tasks", json={"duration": 13})  # always fails
    client.get("/tasks/999")

    def all_ended() -> dict:
        # The counters move just after the database does: wait for both.
        metrics = scrape(client)
        ended = sum(
            v for (name, _), v in metrics.items() if name == "taskservice_tasks_finished_total"
        )
        return metrics if ended == 4 and metrics[("taskservice_tasks_running", ())] == 0 else {}

    metrics = wait_for(all_ended)

    assert metrics[("taskservice_tasks_created_total", (("priority", "high"),))] == 2
    assert metrics[("taskservice_tasks_created_total", (("priority", "medium"),))] == 1
    finished = "taskservice_tasks_finished_total"
    assert metrics[(finished, (("priority", "high"), ("status", "Completed")))] == 2
    assert metrics[(finished, (("priority", "medium"), ("status", "Failed")))] == 1
    assert metrics[("taskservice_task_wait_seconds_count", ())] == 4
    assert metrics[("taskservice_task_execution_seconds_count", ())] == 4
    assert metrics[("taskservice_tasks", (("status", "Failed"),))] == 1
    assert metrics[("taskservice_queue_depth", ())] == 0
    not_found = (("endpoint", "/tasks/<task_id:task_id>"), ("method", "GET"), ("status", "404"))
    assert metrics[("taskservice_http_requests_total", not_found)] == 1
    created = (("endpoint", "/tasks"), ("method", "POST"), ("status", "201"))
    assert metrics[("taskservice_http_requests_total", created)] == 4
    duration = (("endpoint", "/tasks"), ("method", "POST"))
    assert metrics[("taskservice_http_request_duration_seconds_count", duration)] == 4


def test_gauges_come_from_the_database_after_a_restart(make_app):
    first = make_app(start_pool=False)
    for _ in range(3):
        first.test_client().post("/tasks", json={"duration": 1})

    restarted = scrape(make_app(start_pool=False).test_client())

    assert restarted[("taskservice_queue_depth", ())] == 3
    assert restarted[("taskservice_tasks", (("status", "In Queue"),))] == 3
    assert ("taskservice_tasks_created_total", (("priority", "medium"),)) not in restarted


def test_unmatched_paths_share_one_series(app: Flask):
    client = app.test_client()
    for path in ("/nope", "/tasks/abc", "/tasks/01"):
        client.get(path)

    unmatched = (("endpoint", "unmatched"), ("method", "GET"), ("status", "404"))
    assert scrape(client)[("taskservice_http_requests_total", unmatched)] == 3
