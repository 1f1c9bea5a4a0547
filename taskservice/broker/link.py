"""One connection to the broker, kept by one thread: connect, work, reconnect with backoff.

pika's BlockingConnection belongs to the thread that made it, so each of the
broker's threads has its own and nothing of pika is shared between threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import pika
import pika.exceptions

logger = logging.getLogger(__name__)

# Backoff between tries to connect: quick at first, so a cut costs little, and
# never so slow that a broker that is back waits long for the service.
FIRST_RETRY = 0.5
LAST_RETRY = 15.0
# A connection that worked this long before it failed starts the backoff
# over; one that fails sooner (a declare the broker refuses) keeps backing off.
STEADY_SECONDS = 30.0
# Seconds a connection may wait for the TCP connect, the handshake, or a
# broker that blocks publishers (a memory or disk alarm) before it is dropped
# and made again.
CONNECT_TIMEOUT = 5.0
BLOCKED_TIMEOUT = 30.0

# What a lost or refused connection raises: pika's errors, and the socket's.
BROKER_ERRORS = (pika.exceptions.AMQPError, OSError)


def describe(error: BaseException) -> str:
    """A one-line account of a broker error, for /health and the log."""
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"[:300]


class LinkState:
    """Whether a thread's connection is up, and the last error it met (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connected = False
        self.last_error: str | None = None

    def up(self) -> None:
        """The connection is open."""
        with self._lock:
            self.connected = True

    def down(self, error: BaseException | None) -> None:
        """The connection is lost or refused, because of `error` if given."""
        with self._lock:
            self.connected = False
            if error is not None:
                self.last_error = describe(error)


class Link(threading.Thread, ABC):
    """A daemon thread that keeps one broker connection and works on it until stopped."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        connection_name: str,
        ready: threading.Event,
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._url = url
        self._connection_name = connection_name
        self._ready = ready
        self.stopping = stopping
        self.state = LinkState()

    @abstractmethod
    def work(self, connection: pika.BlockingConnection) -> None:
        """Use `connection` until `stopping` is set; raise a broker error if it fails.

        Calls `ready_to_work` once its channel is set up (the topology declared).
        """

    def ready_to_work(self) -> None:
        """Say the connection is up and its channel set up: /health says `connected`."""
        self.state.up()
        logger.info("%s: connected to the broker", self.name)

    def run(self) -> None:
        """Wait for the service to start, then connect and work, reconnecting with backoff."""
        while not self._ready.wait(0.5):
            if self.stopping.is_set():
                return
        delay = FIRST_RETRY
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(self._parameters())
            except BROKER_ERRORS as error:
                self.state.down(error)
                logger.warning(
                    "%s: cannot connect to the broker (%s); retrying in %.1f s",
                    self.name,
                    describe(error),
                    delay,
                )
            else:
                began = time.monotonic()
                self._work_on(connection, delay)
                if time.monotonic() - began > STEADY_SECONDS:
                    delay = FIRST_RETRY  # it worked for a while: the next fault is a new one
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, LAST_RETRY)

    def _work_on(self, connection: pika.BlockingConnection, delay: float) -> None:
        """Work on an open connection until it fails or the thread stops, then close it."""
        try:
            self.work(connection)
        except BROKER_ERRORS as error:
            self.state.down(error)
            logger.warning(
                "%s: broker connection lost (%s); reconnecting in %.1f s at most",
                self.name,
                describe(error),
                delay,
            )
        except Exception as error:
            # A bug must not end the thread: consuming or publishing would
            # stop for good while /health said nothing. Start over instead.
            self.state.down(error)
            logger.exception("%s: unexpected error; reconnecting", self.name)
        else:
            self.state.down(None)
        finally:
            _close(connection)

    def _parameters(self) -> pika.URLParameters:
        parameters = pika.URLParameters(self._url)
        parameters.connection_attempts = 1
        parameters.socket_timeout = CONNECT_TIMEOUT
        parameters.stack_timeout = CONNECT_TIMEOUT
        parameters.blocked_connection_timeout = BLOCKED_TIMEOUT
        # Named, so an operator sees in RabbitMQ which process and thread it is.
        parameters.client_properties = {
            "connection_name": f"{self._connection_name} (pid {os.getpid()})",
            "product": "taskservice",
        }
        return parameters


def _close(connection: Any) -> None:
    """Close `connection` if it is still open; a connection already lost raises nothing."""
    try:
        if connection.is_open:
            connection.close()
    except BROKER_ERRORS as error:
        logger.debug("closing the broker connection: %s", describe(error))
