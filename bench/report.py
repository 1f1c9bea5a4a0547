"""The report: Markdown tables of one run, written between markers in docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.broker_report import broker_section
from bench.load import Load
from bench.markdown import clients, ms, percent, table
from bench.pool_scenarios import SLOTS
from bench.replica_report import replica_section
from bench.results import Results
from bench.targets import Check, all_checks

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

INTRO = """# Benchmarks

Throughput, latency, dispatch, the limit of two running tasks, and memory of taskservice,
measured by `make bench` (code in `bench/`). Everything between the markers below is
rewritten by each run; text outside them is kept.
"""


def _load_row(name: str, load: Load, expected: int) -> list[str]:
    share = f"{load.of_ceiling:.2f}" if load.of_ceiling is not None else "—"
    return [
        name,
        str(load.clients),
        f"{load.rate:,.0f}",
        share,
        ms(load.p50_ms),
        ms(load.p90_ms),
        ms(load.p99_ms),
        ms(load.max_ms),
        f"{load.requests:,}",
        f"{load.count_other_than(expected):,}",
        f"{load.socket_error_count:,}",
        percent(load.wrk_cpu_seconds / load.seconds),
        percent(load.server_cpu_seconds / load.seconds),
        # /proc/stat counts in clock ticks: a quiet machine can come out a little below 0.
        percent(max(0.0, load.other_cpu_seconds / load.seconds)),
    ]


LOAD_HEADER = (
    "endpoint",
    "clients",
    "req/s",
    "of ceiling",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "answers",
    "not 200/201",
    "socket errors",
    "wrk CPU",
    "server CPU",
    "other CPU",
)


def throughput_section(results: Results) -> str:
    """Every wrk run: rates, latencies, unexpected answers and CPU of both sides."""
    rows = [_load_row("GET /ceiling", load, 200) for load in results.ceiling.values()]
    rows += [_load_row("POST /tasks", load, 201) for load in results.creation.values()]
    backlog = f"GET /tasks/{{id}}, {results.settings.backlog:,} queued"
    rows += [_load_row(backlog, load, 200) for load in results.reads.values()]
    for listing in results.listings:
        at = f"{listing.rows:,} rows"
        rows += [
            _load_row(f"GET /tasks first pages, {at}", load, 200)
            for load in listing.first_pages.values()
        ]
        deep = f"GET /tasks deep page {listing.deep_page_number:,}, {at}"
        rows.append(_load_row(deep, listing.deep_page, 200))
        rows += [
            _load_row(f"GET /tasks/{{id}}, {at}", load, 200) for load in listing.task_read.values()
        ]
        rows += [_load_row(f"GET /overview, {at}", load, 200) for load in listing.overview.values()]
    loaded = results.reads_loaded
    return "\n\n".join(
        [
            "### Throughput and latency",
            table(LOAD_HEADER, rows),
            f"{results.settings.seconds:g} s per row. The server logged "
            f"{'?' if loaded is None else f'{loaded:,}'} queued task(s) loaded at the start of "
            "the `GET /tasks/{id}` rows. CPU columns: CPU time of wrk, of the gunicorn worker and "
            "of every other process on the machine (the harness excluded), as a share of one "
            "core over the run.",
        ]
    )


def load_generator_section(results: Results) -> str:
    """Evidence that wrk is not what limits the rates: its CPU, the server's, the ceiling."""
    loads = all_loads(results)
    busiest = max(loads, key=lambda load: load.wrk_cpu_seconds / load.seconds)
    idlest = min(loads, key=lambda load: load.server_cpu_seconds / load.seconds)
    disturbed = max(loads, key=lambda load: load.other_cpu_seconds / load.seconds)
    best = max(results.ceiling.values(), key=lambda load: load.rate)
    service_best = max(
        (load for load in loads if load.ceiling_rate is not None), key=lambda load: load.rate
    )
    return "\n\n".join(
        [
            "### Load generator",
            "wrk with one thread and small Lua scripts (`bench/lua/`). In every run above wrk "
            f"used at most {percent(busiest.wrk_cpu_seconds / busiest.seconds)} of a core, "
            "while the gunicorn worker used at least "
            f"{percent(idlest.server_cpu_seconds / idlest.seconds)}; the same wrk drove the "
            f"ceiling app at {best.rate:,.0f} req/s ({clients(best.clients)}), against at most "
            f"{service_best.rate:,.0f} req/s for a service endpoint. Other processes on the "
            f"machine used up to {percent(disturbed.other_cpu_seconds / disturbed.seconds)} "
            "of a core during a run (the other CPU column): where that is high, the run shared "
            "the machine's two cores.",
        ]
    )


def all_loads(results: Results) -> list[Load]:
    """Every wrk run of the throughput table."""
    loads = [*results.ceiling.values(), *results.creation.values(), *results.reads.values()]
    for listing in results.listings:
        loads += listing.loads()
    return loads


def _pair(load: Load) -> str:
    return f"{ms(load.p50_ms)} / {ms(load.p99_ms)}"


def _ratios(large: Load, small: Load) -> str:
    return f"{large.p50_ms / small.p50_ms:.2f}x / {large.p99_ms / small.p99_ms:.2f}x"


def listing_section(results: Results) -> str:
    """Reads on the large database against the same mix on the small one."""
    small, large = results.small, results.large
    compared = [
        (f"GET /tasks/{{id}}, random ids, {clients(count)}", small.task_read[count], load)
        for count, load in large.task_read.items()
    ]
    compared += [
        (f"GET /tasks first pages, {clients(count)}", small.first_pages[count], load)
        for count, load in large.first_pages.items()
    ]
    compared += [
        (f"GET /overview (the dashboard), {clients(count)}", small.overview[count], load)
        for count, load in large.overview.items()
    ]
    deep = f"GET /tasks?status=Completed deep page, {clients(large.deep_page.clients)}"
    compared.append((deep, small.deep_page, large.deep_page))
    rows = [
        [name, _pair(small_load), _pair(large_load), _ratios(large_load, small_load)]
        for name, small_load, large_load in compared
    ]
    counts = ", ".join(f"{status} {count:,}" for status, count in large.status_counts.items())
    return "\n\n".join(
        [
            f"### Listing at {large.rows:,} rows against {small.rows:,}",
            table(
                (
                    "request",
                    f"{small.rows:,} rows p50 / p99 ms",
                    f"{large.rows:,} rows p50 / p99 ms",
                    "ratio p50 / p99",
                ),
                rows,
            ),
            f"The {large.rows:,}-row database ({large.database_bytes / 2**20:,.1f} MiB): "
            f"{counts}. Deep page: page {large.deep_page_number:,} of Completed at "
            f"{large.rows:,} rows, page {small.deep_page_number:,} at {small.rows:,} rows "
            "(half-way through Completed, 10 per page). First pages: a random status filter "
            "(any of the five, or none) and a random page from 1 to 10. "
            f"`/overview`: the dashboard's poll, measured first, while the fill's last tasks "
            f"are recent: its timeline held {small.overview_bars:,} bars at {small.rows:,} rows "
            f"and {large.overview_bars:,} at {large.rows:,} (at most 400).",
        ]
    )


def dispatch_section(results: Results) -> str:
    """Gaps between a freed slot and the next start, and how busy both slots were."""
    dispatch = results.dispatch
    drain_rate = SLOTS / dispatch.task_seconds
    rows = [
        ["tasks (all created through POST)", f"{dispatch.tasks:,} of {dispatch.task_seconds:g} s"],
        [
            "created in",
            f"{dispatch.create_seconds:.2f} s ({dispatch.tasks / dispatch.create_seconds:,.0f}/s;"
            f" two slots drain at most {drain_rate:,.0f}/s)",
        ],
        ["first start to last finish", f"{dispatch.drain_seconds:.2f} s"],
        ["gaps measured", f"{len(dispatch.gaps_ms):,}"],
        [
            "gap p50 / p99 / max",
            f"{dispatch.gap_p50_ms:.2f} / {dispatch.gap_p99_ms:.2f} / {dispatch.gap_max_ms:.2f} ms",
        ],
        [
            "gap p99 while tasks were being created / after",
            f"{dispatch.gap_p99_creating_ms:.2f} ms ({dispatch.gaps_creating:,} gaps) / "
            f"{dispatch.gap_p99_after_ms:.2f} ms "
            f"({len(dispatch.gaps_ms) - dispatch.gaps_creating:,} gaps)",
        ],
        ["slot utilisation (both slots busy, first to last start)", percent(dispatch.utilisation)],
    ]
    if dispatch.unmatched_starts:
        rows.append(["starts with no free slot", f"{dispatch.unmatched_starts:,}"])
    return "\n\n".join(["### Dispatch", table(("", "measured"), rows, numbers=False)])


def limit_section(results: Results) -> str:
    """The most tasks running at once while tasks were being created."""
    limit = results.limit
    histogram = ", ".join(
        f"{running}: {count:,}" for running, count in limit.running_histogram.items()
    )
    rows = [
        [
            "creation load",
            f"POST /tasks at {limit.load.clients} clients for "
            f"{limit.load.seconds:.1f} s, {limit.load.requests:,} tasks, "
            f"{limit.load.count_other_than(201) + limit.load.socket_error_count:,} not 201",
        ],
        ["samples of `count(*) WHERE status = 'Run'`", f"{limit.samples:,} ({histogram})"],
        ["most running, sampled", str(limit.most_running_sampled)],
        [
            "most overlapping [start, finish] intervals",
            f"{limit.max_overlap} (over {limit.finished_tasks:,} finished tasks)",
        ],
    ]
    return "\n\n".join(["### Limit under load", table(("", "measured"), rows, numbers=False)])


def scale_section(results: Results) -> str:
    """Worker RSS and start-up time with queues of several sizes."""
    empty = results.scale[0]
    rows = []
    for point in results.scale:
        per_task = (point.rss_median - empty.rss_median) / point.queued if point.queued else None
        loaded = sorted({"not logged" if count is None else f"{count:,}" for count in point.loaded})
        rows.append(
            [
                f"{point.queued:,}",
                f"{point.rss_median / 2**20:.1f}",
                "—" if per_task is None else f"{per_task:,.0f}",
                f"{point.startup_median:.2f}",
                f"{point.startup_median - empty.startup_median:+.2f}",
                ", ".join(loaded),
            ]
        )
    header = (
        "queued at start",
        "worker RSS MiB",
        "bytes per queued task",
        "start-up s",
        "vs empty s",
        "logged as loaded",
    )
    note = (
        f"Medians of {results.settings.starts} start(s) each, every one on a fresh copy. "
        "Start-up: from spawning gunicorn to the first 200 from `/health`; RSS: VmRSS of "
        "the worker after a few requests."
    )
    return "\n\n".join(["### Memory and start-up", table(header, rows), note])


def targets_section(checks: Sequence[Check]) -> str:
    """The targets of the issue next to what was measured."""
    rows = [
        [check.name, check.target, check.measured, "yes" if check.met else "**no**"]
        for check in checks
    ]
    met = sum(check.met for check in checks)
    return "\n\n".join(
        [
            "### Targets",
            table(("what", "target", "measured", "met"), rows),
            f"{met} of {len(checks)} targets met.",
        ]
    )


def machine_section(results: Results) -> str:
    """Where and when the figures were measured."""
    settings = results.settings
    rows = [[label, value] for label, value in results.machine.items()]
    rows.append(
        [
            "other processes",
            f"{percent(max(0.0, results.other_cpu_share))} of a core on average during the run",
        ]
    )
    rows.append(
        [
            "settings",
            f"{settings.seconds:g} s per measurement, {settings.rows:,} rows, backlog "
            f"{settings.backlog:,}, {settings.dispatch_tasks:,} dispatch tasks, queues up to "
            f"{settings.queued:,}, {settings.messages:,} RabbitMQ messages, "
            f"{settings.failovers} kill(s) and pause(s) of a replica at each lease of "
            f"{' and '.join(f'{lease:g} s' for lease in settings.leases)}",
        ]
    )
    return "\n\n".join(["### Machine", table(("", ""), rows, numbers=False)])


def render(results: Results) -> str:
    """The generated part of the report."""
    sections = [
        machine_section(results),
        targets_section(all_checks(results)),
        throughput_section(results),
        load_generator_section(results),
        broker_section(results),
        listing_section(results),
        dispatch_section(results),
        limit_section(results),
        scale_section(results),
        replica_section(results),
    ]
    return "\n\n".join(sections)


def write_report(path: Path, generated: str) -> None:
    """Put `generated` between the markers of `path`, keeping the text outside them."""
    text = path.read_text() if path.exists() else f"{INTRO}\n{BEGIN}\n{END}\n"
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path} lacks the markers {BEGIN} ... {END} in this order")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text[: start + len(BEGIN)]}\n{generated}\n{text[end:]}")
