"""Memory and start-up time of the worker with large queues loaded at start."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench import database
from bench.server import Server
from bench.workspace import Workspace

# Requests sent after start-up, before RSS is read, so that the figure
# includes what serving costs, not only what importing and recovering cost.
WARM_UP_PATHS = ("/health", "/tasks?page=1", "/tasks/1", "/tasks?status=In%20Queue&page=2")
WARM_UP_ROUNDS = 5


@dataclass
class ScalePoint:
    """The worker's size and start-up time with `queued` tasks waiting at start."""

    queued: int
    loaded: list[int | None]
    rss_bytes: list[int]
    startup_seconds: list[float]

    @property
    def rss_median(self) -> float:
        """The median RSS over the starts."""
        return statistics.median(self.rss_bytes)

    @property
    def startup_median(self) -> float:
        """The median start-up time over the starts."""
        return statistics.median(self.startup_seconds)


def queue_sizes(queued: int) -> tuple[int, int, int]:
    """None, a tenth of, and all of `queued` tasks."""
    return 0, queued // 10, queued


def measure_scale(workspace: Workspace) -> list[ScalePoint]:
    """Start the service on databases of 0, queued/10 and queued waiting tasks."""
    return [measure_start(workspace, size) for size in queue_sizes(workspace.settings.queued)]


def measure_start(workspace: Workspace, queued: int) -> ScalePoint:
    """Start-up time, tasks loaded and RSS, once per start, each on a fresh copy."""
    pristine = workspace.database(f"queued-{queued}", queued, queued=True)
    point = ScalePoint(queued, [], [], [])
    for start in range(workspace.settings.starts):
        copy = workspace.database_path(f"queued-{queued}-start-{start}")
        path = database.copy_database(pristine, copy)
        with workspace.server(f"queued-{queued}", path) as server:
            warm_up(server)
            point.loaded.append(server.queued_loaded())
            point.rss_bytes.append(server.worker_rss_bytes())
            point.startup_seconds.append(server.startup_seconds)
    return point


def warm_up(server: Server) -> None:
    """A few ordinary requests."""
    for _ in range(WARM_UP_ROUNDS):
        for path in WARM_UP_PATHS:
            server.request("GET", path)
