"""The benchmark's temporary directory: its databases, servers and their logs."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import database
from bench.server import SERVICE_APP, Server

# Where a temporary directory goes when the default one is in memory: the
# databases must be on disk for the fsync of each commit to cost what it costs.
DISK_FALLBACK = Path("/var/tmp")  # noqa: S108 - a fallback, chosen only when /tmp is tmpfs


class BenchError(RuntimeError):
    """The benchmark cannot go on, or found the service breaking a rule."""


@dataclass(frozen=True)
class Settings:
    """The sizes and durations of one benchmark run."""

    seconds: float
    rows: int
    backlog: int
    dispatch_tasks: int
    queued: int
    starts: int
    messages: int
    failovers: int
    small_rows: int = 1_000
    # Failover is measured at the service's default lease and at the shortest it allows (s).
    leases: tuple[float, ...] = (5.0, 2.0)


@dataclass
class Workspace:
    """A temporary directory holding every database and server log of one run."""

    root: Path
    settings: Settings
    _template: Path | None = None
    _logs: dict[str, int] = field(default_factory=dict)

    def database_path(self, name: str) -> Path:
        """Where the database called `name` lives (it may not exist yet)."""
        return self.root / f"{name}.sqlite3"

    def template(self) -> Path:
        """An empty database migrated by the service itself, to be copied."""
        if self._template is None:
            path = self.database_path("template")
            database.migrate(path, self.log_path("template"))
            self._template = path
        return self._template

    def database(self, name: str, rows: int = 0, *, queued: bool = False) -> Path:
        """A fresh database called `name` with `rows` tasks (all queued, or the realistic mix)."""
        path = database.copy_database(self.template(), self.database_path(name))
        if rows:
            database.fill(path, rows, queued=queued)
        return path

    def log_path(self, name: str) -> Path:
        """A new log file for a server called `name`."""
        count = self._logs[name] = self._logs.get(name, 0) + 1
        return self.root / f"{name}-{count}.log"

    @contextmanager
    def server(
        self,
        name: str,
        database_path: Path | None,
        app: str = SERVICE_APP,
        env: Mapping[str, str] | None = None,
    ) -> Iterator[Server]:
        """A server of `app` on `database_path` with `env` added, stopped when the block ends."""
        server = Server(app, database_path, self.log_path(name), env)
        try:
            yield server.start("/health" if app == SERVICE_APP else "/ceiling")
        finally:
            server.stop()


def filesystem_type(path: Path) -> str:
    """The type of the file system that holds `path` (ext4, tmpfs, ...), from /proc/mounts."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, fields[2]
    return kind


def disk_temp_parent(requested: Path | None) -> Path:
    """A directory on disk for the run's temporary directory."""
    if requested is not None:
        if filesystem_type(requested) == "tmpfs":
            raise BenchError(f"{requested} is on tmpfs; the databases must be on disk")
        return requested
    default = Path(tempfile.gettempdir())
    if filesystem_type(default) != "tmpfs":
        return default
    if filesystem_type(DISK_FALLBACK) != "tmpfs":
        return DISK_FALLBACK
    raise BenchError("the temporary directories are on tmpfs; pass --tmpdir on a disk")


@contextmanager
def workspace(settings: Settings, parent: Path | None = None) -> Iterator[Workspace]:
    """A workspace in a new temporary directory on disk, removed at the end."""
    with tempfile.TemporaryDirectory(
        prefix="taskservice-bench-", dir=disk_temp_parent(parent)
    ) as root:
        yield Workspace(Path(root), settings)
