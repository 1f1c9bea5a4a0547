"""Running wrk with one of the Lua scripts in bench/lua and reading its JSON line."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.server import CLOCK_TICKS, Server

LUA_DIR = Path(__file__).resolve().parent / "lua"
JSON_PREFIX = "BENCH_JSON "
# A request slower than wrk's --timeout is counted as a timeout and left out
# of the latency figures, so it is set far above any latency we expect.
REQUEST_TIMEOUT = "10s"
INSTALL_HINT = "wrk not found; install it with: apt-get install wrk"


class LoadError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


@dataclass
class Load:
    """What one wrk run measured, and the CPU time it and the server used meanwhile."""

    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    wrk_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0
    # CPU time of every other process on the machine meanwhile: on a small,
    # shared machine it tells a quiet run from a disturbed one.
    other_cpu_seconds: float = 0.0
    ceiling_rate: float | None = field(default=None)

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def count_other_than(self, status: int) -> int:
        """How many answers had another HTTP status than `status`."""
        return sum(count for code, count in self.statuses.items() if code != str(status))

    @property
    def socket_error_count(self) -> int:
        """Connect, read and write errors and timeouts: requests that got no answer."""
        return sum(self.socket_errors.values())

    @property
    def of_ceiling(self) -> float | None:
        """Throughput as a share of the ceiling app's at the same client count."""
        return self.rate / self.ceiling_rate if self.ceiling_rate else None


def wrk_path() -> str:
    """The wrk executable; LoadError with how to install it if there is none."""
    path = shutil.which("wrk")
    if path is None:
        raise LoadError(INSTALL_HINT)
    return path


def wrk_version() -> str:
    """wrk's version line, e.g. "wrk debian/4.1.0-3+b2 [epoll]"."""
    # `wrk -v` prints the version and its usage, and exits with status 1.
    done = subprocess.run(  # noqa: S603 - our own fixed command
        [wrk_path(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout.splitlines()[0].split(" Copyright")[0].strip()


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds used so far by wrk, the harness, the server worker and the whole machine."""

    wrk: float
    harness: float
    server: float
    machine: float

    @classmethod
    def now(cls, server: Server) -> CpuTimes:
        """The times at this moment; wrk's count once it has been waited for."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        harness = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wrk=children.ru_utime + children.ru_stime,
            harness=harness.ru_utime + harness.ru_stime,
            server=server.worker_cpu_seconds(),
            machine=machine_busy_seconds(),
        )


def machine_busy_seconds() -> float:
    """CPU time all processors have spent busy since boot (not idle, not waiting on I/O)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time is inside user.
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (wrk, stopped servers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def wrk_command(
    server: Server,
    script: str,
    *,
    clients: int,
    seconds: float,
    path: str = "/",
    args: tuple[str, ...] = (),
) -> list[str]:
    """The wrk command line that loads `server` with bench/lua/`script` (run in LUA_DIR)."""
    # One wrk thread: on a 2-core machine a second would take CPU from the server.
    command = [wrk_path(), "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s"]
    command += [f"--timeout={REQUEST_TIMEOUT}", f"--script={script}", server.base + path]
    return [*command, "--", *args]


def run_wrk(
    server: Server,
    script: str,
    *,
    clients: int,
    seconds: float,
    path: str = "/",
    args: tuple[str, ...] = (),
) -> Load:
    """Load `server` with bench/lua/`script` from `clients` keep-alive connections."""
    command = wrk_command(server, script, clients=clients, seconds=seconds, path=path, args=args)
    before = CpuTimes.now(server)
    try:
        # cwd: the scripts `require "common"` from their own directory.
        done = subprocess.run(  # noqa: S603 - our own command line
            command, cwd=LUA_DIR, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired:
        raise LoadError(f"wrk did not end within {seconds + 60:g} s: {' '.join(command)}") from None
    after = CpuTimes.now(server)
    load = parse_wrk(done, clients)
    load.wrk_cpu_seconds = after.wrk - before.wrk
    load.server_cpu_seconds = after.server - before.server
    load.other_cpu_seconds = (after.machine - before.machine) - sum(
        (after.wrk - before.wrk, after.server - before.server, after.harness - before.harness)
    )
    return load


def parse_wrk(done: subprocess.CompletedProcess[str], clients: int) -> Load:
    """The Load in the JSON line that bench/lua/common.lua prints."""
    lines = [line for line in done.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    if done.returncode != 0 or not lines:
        raise LoadError(
            f"wrk failed ({done.returncode}): {' '.join(done.args)}\n{done.stdout}{done.stderr}"
        )
    raw = json.loads(lines[-1].removeprefix(JSON_PREFIX))
    return Load(
        clients=clients,
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        statuses=raw["statuses"],
        socket_errors=raw["socket_errors"],
    )
