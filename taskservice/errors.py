"""The exceptions the service raises on purpose, in one place."""

from __future__ import annotations

from taskservice.models import TaskStatus


class TaskServiceError(Exception):
    """Base of the service's own errors."""


class ConfigError(TaskServiceError):
    """A setting from the environment is missing or malformed."""


class TaskNotFound(TaskServiceError):
    """No task has the requested number."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"Task {task_id} does not exist.")
        self.task_id = task_id


class TaskNotCancellable(TaskServiceError):
    """The task has left the queue, so cancelling it is too late."""

    def __init__(self, task_id: int, status: TaskStatus) -> None:
        super().__init__(
            f"Task {task_id} is {status.value!r}; only a task that is 'In Queue' can be cancelled."
        )
        self.task_id = task_id
        self.status = status


class IdempotencyKeyReused(TaskServiceError):
    """An idempotency key already made a task from other fields."""

    def __init__(self, key: str, task_id: int) -> None:
        super().__init__(
            f"The Idempotency-Key {key!r} was used for task {task_id} with other fields;"
            " send a new key for a new task."
        )
        self.key = key
        self.task_id = task_id
        self.errors = {"headers": {"Idempotency-Key": ["Already used with other fields."]}}


# Seconds a client should wait after a 503 (a full queue, a busy database):
# with two slots and tasks of 0 to 10 s, a slot frees every few seconds.
RETRY_AFTER_SECONDS = 5


class QueueFull(TaskServiceError):
    """The backlog has reached TASKSERVICE_MAX_QUEUED; no task was created."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The queue is full: {limit} tasks are waiting, the most this service accepts."
            f" No task was created; try again in {RETRY_AFTER_SECONDS} s."
        )
        self.limit = limit


class ServiceStarting(TaskServiceError):
    """The service has not started yet: its database does not answer, or another holds it."""

    def __init__(self, waiting_for: str) -> None:
        super().__init__(
            f"The service is starting and cannot serve this yet: {waiting_for}."
            f" Try again in {RETRY_AFTER_SECONDS} s."
        )


class DatabaseInUse(TaskServiceError):
    """Another process already runs the task pool on this database."""


class TaskFailed(TaskServiceError):
    """A task's body ended in an error that the task's record should show."""
