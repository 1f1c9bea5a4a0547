"""The write turn: one writer at a time, the pool's writes first, nobody starved."""

from __future__ import annotations

import threading
import time

from taskservice.writeturn import WriteTurn
from tests.helpers import wait_for


def waiters(turn: WriteTurn) -> int:
    """How many threads wait for the turn (CPython's Condition keeps them in _waiters)."""
    return len(turn._changed._waiters)  # type: ignore[attr-defined]


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)


def take_in_order(
    turn: WriteTurn, holder_urgent: bool, waiting: list[tuple[str, bool]]
) -> list[str]:
    """Who gets the turn, in order, among writers that queued (in this order) behind a holder."""
    order: list[str] = []

    def write(name: str, urgent: bool) -> None:
        with turn.take(urgent):
            order.append(name)

    threads = [threading.Thread(target=write, args=writer) for writer in waiting]
    with turn.take(holder_urgent):
        for count, thread in enumerate(threads, start=1):
            thread.start()
            wait_for(lambda count=count: waiters(turn) == count)
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
    return order


def test_an_urgent_writer_goes_before_others_waiting():
    order = take_in_order(WriteTurn(), False, [("request", False), ("worker", True)])

    assert order == ["worker", "request"]


def test_after_an_urgent_turn_a_waiting_writer_goes_next():
    """Two workers taking turns back to back cannot hold off a create."""
    order = take_in_order(WriteTurn(), True, [("request", False), ("worker", True)])

    assert order == ["request", "worker"]


def test_busy_urgent_writers_do_not_starve_the_others():
    turn = WriteTurn()
    stop = threading.Event()
    ordinary_turns = 0

    def worker() -> None:
        while not stop.is_set():
            with turn.take(urgent=True):
                time.sleep(0)  # let the others run while this one holds the turn

    def request() -> None:
        nonlocal ordinary_turns
        for _ in range(50):
            with turn.take(urgent=False):
                ordinary_turns += 1

    workers = [threading.Thread(target=worker) for _ in range(2)]
    for thread in workers:
        thread.start()
    try:
        run_all([threading.Thread(target=request)])
    finally:
        stop.set()
        for thread in workers:
            thread.join(5)

    assert ordinary_turns == 50


def test_the_write_turn_is_held_by_one_writer_at_a_time():
    turn = WriteTurn()
    holding: list[int] = []
    most = 0

    def write(urgent: bool) -> None:
        nonlocal most
        for _ in range(200):
            with turn.take(urgent):
                holding.append(1)
                time.sleep(0)  # let the other threads run while this one holds the turn
                most = max(most, len(holding))
                holding.pop()

    run_all([threading.Thread(target=write, args=(n % 2 == 0,)) for n in range(6)])

    assert most == 1
