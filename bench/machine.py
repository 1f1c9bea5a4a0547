"""What the figures were measured on: hardware, versions, settings, date and commit."""

from __future__ import annotations

import os
import platform
import runpy
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.analysis import percentile
from bench.load import wrk_version
from bench.server import ROOT
from bench.workspace import filesystem_type

REPORT_FILE = "docs/benchmarks.md"
# The service's settings pass from the environment to the server, as with
# `make run`; those set are shown in the report, since they change the figures.
# Not the test suite's variables: a database URL may hold a password. Nor the
# broker's, which the servers do not inherit (bench/server.py): a URL may hold one too.
SETTING_PREFIXES = ("TASKSERVICE_", "GUNICORN_", "LOG_LEVEL")
NOT_SETTINGS = ("TASKSERVICE_TEST_", "TASKSERVICE_REQUIRE_", "TASKSERVICE_AMQP_")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gunicorn_threads() -> str:
    """The request threads gunicorn.conf.py gives the worker in this environment."""
    # Read from the file itself, so that its default and its checks apply.
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return str(settings["threads"])


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    done = subprocess.run(  # noqa: S603 - our own fixed command
        [git, *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def commit() -> str:
    """The short commit hash, with "+dirty" if the tree has uncommitted changes."""
    short = _git("rev-parse", "--short", "HEAD") or "unknown"
    # The report this run rewrites does not change what is measured.
    changes = _git("status", "--porcelain", "--", ".", f":(exclude){REPORT_FILE}")
    return f"{short}+dirty" if changes else short


def environment() -> str:
    """The service's settings taken from the environment, or a note that all are defaults."""
    chosen = [
        f"{name}={value}"
        for name, value in sorted(os.environ.items())
        if name.startswith(SETTING_PREFIXES) and not name.startswith(NOT_SETTINGS)
    ]
    return ", ".join(chosen) if chosen else "the service's defaults (no setting in the environment)"


def fsync_latency(directory: Path, seconds: float) -> str:
    """Percentiles of 4 KiB write + fsync on `directory`'s disk: every commit waits for one."""
    path = directory / "fsync-probe"
    latencies: list[float] = []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            os.write(descriptor, bytes(4096))
            began = time.perf_counter()
            os.fsync(descriptor)
            latencies.append((time.perf_counter() - began) * 1000)
    finally:
        os.close(descriptor)
        path.unlink()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return (
        f"fsync of 4 KiB, {len(latencies):,} times in {seconds:g} s: p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms, max {max(latencies):.1f} ms"
    )


def describe(temp_dir: Path, fsync_seconds: float, broker: str, postgres: str) -> dict[str, str]:
    """The machine and software the run measures, as label: value."""
    return {
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "gunicorn": f"{metadata.version('gunicorn')}, 1 worker, "
        f"{gunicorn_threads()} threads (gthread)",
        "load generator": f"{wrk_version()}, 1 thread",
        "environment": environment(),
        "database": f"SQLite file in a temporary directory on {filesystem_type(temp_dir)}",
        "PostgreSQL (replicas)": postgres,
        "broker": broker,
        "disk": fsync_latency(temp_dir, fsync_seconds),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
    }
