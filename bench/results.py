"""Everything one benchmark run measured, and its raw form as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.broker_scenarios import BrokerResult
from bench.http_scenarios import Listing
from bench.load import Load
from bench.pool_scenarios import SLOTS, DispatchResult, LimitResult
from bench.replica_scenarios import ReplicaResult
from bench.scale_scenarios import ScalePoint
from bench.workspace import Settings


@dataclass
class Results:
    """The figures of one run, with the machine and the settings they came from."""

    settings: Settings
    machine: dict[str, str]
    ceiling: dict[int, Load]
    creation: dict[int, Load]
    reads: dict[int, Load]
    reads_loaded: int | None
    listings: list[Listing]
    dispatch: DispatchResult
    limit: LimitResult
    scale: list[ScalePoint]
    # CPU time of processes outside the benchmark, as a share of one core.
    other_cpu_share: float = 0.0
    # The RabbitMQ figures, or why there are none (no broker answered).
    broker: BrokerResult | None = None
    broker_skipped: str | None = None
    # The PostgreSQL replicas' figures, or why there are none (no server answered).
    replicas: ReplicaResult | None = None
    replicas_skipped: str | None = None

    @property
    def small(self) -> Listing:
        """The listing on the small database."""
        return min(self.listings, key=lambda listing: listing.rows)

    @property
    def large(self) -> Listing:
        """The listing on the large database."""
        return max(self.listings, key=lambda listing: listing.rows)

    def replicas_most_running(self) -> int:
        """The most tasks in Run, or slots held, seen at once across replicas (0: not measured)."""
        if self.replicas is None:
            return 0
        return max(
            (max(run.most_running, run.most_held) for run in self.replicas.failovers), default=0
        )

    def limit_exceeded(self) -> bool:
        """Whether more than two tasks were ever seen running at once, on SQLite or PostgreSQL."""
        sqlite = max(self.limit.most_running_sampled, self.limit.max_overlap)
        return max(sqlite, self.replicas_most_running()) > SLOTS


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data; loads also get their rate, NaN becomes null."""
    if isinstance(value, Load):
        return {**_plain(dataclasses.asdict(value)), "rate": value.rate}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_json(results: Results, path: Path) -> None:
    """Write every figure of `results`, raw gaps included, to `path`."""
    path.write_text(json.dumps(_plain(results), indent=2) + "\n")
