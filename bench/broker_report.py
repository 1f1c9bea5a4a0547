"""The report's RabbitMQ section: messages made tasks, events published, the outbox's cost."""

from __future__ import annotations

from bench.broker_scenarios import MESSAGE_BODY, OUTBOX_CLIENTS, BrokerResult, OutboxCost, Span
from bench.load import Load
from bench.markdown import ms, percent, table
from bench.results import Results

SPAN_HEADER = (
    "measured",
    "counted",
    "seconds",
    "per second",
    "worker CPU",
    "worker CPU per item",
    "broker CPU",
    "other CPU",
)
POST_HEADER = (
    f"POST /tasks, {OUTBOX_CLIENTS} clients",
    "req/s",
    "p50 ms",
    "p99 ms",
    "not 201",
    "worker CPU",
    "worker CPU per request",
    "broker CPU",
    "other CPU",
    "events in the outbox at the end",
)


def _share(seconds: float | None, over: float) -> str:
    # /proc/stat counts in clock ticks: a quiet machine can come out a little below 0.
    return "—" if seconds is None else percent(max(0.0, seconds / over))


def _per_item(seconds: float, items: int) -> str:
    return f"{ms(seconds / items * 1000)} ms" if items else "—"


def _span_row(name: str, span: Span) -> list[str]:
    return [
        name,
        f"{span.counted:,}",
        f"{span.seconds:.2f}",
        f"{span.rate:,.0f}",
        _share(span.server_cpu_seconds, span.seconds),
        _per_item(span.server_cpu_seconds, span.counted),
        _share(span.broker_cpu_seconds, span.seconds),
        _share(span.other_cpu_seconds, span.seconds),
    ]


def _post_row(name: str, load: Load, cost: OutboxCost | None) -> list[str]:
    broker = None if cost is None else cost.broker_cpu_seconds
    other = load.other_cpu_seconds if cost is None else cost.other_cpu_seconds
    return [
        name,
        f"{load.rate:,.0f}",
        ms(load.p50_ms),
        ms(load.p99_ms),
        f"{load.count_other_than(201) + load.socket_error_count:,}",
        _share(load.server_cpu_seconds, load.seconds),
        _per_item(load.server_cpu_seconds, load.requests),
        _share(broker, load.seconds),
        _share(other, load.seconds),
        "—" if cost is None else f"{cost.pending:,}",
    ]


def broker_section(results: Results) -> str:
    """Messages made tasks, the outbox published, and POST /tasks with and without a broker."""
    if results.broker is None:
        return "\n\n".join(
            [
                "### RabbitMQ",
                f"Not measured: {results.broker_skipped}. Start a broker, or pass `--amqp-url`, "
                "and run again; with `TASKSERVICE_REQUIRE_AMQP=1` the run fails instead.",
            ]
        )
    broker = results.broker
    spans = [
        _span_row("messages of the create queue made tasks", broker.intake.span),
        _span_row("events of the outbox published", broker.drain.span),
    ]
    return "\n\n".join(
        [
            "### RabbitMQ",
            table(SPAN_HEADER, spans),
            broker_throughput_note(broker),
            table(POST_HEADER, outbox_cost_rows(results, broker)),
            outbox_cost_note(broker),
        ]
    )


def outbox_cost_rows(results: Results, broker: BrokerResult) -> list[list[str]]:
    """POST /tasks without a broker (the throughput table's run), with one, and their ratios."""
    without, with_broker = results.creation[OUTBOX_CLIENTS], broker.creation.load
    ratios = [
        f"{with_broker.rate / without.rate:.2f}x",
        f"{with_broker.p50_ms / without.p50_ms:.2f}x",
        f"{with_broker.p99_ms / without.p99_ms:.2f}x",
    ]
    return [
        _post_row("without a broker", without, None),
        _post_row("with a broker", with_broker, broker.creation),
        ["with against without", *ratios, *[""] * (len(POST_HEADER) - 4)],
    ]


def _each(span: Span) -> str:
    """How long one item took, and the CPU the worker and the broker used for it meanwhile."""
    broker = span.broker_cpu_seconds
    cpu = f"the worker used {_per_item(span.server_cpu_seconds, span.counted)} of CPU"
    if broker is not None:
        # The broker runs on the other core at the same time: its share is not a part.
        cpu += f" and the broker {_per_item(broker, span.counted)}"
    return f"{ms(span.seconds / span.counted * 1000)} ms each, during which {cpu}"


def broker_throughput_note(broker: BrokerResult) -> str:
    """How the two rates were measured, and what bounds each."""
    intake, drain = broker.intake, broker.drain
    body = str(MESSAGE_BODY).replace("'", '"')
    return "\n".join(
        [
            f"On {broker.broker}; each scenario has a prefix of its own, whose queues and "
            "exchange are deleted after it. Counted: the rise from the first sighting (a "
            "poll every 5 ms) to the last, over the seconds between them. CPU columns: the "
            "gunicorn worker, RabbitMQ's `beam.smp` where it runs on this machine, and every "
            "other process (the harness excluded), as a share of one core over the span.",
            "",
            f"- **Messages.** {intake.messages:,} messages `{body}`, each with its own "
            "`message_id`, published with confirms to `<prefix>.tasks.create` before the "
            "service starts; the service's `tasks` rows are counted. The tasks wait in the "
            "queue, as in the `POST /tasks` rows, so this is the intake alone, not a race with "
            "two slots that claim and finish tasks. What bounds it: one consumer thread takes "
            "one message at a time, a write transaction (the task, its idempotency key and its "
            "event) committed with an fsync before its ack, while the publisher sends each "
            f"task's event from the same process: {_each(intake.span)}.",
            f"- **Events.** {drain.tasks:,} tasks of duration 0, created through `POST` and run "
            "to an end while the service's broker URL named a port where nothing listens, left "
            f"{drain.events:,} events (created, started, completed) in the outbox; the service "
            "is then started with the broker, and the events are counted in a quorum queue of "
            f"the bench's own bound to `<prefix>.events` with `task.#` ({drain.routed:,} "
            "arrived). What bounds it: one publisher thread sends one event at a time and "
            "waits for its confirm, which the broker sends once the quorum queue has written "
            "the message to disk, and deletes each batch of up to 100 in one transaction: one "
            f"confirm round trip per event, {_each(drain.span)}.",
        ]
    )


def outbox_cost_note(broker: BrokerResult) -> str:
    """What the POST /tasks comparison measured, and what the broker adds to a create."""
    return (
        f"Without a broker: the `POST /tasks` run at {OUTBOX_CLIENTS} clients of the throughput "
        f"table. With one: the same load for {broker.creation.load.seconds:.1f} s on a fresh "
        "database, the service connected to the broker and a queue of the bench's own bound "
        "to every event. Each create then also writes its event in its transaction, and the "
        "publisher thread, woken by a commit, waits 50 ms for the commits that come with it, "
        "publishes what the outbox holds one confirm at a time and deletes it in one write "
        "transaction, with its own fsync. A profile of this load (py-spy, 200 samples a "
        "second, 10 s) put about 18 % of the worker's active samples in the publisher, 15 % "
        "of them inside pika's blocking publish-and-confirm, and under 5 % in writing the "
        "events: the publisher takes the interpreter from the request threads, and the "
        "broker's CPU comes from the same two cores. Batched confirms (publish a batch, then "
        "wait for its confirms) are what would lift it; pika's blocking channel confirms one "
        "message at a time. The last column shows whether the publisher kept up."
    )
