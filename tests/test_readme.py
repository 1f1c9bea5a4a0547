"""The README's examples, run as a reader would run them, against a real gunicorn."""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.server import ROOT, Server

README = ROOT / "README.md"
# What the README's examples talk to: `make run`'s address.
README_BASE = "http://127.0.0.1:8000"

# Every curl of the examples must succeed: an answer of 4xx or 5xx ends the script.
STRICT_CURL = 'curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'


def readme_examples() -> str:
    """The shell block that the README says works in order on a fresh service."""
    text = README.read_text()
    after = text.split("These work in order on a service just started with `make run`:", 1)[1]
    match = re.match(r"\s*```sh\n(.*?)```", after, re.DOTALL)
    assert match, "the README's examples are not a sh block right after their heading"
    return match.group(1)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    # Real time: the examples' tasks of a minute must still be running or queued.
    server = Server(
        f"sqlite:///{tmp_path / 'tasks.sqlite3'}",
        tmp_path / "gunicorn.log",
        TASKSERVICE_TIME_SCALE="1",
    )
    try:
        server.start().wait_healthy()
        yield server
    finally:
        server.kill(signal.SIGTERM)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the examples need curl")
def test_the_readme_examples_work_in_order_on_a_fresh_service(fresh_server: Server):
    script = readme_examples().replace(README_BASE, fresh_server.base)
    assert fresh_server.base in script

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", STRICT_CURL + script + 'echo "cancelled $id"\n'],
        # The examples' `python3` is the Python that runs the tests.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    cancelled = int(result.stdout.strip().splitlines()[-1].removeprefix("cancelled "))
    status, task = fresh_server.request("GET", f"/tasks/{cancelled}")
    assert status == 200
    assert task["status"] == "Cancelled"
    assert task["name"] == "long one"
    assert '"status":"In Queue"' in result.stdout  # GET /tasks/$id, before the cancel


def readme_pika_example() -> str:
    """The Python block that the README says publishes a task and waits for its answer."""
    text = README.read_text()
    after = text.split("This publishes a task and waits for its answer:", 1)[1]
    match = re.match(r"\s*```python\n(.*?)```", after, re.DOTALL)
    assert match, "the README's pika example is not a python block right after its heading"
    return match.group(1)


def test_the_readme_pika_example_creates_a_task(
    tmp_path: Path, amqp_url: str, amqp_prefix: str
) -> None:
    example = readme_pika_example()
    assert '"amqp://guest:guest@127.0.0.1:5672/%2F"' in example
    script = example.replace('"amqp://guest:guest@127.0.0.1:5672/%2F"', repr(amqp_url)).replace(
        '"taskservice.tasks.create"', repr(f"{amqp_prefix}.tasks.create")
    )
    server = Server(
        f"sqlite:///{tmp_path / 'tasks.sqlite3'}",
        tmp_path / "gunicorn.log",
        TASKSERVICE_AMQP_URL=amqp_url,
        TASKSERVICE_AMQP_PREFIX=amqp_prefix,
    )
    try:
        server.start().wait_healthy()
        wait_for(lambda: server.request("GET", "/health")[1]["broker"]["state"] == "connected")
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        server.kill(signal.SIGTERM)

    assert result.returncode == 0, result.stdout + result.stderr
    correlation_id, answer = result.stdout.strip().split(" ", 1)
    assert correlation_id == "ask-1"
    task = ast.literal_eval(answer)  # the example prints the decoded JSON as a dict
    assert task["name"] == "from RabbitMQ"
    assert task["source"] == "amqp"
    assert task["priority"] == "high"
