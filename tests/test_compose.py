"""docker-compose.yml: what compose reads from it, and each service's command run by hand.

No Docker engine is needed: the worker's and the API's container command runs as a local
process with the file's environment, pointed at the tests' PostgreSQL and RabbitMQ, and the
healthchecks run as compose would run them inside the containers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from taskservice.config import load_config
from tests.amqp import broker_address
from tests.helpers import wait_for
from tests.server import ROOT, Server, free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# The services built from this repository; the other two are official images.
OURS = ("worker", "api")
CONTAINER_PORT = "8000"
LOOPBACK = ("127.0.0.1", "localhost")
# The test's tasks: 5 "seconds" at this scale take 50 ms.
TIME_SCALE = "0.01"


def services() -> dict[str, dict[str, Any]]:
    """The compose file's services, anchors and merge keys resolved as compose resolves them."""
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of compose's two forms."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    # Unquoted, `false` or `8000` would reach compose as YAML's bool or int, not a string.
    assert all(isinstance(value, str) for value in env.values()), env
    return dict(env)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (NAME, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(name.upper(), arguments) for name, arguments in pairs]


def dockerfile_cmd() -> list[str]:
    """The Dockerfile's CMD, in its exec form."""
    (cmd,) = [arguments for name, arguments in dockerfile_instructions() if name == "CMD"]
    command: list[str] = json.loads(cmd)
    return command


def dockerfile_healthcheck() -> dict[str, Any]:
    """The Dockerfile's HEALTHCHECK as compose spells one: test, interval, timeout, ..."""
    (check,) = [arguments for name, arguments in dockerfile_instructions() if name == "HEALTHCHECK"]
    options, command = check.split(" CMD ", 1)
    healthcheck: dict[str, Any] = {"test": ["CMD", *json.loads(command)]}
    for option in options.split():
        key, value = option.removeprefix("--").split("=", 1)
        healthcheck[key.replace("-", "_")] = int(value) if value.isdigit() else value
    return healthcheck


def container_command(service: dict[str, Any]) -> list[str]:
    """What the service's container runs: its `command`, or else the image's CMD."""
    assert "entrypoint" not in service, "the image has no ENTRYPOINT; keep it so"
    command = service.get("command", dockerfile_cmd())
    return shlex.split(command) if isinstance(command, str) else list(command)


def seconds(duration: str) -> float:
    """A compose duration ("3s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def run_healthcheck(
    service: dict[str, Any], env: dict[str, str], port: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the service's healthcheck as compose does, within its timeout."""
    healthcheck = service["healthcheck"]
    test = healthcheck["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, *arguments = test
    assert kind in ("CMD", "CMD-SHELL"), test
    if kind == "CMD-SHELL":
        arguments = ["/bin/sh", "-c", *arguments]
    if port is not None:  # a check that names the container's port asks this process's instead
        arguments = [arg.replace(f":{CONTAINER_PORT}/", f":{port}/") for arg in arguments]
    return subprocess.run(
        arguments,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(healthcheck.get("timeout", "30s")),
        check=False,
    )


def tool_path() -> str:
    """PATH with this venv first: the container's `python` and `gunicorn` are these here."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


# What compose reads.


def test_the_deployment_is_postgres_rabbitmq_a_worker_and_an_api():
    assert set(services()) == {"postgres", "rabbitmq", "worker", "api"}


@pytest.mark.parametrize("name", ["postgres", "rabbitmq", "worker", "api"])
def test_every_service_has_a_healthcheck_and_comes_back(name: str):
    service = services()[name]

    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert seconds(service["healthcheck"]["timeout"]) > 0
    assert service["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", OURS)
def test_our_services_start_once_postgres_and_rabbitmq_are_healthy(name: str):
    assert services()[name]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
    }


@pytest.mark.parametrize(("name", "published"), [("worker", "8001"), ("api", "8000")])
def test_our_services_run_the_image_built_here(name: str, published: str):
    service = services()[name]

    assert service["build"] in (".", {"context": "."})
    assert "image" not in service
    assert service["ports"] == [f"{published}:{CONTAINER_PORT}"]
    assert ("EXPOSE", CONTAINER_PORT) in dockerfile_instructions()
    # gunicorn with the project's settings: they bind HOST:PORT and check the environment.
    command = container_command(service)
    assert command[0] == "gunicorn"
    assert "-c gunicorn.conf.py" in " ".join(command)
    assert command == dockerfile_cmd()
    assert service["healthcheck"] == dockerfile_healthcheck()


@pytest.mark.parametrize("name", OURS)
def test_our_services_settings_pass_the_services_own_check(name: str, tmp_path: Path):
    env = environment(services()[name])
    postgres = environment(services()["postgres"])

    config = load_config(env, instance_path=str(tmp_path))

    url = make_url(config["DATABASE_URL"])
    assert url.get_dialect().driver == "psycopg"  # loads it: installed by requirements.txt
    assert (url.host, url.port, url.username) == ("postgres", 5432, "postgres")
    assert url.password == postgres["POSTGRES_PASSWORD"]
    broker = pika.URLParameters(config["TASKSERVICE_AMQP_URL"])
    assert (broker.host, broker.port, broker.virtual_host) == ("rabbitmq", 5672, "/")


def test_only_the_api_runs_no_tasks(tmp_path: Path):
    api, worker = environment(services()["api"]), environment(services()["worker"])

    assert api["TASKSERVICE_RUN_TASKS"] == "false"
    assert "TASKSERVICE_RUN_TASKS" not in worker
    assert load_config(api, str(tmp_path))["TASKSERVICE_RUN_TASKS"] is False
    assert load_config(worker, str(tmp_path))["TASKSERVICE_RUN_TASKS"] is True
    # Otherwise the two replicas say the same.
    assert {key: value for key, value in api.items() if key != "TASKSERVICE_RUN_TASKS"} == worker


def test_postgres_and_rabbitmq_are_the_official_images_with_a_kept_database():
    postgres, rabbitmq = services()["postgres"], services()["rabbitmq"]

    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-alpine)?", postgres["image"])
    assert environment(postgres)["POSTGRES_PASSWORD"]
    (volume,) = postgres["volumes"]
    name, mount = volume.split(":")
    assert mount == "/var/lib/postgresql/data"
    assert name in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]  # named, not a host path
    version = re.fullmatch(r"rabbitmq:(\d+)\.(\d+)(-alpine)?", rabbitmq["image"])
    assert version
    assert (int(version[1]), int(version[2])) >= (3, 10)


def test_compose_itself_accepts_the_file():
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], check=False).returncode:
        pytest.skip("docker compose is not installed")
    # `config` reads and validates the file; it needs no engine.
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# Each service's command, run by hand.


class Replica(Server):
    """A service's container command as a local process: the compose file's environment,
    with the tests' database and broker, on loopback."""

    def __init__(self, name: str, database_url: str, amqp_url: str, amqp_prefix: str, log: Path):
        super().__init__(database_url, log)
        self.service = services()[name]
        self.command = container_command(self.service)
        env = environment(self.service)
        # The tests' schema, through the driver the compose file names.
        driver = make_url(env["DATABASE_URL"]).drivername
        database_url = make_url(database_url).set(drivername=driver).render_as_string(False)
        # The container's environment, not the test's: nothing else leaks in.
        self.env = {
            "PATH": tool_path(),
            **env,
            "DATABASE_URL": database_url,
            "TASKSERVICE_AMQP_URL": amqp_url,
            # The test's own queues and exchange, deleted after it.
            "TASKSERVICE_AMQP_PREFIX": amqp_prefix,
            "TASKSERVICE_TIME_SCALE": TIME_SCALE,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }

    def start(self) -> Replica:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,  # the image's WORKDIR holds what the repository's root does
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        return run_healthcheck(self.service, self.env, self.port)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)


@pytest.fixture
def replicas(
    amqp_prefix: str, amqp_url: str, postgres_url: str, tmp_path: Path
) -> Iterator[dict[str, Replica]]:
    """The worker and the API on one fresh schema, not started; stopped at the end."""
    # amqp_prefix first: its topology is deleted after the replicas have stopped.
    started = {
        name: Replica(name, postgres_url, amqp_url, amqp_prefix, tmp_path / f"{name}.log")
        for name in OURS
    }
    try:
        yield started
    finally:
        for replica in started.values():
            replica.stop()


def test_the_api_replica_takes_tasks_and_the_worker_runs_them(replicas: dict[str, Replica]):
    api, worker = replicas["api"], replicas["worker"]
    assert api.healthcheck().returncode != 0, "the check passes with nothing listening"

    # As compose starts them: both at once, once the database and the broker are healthy.
    for replica in (worker, api):
        replica.start()
    for replica in (worker, api):
        replica.wait_healthy(timeout=60)
        check = replica.healthcheck()
        assert check.returncode == 0, check.stderr + replica.log()
    wait_for(lambda: worker.request("GET", "/health")[1]["broker"]["state"] == "connected", 30)
    # Only the worker has task threads.
    assert api.request("GET", "/health")[1]["workers_expected"] == 0
    assert worker.request("GET", "/health")[1]["workers_alive"] > 0

    status, task = api.request("POST", "/tasks", {"name": "through compose", "duration": 5})

    assert status == 201, task
    assert task["status"] == "In Queue"

    def completed() -> dict[str, Any] | None:
        answer = api.request("GET", f"/tasks/{task['id']}")[1]
        return answer if answer["status"] in ("Completed", "Failed") else None

    assert wait_for(completed, timeout=30, interval=0.05)["status"] == "Completed"
    assert worker.request("GET", f"/tasks/{task['id']}")[1]["status"] == "Completed"
    assert f"task {task['id']} completed" in worker.log()
    assert f"task {task['id']} completed" not in api.log()


# The official images' healthchecks, against the tests' servers where their tools exist.


def tool_of(name: str) -> str:
    """The program a service's healthcheck runs, or a skip where it is not installed."""
    program = services()[name]["healthcheck"]["test"][1]
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed, so the {name} healthcheck cannot run here")
    return str(program)


def test_the_postgres_healthcheck_passes_on_a_ready_server(postgres_admin: Engine):
    tool_of("postgres")
    url = postgres_admin.url
    if url.host not in LOOPBACK:
        pytest.skip(f"the tests' PostgreSQL is at {url.host}, and the check asks 127.0.0.1")
    postgres = services()["postgres"]
    env = {**os.environ, "PGPORT": str(url.port or 5432)}

    check = run_healthcheck(postgres, env)

    assert check.returncode == 0, check.stdout + check.stderr
    nobody = run_healthcheck(postgres, {**env, "PGPORT": str(free_port())})
    assert nobody.returncode != 0, "the check passes with no server listening"


def test_the_rabbitmq_healthcheck_passes_on_a_ready_broker(amqp_url: str):
    tool_of("rabbitmq")
    host, _port = broker_address()
    if host not in LOOPBACK:
        pytest.skip(f"the tests' RabbitMQ is at {host}; its check asks the local node")

    # The host's environment: the CLI finds the node's Erlang cookie through HOME.
    check = run_healthcheck(services()["rabbitmq"], dict(os.environ))

    assert check.returncode == 0, check.stdout + check.stderr
