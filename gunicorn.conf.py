"""gunicorn settings: one worker process, threaded, bound from HOST and PORT."""

import os

from taskservice.config import load_config
from taskservice.errors import ConfigError
from taskservice.extension import EXTENSION_KEY
from taskservice.logs import LOG_FORMATS, logging_config

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _refuse(message: str) -> None:
    raise SystemExit(f"taskservice: {message}")


# The service's own settings are checked here too, in the master, so that a
# bad one stops the server with its message before it listens; the worker
# reads them again (the instance path only names the default database file).
try:
    load_config(os.environ, instance_path="instance")
except ConfigError as error:
    _refuse(str(error))

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"

# One process by design: the task pool (and its limit of two running tasks)
# lives in the worker process. On SQLite a database takes one pool only; on
# PostgreSQL, scale out with more replicas, each one such process.
workers = 1
# gthread, with each request read in the worker's main loop before a thread takes it
# (taskservice/worker.py): an idle or slow client holds no request thread, and one whose
# request is not complete 10 s after its first byte is answered 408 and closed. gunicorn 27
# has no setting for either.
worker_class = "taskservice.worker.ThreadWorker"
# Two request threads, chosen by measurement (docs/benchmarks.md): the threads
# share one interpreter lock, so one thread answered ~15 % more requests than
# two and four ~15 % fewer. A slow or idle client no longer holds a thread
# (the worker above reads requests first), so more threads would buy nothing;
# only a chunked or `Expect: 100-continue` body is read in a thread, for 10 s at most.
_threads = os.environ.get("GUNICORN_THREADS", "2")
if not _threads.isdigit() or int(_threads) < 1:
    _refuse(f"GUNICORN_THREADS must be a whole number of at least 1, got {_threads!r}")
threads = int(_threads)

# Never build the app in the master: the pool's threads would not survive the fork.
preload_app = False

# Seconds a stopping worker lets in-flight requests finish. Running tasks are
# not waited for: a task cut short is queued again at the next start.
graceful_timeout = 10
keepalive = 5

# gunicorn refuses request lines (414) and headers (431) beyond these with its
# own HTML page, before the app sees them; the app answers everything else as
# JSON, bodies over 64 KiB included (413).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190

# No control socket: it would be shared by every instance of the same user.
control_socket_disable = True

loglevel = os.environ.get("LOG_LEVEL", "info").lower()
if loglevel not in LOG_LEVELS:
    _refuse(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {loglevel!r}")
log_format = os.environ.get("LOG_FORMAT", "text").lower()
if log_format not in LOG_FORMATS:
    _refuse(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
# The app logs each request itself, with its request id (taskservice/api/requests.py).
accesslog = None
errorlog = "-"
logconfig_dict = logging_config(loglevel, log_format)


def on_starting(server):
    """Refuse --preload: the app built in the master would lose its pool at fork."""
    if server.cfg.preload_app:
        raise SystemExit(
            "taskservice: do not run with --preload; the task pool must start in the worker"
        )


def post_worker_init(worker):
    """End this worker at once if its pool may no longer run tasks here.

    That is when the SQLite pool lock is lost, or a PostgreSQL replica's lease
    may lapse or was taken over: another process may then run the tasks
    running here. Exiting stops them (a sleeping task cannot be interrupted),
    and gunicorn starts a fresh worker, which recovers.
    """
    # Absent from the benchmark's ceiling app, which runs with these same settings.
    extension = worker.wsgi.extensions.get(EXTENSION_KEY)
    if extension is not None and extension.pool is not None:
        extension.pool.watch(on_lost=lambda: os._exit(1))


def worker_exit(server, worker):
    """Stop the task pool when the worker process ends."""
    # `wsgi` is missing when the app failed to build (e.g. the database is in use).
    app = getattr(worker, "wsgi", None)
    extension = getattr(app, "extensions", {}).get(EXTENSION_KEY)
    if extension is not None:
        extension.close(timeout=1.0)
