"""Prometheus metrics: what happened to tasks and requests, and what the database holds now."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from taskservice.models import TaskPriority, TaskStatus

logger = logging.getLogger(__name__)

# Tasks last 0 to 10 s by the specification, up to an hour by the API; waits grow with the queue.
_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
_REQUEST_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

CountByStatus = Callable[[], Mapping[TaskStatus, int]]


class Metrics:
    """The service's metrics, in a registry of their own (one per app).

    Counters and histograms count what this process saw since it started; the
    gauges are read from the database at each scrape, so they are right after
    a restart and whoever changed the tasks.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.created = Counter(
            "taskservice_tasks_created",
            "Tasks created, by priority.",
            ["priority"],
            registry=self.registry,
        )
        self.finished = Counter(
            "taskservice_tasks_finished",
            "Tasks whose run ended, by status and priority.",
            ["status", "priority"],
            registry=self.registry,
        )
        self.wait = Histogram(
            "taskservice_task_wait_seconds",
            "From a task's creation to the start of its first run.",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.execution = Histogram(
            "taskservice_task_execution_seconds",
            "How long a task's run took.",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.requests = Counter(
            "taskservice_http_requests",
            "HTTP requests answered, by method, endpoint and status.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "taskservice_http_request_duration_seconds",
            "How long the app took to answer, by method and endpoint.",
            ["method", "endpoint"],
            buckets=_REQUEST_SECONDS,
            registry=self.registry,
        )
        self.messages = Counter(
            "taskservice_amqp_messages",
            "Messages of the create queue handled, by outcome: created (a new task), replayed"
            " (a repeat of a message_id), dead_lettered, returned (an unexpected error).",
            ["outcome"],
            registry=self.registry,
        )
        self.replies = Counter(
            "taskservice_amqp_replies",
            "Replies to a message's reply_to, by outcome: sent, or lost (no such queue, or it"
            " refused the reply).",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "taskservice_events_published",
            "Task events the broker confirmed.",
            registry=self.registry,
        )

        self.lease_renewals = Counter(
            "taskservice_lease_renewals",
            "Leases of running tasks this replica renewed (PostgreSQL replicas).",
            registry=self.registry,
        )
        self.failovers = Counter(
            "taskservice_failovers",
            "Slots this replica took over from a replica whose lease had expired; their tasks"
            " were queued again.",
            registry=self.registry,
        )
        self.fenced = Counter(
            "taskservice_fenced_writes",
            "Writes of an attempt the database refused because its slot had been taken over,"
            " by write: renew, finish.",
            ["write"],
            registry=self.registry,
        )

    def watch_database(self, count_by_status: CountByStatus) -> None:
        """Report the tasks by status, the queue depth and the running tasks at each scrape."""
        self.registry.register(_DatabaseGauges(count_by_status))

    def watch_outbox(self, count_events: Callable[[], int]) -> None:
        """Report the events waiting to be published at each scrape."""
        self.registry.register(_OutboxGauge(count_events))

    def message_consumed(self, outcome: str) -> None:
        """Count a message of the create queue that was handled."""
        self.messages.labels(outcome).inc()

    def reply_sent(self) -> None:
        """Count a reply the broker took."""
        self.replies.labels("sent").inc()

    def reply_lost(self) -> None:
        """Count a reply the broker could not deliver."""
        self.replies.labels("lost").inc()

    def event_published(self) -> None:
        """Count an event the broker confirmed."""
        self.events.inc()

    def task_created(self, priority: TaskPriority) -> None:
        """Count a created task."""
        self.created.labels(priority.value).inc()

    def task_started(self, waited: float) -> None:
        """Record how long a task waited before its run."""
        self.wait.observe(waited)

    def task_finished(self, status: TaskStatus, priority: TaskPriority, seconds: float) -> None:
        """Count a run that ended, and how long it took."""
        self.finished.labels(status.value, priority.value).inc()
        self.execution.observe(seconds)

    def request_answered(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count an HTTP answer and its duration."""
        self.requests.labels(method, endpoint, str(status)).inc()
        self.request_duration.labels(method, endpoint).observe(seconds)

    def leases_renewed(self, count: int) -> None:
        """Count lease renewals."""
        self.lease_renewals.inc(count)

    def slot_taken_over(self) -> None:
        """Count a failover: an expired slot taken over."""
        self.failovers.inc()

    def write_fenced(self, write: str) -> None:
        """Count a write of an attempt refused by its fencing token."""
        self.fenced.labels(write).inc()

    def render(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)


class _DatabaseGauges(Collector):
    """Gauges read from the database's task counts (kept by triggers) at each scrape."""

    def __init__(self, count_by_status: CountByStatus) -> None:
        self._count_by_status = count_by_status

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self._count_by_status()
        except SQLAlchemyError:
            # A scrape must still answer: the process's own metrics stay useful.
            logger.exception("metrics: the task counts could not be read")
            return
        by_status = GaugeMetricFamily(
            "taskservice_tasks", "Tasks in the database, by status.", labels=["status"]
        )
        for status in TaskStatus:
            by_status.add_metric([status.value], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "taskservice_queue_depth", "Tasks waiting to run.", counts.get(TaskStatus.IN_QUEUE, 0)
        )
        yield GaugeMetricFamily(
            "taskservice_tasks_running", "Tasks running now.", counts.get(TaskStatus.RUN, 0)
        )


class _OutboxGauge(Collector):
    """The outbox's length, read at each scrape."""

    def __init__(self, count_events: Callable[[], int]) -> None:
        self._count_events = count_events

    def collect(self) -> Iterator[Metric]:
        try:
            pending = self._count_events()
        except SQLAlchemyError:
            logger.exception("metrics: the outbox could not be read")
            return
        yield GaugeMetricFamily(
            "taskservice_events_pending", "Task events not yet published.", pending
        )
