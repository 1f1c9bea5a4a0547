"""Dispatch gaps, slot utilisation and overlap, rebuilt from the recorded task timings."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from bench.database import Run

# Event kinds, in the order they are applied at one instant: a slot freed at
# the very moment another task starts was free for it.
_FINISH, _START = 0, 1


@dataclass
class Dispatch:
    """How quickly a freed slot took the next task, and how busy the slots were."""

    gaps: list[float]
    gap_starts: list[float]
    utilisation: float
    unmatched_starts: int


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (`share` from 0 to 100) of `values`; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share / 100 * len(ordered)))
    return ordered[rank - 1]


def _events(runs: Sequence[Run]) -> list[tuple[float, int, Run]]:
    """Starts and finishes in time order, finishes first at equal times."""
    events = [(run.started, _START, run) for run in runs]
    events += [(run.finished, _FINISH, run) for run in runs]
    events.sort(key=lambda event: (event[0], event[1], event[2].task_id))
    return events


def dispatch(runs: Sequence[Run], slots: int = 2) -> Dispatch:
    """For each start, the seconds since the slot it took was freed; and the utilisation.

    Freed slots form a FIFO: a start takes the slot freed longest ago. The
    first `slots` starts take the initially free slots and have no gap. A
    task created after its slot was freed is measured from its creation, so
    that a moment with nothing to run is not counted against dispatch.
    """
    free: deque[float] = deque()
    never_used = slots
    gaps: list[float] = []
    starts: list[float] = []
    unmatched = 0
    for moment, kind, run in _events(runs):
        if kind == _FINISH:
            free.append(moment)
        elif never_used:
            never_used -= 1
        elif free:
            gaps.append(moment - max(free.popleft(), run.created))
            starts.append(moment)
        else:
            unmatched += 1  # more tasks running than slots: the limit check reports it
    return Dispatch(gaps, starts, all_busy_share(runs, slots), unmatched)


def all_busy_share(runs: Sequence[Run], slots: int = 2) -> float:
    """Share of the time from the first start to the last start with every slot busy."""
    if len(runs) < 2:
        return math.nan
    first = min(run.started for run in runs)
    last = max(run.started for run in runs)
    if last <= first:
        return math.nan
    busy = 0.0
    running = 0
    previous = first
    for moment, kind, _run in _events(runs):
        clipped = min(max(moment, first), last)
        if running >= slots:
            busy += clipped - previous
        previous = clipped
        running += 1 if kind == _START else -1
    return busy / (last - first)


def max_overlap(runs: Sequence[Run]) -> int:
    """The most [started, finished] intervals that share one instant."""
    running = peak = 0
    for _moment, kind, _run in _events(runs):
        running += 1 if kind == _START else -1
        peak = max(peak, running)
    return peak
