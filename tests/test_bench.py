"""The benchmark harness: a tiny real run, and the analysis it rebuilds from task timings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pika
import pika.exceptions
import pytest

from bench.amqp import REQUIRE_AMQP, check_broker
from bench.analysis import all_busy_share, dispatch, max_overlap, percentile
from bench.broker_report import broker_section
from bench.database import Run
from bench.postgres import POSTGRES_URL, REQUIRE_POSTGRES, admin_engine, check_postgres
from bench.replica_report import replica_section
from bench.replica_scenarios import split
from bench.report import BEGIN, END, write_report
from bench.server import free_port
from bench.workspace import BenchError
from tests.amqp import AMQP_URL, broker_answers

ROOT = Path(__file__).resolve().parent.parent
# CI installs wrk and sets this, so that a missing wrk fails there instead of skipping.
REQUIRE_WRK = os.environ.get("TASKSERVICE_REQUIRE_WRK") == "1"
SECTIONS = (
    "Machine",
    "Targets",
    "Throughput and latency",
    "Load generator",
    "Listing at",
    "Dispatch",
    "Limit under load",
    "Memory and start-up",
    "RabbitMQ",
    "Replicas on PostgreSQL",
)
BROKER_ROWS = (
    "messages of the create queue made tasks",
    "events of the outbox published",
    "without a broker",
    "with a broker",
    "with against without",
)

ENDPOINTS = (
    "GET /ceiling",
    "POST /tasks",
    "GET /tasks/{id}",
    "GET /tasks first pages",
    "GET /tasks deep page",
)


def run(task_id: int, created: float, started: float, finished: float) -> Run:
    return Run(task_id=task_id, created=created, started=started, finished=finished)


def test_dispatch_gap_is_measured_from_the_slot_freed_first():
    runs = [
        run(1, 0.0, 0.0, 1.0),
        run(2, 0.0, 0.0, 2.0),
        run(3, 0.0, 1.1, 3.0),  # takes the slot task 1 freed at 1.0
        run(4, 0.0, 2.3, 4.0),  # takes the slot task 2 freed at 2.0
    ]

    found = dispatch(runs, slots=2)

    assert found.gaps == pytest.approx([0.1, 0.3])
    assert found.unmatched_starts == 0


def test_dispatch_gap_counts_from_creation_when_the_queue_was_empty():
    runs = [run(1, 0.0, 0.0, 1.0), run(2, 0.0, 0.0, 1.0), run(3, 5.0, 5.002, 6.0)]

    assert dispatch(runs, slots=2).gaps == pytest.approx([0.002])


def test_dispatch_reports_a_start_with_no_free_slot():
    runs = [run(1, 0, 0, 2), run(2, 0, 0, 2), run(3, 0, 1, 2)]

    assert dispatch(runs, slots=2).unmatched_starts == 1


def test_utilisation_is_the_share_with_both_slots_busy_between_first_and_last_start():
    # Both busy from 0 to 1 and from 1.5 to 2; the window ends at the last start, 2.
    runs = [run(1, 0, 0, 3), run(2, 0, 0, 1), run(3, 0, 1.5, 3), run(4, 0, 2, 3)]

    assert all_busy_share(runs, slots=2) == pytest.approx(0.75)


def test_max_overlap_does_not_count_a_start_at_another_task_s_finish():
    assert max_overlap([run(1, 0, 0, 1), run(2, 0, 1, 2), run(3, 0, 1.5, 3)]) == 2
    assert max_overlap([run(1, 0, 0, 2), run(2, 0, 0.5, 2), run(3, 0, 1, 3)]) == 3


def test_percentile_is_nearest_rank():
    values = [float(value) for value in range(1, 101)]

    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100


def test_report_keeps_the_text_outside_the_markers(tmp_path: Path):
    report = tmp_path / "benchmarks.md"
    report.write_text(f"intro\n{BEGIN}\nold figures\n{END}\nafterword\n")

    write_report(report, "new figures")

    assert report.read_text() == f"intro\n{BEGIN}\nnew figures\n{END}\nafterword\n"


def test_report_is_created_with_markers(tmp_path: Path):
    report = tmp_path / "docs" / "benchmarks.md"

    write_report(report, "figures")

    text = report.read_text()
    assert text.startswith("# Benchmarks")
    assert f"{BEGIN}\nfigures\n{END}" in text


def dead_broker_url() -> str:
    """A broker URL with a port where nothing listens."""
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"


def test_a_broker_that_does_not_answer_is_a_reason_to_leave_its_section_out(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv(REQUIRE_AMQP, raising=False)
    url = dead_broker_url()

    found = check_broker(url)

    assert found.version is None
    assert found.problem is not None
    assert found.problem.startswith(f"no RabbitMQ connection to {found.address} (")
    assert "guest" not in found.problem
    assert found.describe() == f"none answered at {found.address}"


def test_a_required_broker_that_does_not_answer_fails_the_run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(REQUIRE_AMQP, "1")

    with pytest.raises(BenchError, match=f"{REQUIRE_AMQP}=1 requires one"):
        check_broker(dead_broker_url())


def test_the_report_says_why_the_broker_section_is_left_out():
    results = SimpleNamespace(broker=None, broker_skipped="no RabbitMQ connection to here (why)")

    section = broker_section(results)  # type: ignore[arg-type]

    assert section == (
        "### RabbitMQ\n\nNot measured: no RabbitMQ connection to here (why). Start a broker, "
        "or pass `--amqp-url`, and run again; with `TASKSERVICE_REQUIRE_AMQP=1` the run fails "
        "instead."
    )


def test_a_postgres_server_that_does_not_answer_is_a_reason_to_leave_its_section_out(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv(REQUIRE_POSTGRES, raising=False)

    found = check_postgres(f"postgresql://someone:secret@127.0.0.1:{free_port()}/test")

    assert found.version is None
    assert found.problem is not None
    assert found.problem.startswith(f"no PostgreSQL connection to {found.address} (")
    assert "secret" not in found.problem
    assert found.describe() == f"none answered at {found.address}"


def test_a_required_postgres_server_that_does_not_answer_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(REQUIRE_POSTGRES, "1")

    with pytest.raises(BenchError, match=f"{REQUIRE_POSTGRES}=1 requires one"):
        check_postgres(f"postgresql://postgres@127.0.0.1:{free_port()}/test")


def test_the_report_says_why_the_replicas_section_is_left_out():
    results = SimpleNamespace(replicas=None, replicas_skipped="no PostgreSQL connection (why)")

    section = replica_section(results)  # type: ignore[arg-type]

    assert section == (
        "### Replicas on PostgreSQL\n\nNot measured: no PostgreSQL connection (why). Start a "
        "server, or pass `--postgres-url`, and run again; with `TASKSERVICE_REQUIRE_POSTGRES=1` "
        "the run fails instead."
    )


@pytest.mark.parametrize(
    ("clients", "parts", "shares"), [(8, 1, [8]), (8, 2, [4, 4]), (8, 3, [3, 3, 2])]
)
def test_the_clients_are_split_evenly_over_the_replicas(
    clients: int, parts: int, shares: list[int]
):
    assert split(clients, parts) == shares


def sections(report: str) -> dict[str, str]:
    """The generated sections of the report, by title."""
    generated = report.split(BEGIN, 1)[1].split(END, 1)[0]
    parts = re.split(r"^### (.+)$", generated, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_quick_benchmark_run(tmp_path: Path):
    if shutil.which("wrk") is None:
        reason = "wrk is not installed (apt-get install wrk)"
        if REQUIRE_WRK:
            pytest.fail(reason)
        pytest.skip(reason)
    report = tmp_path / "benchmarks.md"
    report.write_text(f"hand-written intro\n\n{BEGIN}\n{END}\n\nhand-written end\n")
    raw = tmp_path / "bench.json"

    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--report", str(report), "--json", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=270,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    text = report.read_text()
    assert text.startswith("hand-written intro\n")
    assert text.endswith("hand-written end\n")
    found = sections(text)
    for title in SECTIONS:
        body = next((body for name, body in found.items() if name.startswith(title)), "")
        assert re.search(r"\d", body), f"no figures in section {title!r}"
    throughput = found["Throughput and latency"]
    for endpoint in ENDPOINTS:
        assert re.search(rf"^\| {re.escape(endpoint)}.*\| \d", throughput, re.MULTILINE), endpoint
    results = json.loads(raw.read_text())
    for load in results["creation"].values():
        assert set(load["statuses"]) == {"201"}
        assert load["statuses"]["201"] == load["requests"] > 0
        assert sum(load["socket_errors"].values()) == 0
    limit = results["limit"]
    assert limit["samples"] > 0
    assert limit["finished_tasks"] > 0
    assert 1 <= limit["most_running_sampled"] <= 2
    assert 1 <= limit["max_overlap"] <= 2
    assert len(results["dispatch"]["gaps_ms"]) == results["dispatch"]["tasks"] - 2
    check_broker_figures(found["RabbitMQ"], results)
    check_replica_figures(found["Replicas on PostgreSQL"], results)


def check_broker_figures(section: str, results: dict[str, Any]) -> None:
    """The RabbitMQ section's figures where a broker answers; else the line that says why not."""
    if not broker_answers():
        assert section.strip().startswith("Not measured: no RabbitMQ connection to ")
        assert results["broker"] is None
        return
    for row in BROKER_ROWS:
        assert re.search(rf"^\| {re.escape(row)} \| \d", section, re.MULTILINE), row
    broker = results["broker"]
    intake, drain, creation = broker["intake"], broker["drain"], broker["creation"]
    assert intake["messages"] == 100
    assert 0 < intake["span"]["counted"] <= intake["messages"]
    assert intake["span"]["seconds"] > 0
    assert drain["tasks"] == 100
    assert drain["events"] >= 3 * drain["tasks"]  # created, started, completed
    assert drain["routed"] == drain["events"]
    assert 0 < drain["span"]["counted"] <= drain["events"]
    assert set(creation["load"]["statuses"]) == {"201"}
    assert sum(creation["load"]["socket_errors"].values()) == 0
    prefixes = {part["prefix"] for part in (intake, drain, creation)}
    assert len(prefixes) == 3
    for prefix in prefixes:
        assert left_on_broker(prefix) == []


def left_on_broker(prefix: str) -> list[str]:
    """Which of a scenario's queues and exchange still exist on the broker."""
    queues = (f"{prefix}.tasks.create", f"{prefix}.tasks.create.dead", f"{prefix}.bench.events")
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        left = [name for name in queues if exists(connection, name, queue=True)]
        exchange = f"{prefix}.events"
        return left + ([exchange] if exists(connection, exchange, queue=False) else [])
    finally:
        connection.close()


def exists(connection: Any, name: str, *, queue: bool) -> bool:
    """Whether a queue or an exchange of this name exists: a passive declare on a new channel."""
    channel = connection.channel()
    try:
        if queue:
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:  # NOT_FOUND, which also closes the channel
            return False
        raise
    channel.close()
    return True


REPLICA_ROWS = (
    "1 replica",
    "2 replicas: replica 1",
    "2 replicas: replica 2",
    "2 replicas together",
    "SIGKILL",
    "SIGSTOP",
)


def check_replica_figures(section: str, results: dict[str, Any]) -> None:
    """The replicas' figures where PostgreSQL answers; else the line that says why not."""
    if check_postgres(POSTGRES_URL).problem is not None:
        assert section.strip().startswith("Not measured: no PostgreSQL connection to ")
        assert results["replicas"] is None
        return
    for row in REPLICA_ROWS:
        assert re.search(rf"^\| {re.escape(row)} \| \d", section, re.MULTILINE), row
    replicas = results["replicas"]
    for count, creation in replicas["creation"].items():
        assert len(creation["loads"]) == creation["replicas"] == int(count)
        for load in creation["loads"]:
            assert set(load["statuses"]) == {"201"}
            assert load["statuses"]["201"] == load["requests"] > 0
            assert sum(load["socket_errors"].values()) == 0
    (run,) = replicas["failovers"]  # --quick: one lease, one trial of each
    assert run["lease_seconds"] == 2
    for trial in [*run["kills"], *run["pauses"]]:
        assert 0 < trial["seconds"] < run["lease_seconds"] + 10
    assert run["pauses"][0]["exit_seconds"] is not None
    assert run["samples"] > 0
    assert 1 <= run["most_running"] <= 2
    assert 1 <= run["most_held"] <= 2
    schemas = [creation["schema"] for creation in replicas["creation"].values()]
    assert left_on_postgres([*schemas, run["schema"]]) == []


def left_on_postgres(schemas: list[str]) -> list[str]:
    """Which of a run's schemas still exist on the server."""
    engine = admin_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%(names)s)",
                {"names": schemas},
            )
            return sorted(row[0] for row in rows)
    finally:
        engine.dispose()
