"""Throughput and latency of the HTTP endpoints, and of the framework's ceiling."""

from __future__ import annotations

from dataclasses import dataclass

from bench import database
from bench.load import Load, run_wrk
from bench.server import CEILING_APP, Server
from bench.workspace import BenchError, Workspace

CLIENT_COUNTS = (1, 8, 32)
READ_CLIENT_COUNTS = (8, 32)
# Listing and reads by table size: alone, the cost of one request; at 8
# clients, mostly the wait for the one busy interpreter.
LISTING_CLIENT_COUNTS = (1, 8)
# OFFSET makes a deep page cost tens of milliseconds: one client shows that
# cost itself, without a queue of others in front of it.
DEEP_PAGE_CLIENTS = 1
PAGE_SIZE = 10
FIRST_PAGES = 10
# Every status filter, URL-encoded, and "-" for none (see bench/lua/list.lua).
STATUS_FILTERS = ("-", "In%20Queue", "Run", "Completed", "Failed", "Cancelled")
CREATE_DURATION = "3600"  # created tasks wait in the queue; two of them run


@dataclass
class Listing:
    """Reads on a database of `rows` tasks in the realistic mix."""

    rows: int
    database_bytes: int
    status_counts: dict[str, int]
    first_pages: dict[int, Load]
    deep_page: Load
    deep_page_number: int
    task_read: dict[int, Load]
    overview: dict[int, Load]
    overview_bars: int

    def loads(self) -> list[Load]:
        """Every wrk run on this database."""
        return [
            *self.first_pages.values(),
            self.deep_page,
            *self.task_read.values(),
            *self.overview.values(),
        ]


def with_ceiling(loads: dict[int, Load], ceiling: dict[int, Load]) -> dict[int, Load]:
    """`loads`, each given the ceiling's rate at its client count."""
    for clients, load in loads.items():
        if clients in ceiling:
            load.ceiling_rate = ceiling[clients].rate
    return loads


def measure_ceiling(workspace: Workspace) -> dict[int, Load]:
    """GET /ceiling of bench/ceiling.py under the same gunicorn settings."""
    seconds = workspace.settings.seconds
    with workspace.server("ceiling", None, app=CEILING_APP) as server:
        return {
            clients: run_wrk(server, "get.lua", clients=clients, seconds=seconds, path="/ceiling")
            for clients in CLIENT_COUNTS
        }


def measure_creation(workspace: Workspace) -> dict[int, Load]:
    """POST /tasks on a fresh database, at each client count."""
    seconds = workspace.settings.seconds
    # A path with no file yet: the service creates and migrates it itself.
    with workspace.server("create", workspace.database_path("create")) as server:
        return {clients: post_tasks(server, clients, seconds) for clients in CLIENT_COUNTS}


def post_tasks(server: Server, clients: int, seconds: float) -> Load:
    """POST /tasks of tasks that wait in the queue, from `clients` connections."""
    return run_wrk(
        server,
        "post.lua",
        clients=clients,
        seconds=seconds,
        path="/tasks",
        args=(CREATE_DURATION,),
    )


def measure_reads(workspace: Workspace) -> tuple[dict[int, Load], int | None]:
    """GET /tasks/{id} of random queued tasks; and how many the server loaded at start."""
    backlog = workspace.settings.backlog
    path = workspace.database("reads", backlog, queued=True)
    with workspace.server("reads", path) as server:
        loaded = server.queued_loaded()
        loads = {
            clients: read_tasks(server, 1, backlog, clients, workspace.settings.seconds)
            for clients in READ_CLIENT_COUNTS
        }
    return loads, loaded


def read_tasks(server: Server, first: int, last: int, clients: int, seconds: float) -> Load:
    """GET /tasks/{id} for random ids from `first` to `last`."""
    args = (str(first), str(last), str(clients))  # the client count seeds the ids
    return run_wrk(server, "task.lua", clients=clients, seconds=seconds, args=args)


def measure_listing(workspace: Workspace, rows: int) -> Listing:
    """First pages, a deep page, task reads and the dashboard's poll on `rows` tasks."""
    path = workspace.database(f"listing-{rows}", rows)
    counts = database.status_counts(path)
    deep_page = max(1, counts.get("Completed", 0) // 2 // PAGE_SIZE)
    seconds = workspace.settings.seconds
    with workspace.server(f"listing-{rows}", path) as server:
        check_page(server, deep_page)
        # First, while the last tasks of the fill are recent: the dashboard's
        # timeline then holds the tasks that finished in its three minutes.
        bars = timeline_bars(server)
        overview = {
            clients: run_wrk(server, "get.lua", clients=clients, seconds=seconds, path="/overview")
            for clients in LISTING_CLIENT_COUNTS
        }
        first_pages = {
            clients: list_pages(server, (1, FIRST_PAGES), STATUS_FILTERS, clients, seconds)
            for clients in LISTING_CLIENT_COUNTS
        }
        pages = (deep_page, deep_page)
        deep = list_pages(server, pages, ("Completed",), DEEP_PAGE_CLIENTS, seconds)
        task_read = {
            clients: read_tasks(server, 1, rows, clients, seconds)
            for clients in LISTING_CLIENT_COUNTS
        }
    size = path.stat().st_size
    return Listing(rows, size, counts, first_pages, deep, deep_page, task_read, overview, bars)


def timeline_bars(server: Server) -> int:
    """How many bars the dashboard's timeline holds now: the work behind each /overview."""
    status, body = server.request("GET", "/overview")
    if status != 200 or not isinstance(body, dict):
        raise BenchError(f"GET /overview: HTTP {status}")
    return len(body["timeline"])


def check_page(server: Server, page: int) -> None:
    """Fail unless the deep page of Completed tasks is a full page: it must measure real work."""
    status, body = server.request(
        "GET", f"/tasks?status=Completed&page={page}&page_size={PAGE_SIZE}"
    )
    if status != 200 or not isinstance(body, list) or len(body) != PAGE_SIZE:
        raise BenchError(f"page {page} of Completed tasks: HTTP {status}, not {PAGE_SIZE} tasks")


def list_pages(
    server: Server, pages: tuple[int, int], filters: tuple[str, ...], clients: int, seconds: float
) -> Load:
    """GET /tasks with a random page in the range `pages` and a random filter of `filters`."""
    args = (str(pages[0]), str(pages[1]), str(PAGE_SIZE), *filters)
    return run_wrk(server, "list.lua", clients=clients, seconds=seconds, args=args)
