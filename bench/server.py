"""A gunicorn process started as `make run` starts it, and what the benchmark reads from it."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICE_APP = "wsgi:app"
CEILING_APP = "bench.ceiling:app"

START_TIMEOUT = 60.0
# gunicorn's graceful_timeout is 10 s; past this, the process group is killed.
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOADED_LINE = re.compile(r"(\d+) queued task\(s\) loaded from the database")
# The broker scenarios set these themselves; inherited, they would give every
# other server a broker, and "without a broker" would not be.
BROKER_SETTINGS = ("TASKSERVICE_AMQP_URL", "TASKSERVICE_AMQP_PREFIX")


class ServerError(RuntimeError):
    """gunicorn did not start, or stopped answering."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gunicorn_command(app: str) -> list[str]:
    """The command of `make run` (the venv's gunicorn script), for `app`."""
    script = Path(sys.executable).parent / "gunicorn"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    return [*launcher, "-c", "gunicorn.conf.py", app]


def wait_until(condition: Any, timeout: float, what: str, interval: float = POLL_INTERVAL) -> Any:
    """Poll `condition()` until it is truthy and return it; ServerError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ServerError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


class Server:
    """One gunicorn master (in its own process group) and its single worker."""

    def __init__(
        self,
        app: str,
        database: Path | None,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.app = app
        self.port = free_port()
        self.log_path = log_path
        # The user's environment (GUNICORN_THREADS, LOG_LEVEL, ...) is kept, but
        # for the broker's settings; `env` adds a scenario's own on top.
        kept = {name: value for name, value in os.environ.items() if name not in BROKER_SETTINGS}
        self.env = {**kept, **(env or {}), "HOST": "127.0.0.1", "PORT": str(self.port)}
        if database is not None:
            self.env["DATABASE_URL"] = f"sqlite:///{database}"
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.startup_seconds = 0.0
        self._worker_pid: int | None = None

    def start(self, health_path: str = "/health") -> Server:
        """Spawn gunicorn and wait until `health_path` answers 200."""
        return self.spawn().wait_started(health_path)

    def spawn(self) -> Server:
        """Start gunicorn without waiting for it: several servers may then boot together."""
        with self.log_path.open("ab") as log:
            self.spawned_at = time.monotonic()
            self.process = subprocess.Popen(  # noqa: S603 - our own fixed command
                gunicorn_command(self.app),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_started(self, health_path: str = "/health") -> Server:
        """Wait until `health_path` of the spawned server answers 200."""
        wait_until(lambda: self._answers(health_path), START_TIMEOUT, f"{self.app} start")
        self.startup_seconds = time.monotonic() - self.spawned_at
        return self

    @property
    def _process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise ServerError(f"{self.app} is not started")
        return self.process

    def _answers(self, path: str) -> bool:
        if self._process.poll() is not None:
            raise ServerError(
                f"gunicorn exited with {self._process.returncode}:\n{self.log_tail()}"
            )
        try:
            return self.request("GET", path)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM the master, then SIGKILL the whole group if it is still there later."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        """The server's URL."""
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """One HTTP request on a fresh connection; the status and the decoded JSON."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {} if body is None else {"Content-Type": "application/json"}
            payload = None if body is None else json.dumps(body)
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            connection.close()

    @property
    def worker_pid(self) -> int:
        """The pid of gunicorn's one worker: the master's child."""
        if self._worker_pid is None:
            master = self._process.pid
            self._worker_pid = wait_until(lambda: _child_of(master), START_TIMEOUT, "the worker")
        return int(self._worker_pid)

    def worker_cpu_seconds(self) -> float:
        """User plus system CPU time the worker has used so far."""
        return process_cpu_seconds(self.worker_pid)

    def worker_rss_bytes(self) -> int:
        """The worker's resident set size (VmRSS)."""
        for line in Path(f"/proc/{self.worker_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for process {self.worker_pid}")

    def queued_loaded(self) -> int | None:
        """The count in the service's log line "N queued task(s) loaded from the database"."""
        found = LOADED_LINE.findall(self.log_path.read_text(errors="replace"))
        return int(found[-1]) if found else None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _child_of(parent: int) -> int | None:
    """The pid of a process whose parent is `parent`, if there is one."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == parent:
            return int(stat.parent.name)
    return None
