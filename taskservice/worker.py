"""gunicorn's gthread worker, with requests read in its main loop before a thread takes them.

gunicorn 27's ThreadWorker hands every new connection to a request thread, which then waits up
to 5 s for the first byte, and reads the request with a blocking socket: with two threads, two
idle sockets stall every client for 5 s and two slow clients stall it for as long as they like.
Here a connection's bytes are gathered by the main loop's selector, without blocking, until the
request (its head, and a body of known length) is complete; only then does a thread take it.
An idle or slow client therefore costs a file descriptor and a buffer, never a thread, and a
request not complete within READ_TIMEOUT of its first byte is answered 408 and closed.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http.errors import NoMoreData  # type: ignore[import-untyped]
from gunicorn.http.unreader import SocketUnreader  # type: ignore[import-untyped]
from gunicorn.workers.gthread import TConn  # type: ignore[import-untyped]
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

# Seconds from a request's first byte to its last: generous for any real client sending a
# request this API takes (at most 64 KiB), short enough that a stalled one goes quickly.
READ_TIMEOUT = 10.0

# Seconds a connection answered 408 reads on, so that closing it does not reset it.
LINGER = 2.0

# A head or body longer than these is not gathered in the main loop but read by the thread (with
# the same deadline): no real request here has a longer head, and the app refuses a longer body
# (413, app.MAX_BODY_BYTES) without reading it. They bound a slow connection's memory.
MAX_GATHERED_HEAD = 16 * 1024
MAX_GATHERED_BODY = 64 * 1024

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
)
_TIMEOUT_BODY = (
    b'{"code": 408, "status": "Request Timeout", "message": "The request was not complete'
    b' within %d s.", "errors": {}}' % READ_TIMEOUT
)


def is_complete(data: bytes) -> bool:
    """Whether `data` holds a whole request a thread can serve without waiting on the client.

    True as well for what only gunicorn's parser can judge (a chunked or announced body, a
    malformed head, one past the limits): the thread reads the rest, under the same deadline.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > MAX_GATHERED_HEAD
    length = 0
    for line in data[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"transfer-encoding", b"expect"):
            return True  # a chunked body, or a client waiting for "100 Continue"
        if name == b"content-length":
            if not value.strip().isdigit():
                return True
            length = int(value)
    return length > MAX_GATHERED_BODY or len(data) >= end + 4 + length


class DeadlineUnreader(SocketUnreader):  # type: ignore[misc]
    """A socket reader whose every read ends by one deadline, so a thread never waits longer."""

    deadline = float("inf")

    def chunk(self, size_hint: int | None = None) -> bytes:
        """The next bytes from the socket; past the deadline, NoMoreData as for a hang-up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise NoMoreData()
        prior = self.sock.gettimeout()
        self.sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            data: bytes = super().chunk(size_hint)
        except TimeoutError:
            raise NoMoreData() from None
        finally:
            self.sock.settimeout(prior)
        return data


class ThreadWorker(GThreadWorker):  # type: ignore[misc]
    """gthread, but a thread takes a connection only once its request has arrived."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections whose request has begun, oldest first: each gets READ_TIMEOUT from its
        # first byte, so the deque stays sorted by deadline.
        self.reading_conns: deque[TConn] = deque()
        # Connections answered 408, until the client has closed its side too (or LINGER s).
        self.closing_conns: deque[TConn] = deque()

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse TLS and cleartext HTTP/2: both read the socket before the gathered bytes."""
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http2_cleartext != "off":
            raise SystemExit("taskservice: its worker serves plain HTTP/1.1 only (no TLS, no h2c)")

    def accept(self, listener: Any) -> None:
        """Accept a connection and leave it to the selector until its request is in."""
        try:
            client, address = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())
        conn.gathered = b""
        conn.read_deadline = None
        # Waiting for a first byte is keep-alive waiting: gunicorn closes it after `keepalive`.
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(
            client, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )

    def on_pending_socket_readable(self, conn: TConn, client: Any) -> None:
        """A new connection sent bytes: gather the request."""
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        self._start_reading(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection sent bytes: gather its next request the same way."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        conn.gathered = b""
        self._start_reading(conn)

    def _start_reading(self, conn: TConn) -> None:
        conn.read_deadline = time.monotonic() + READ_TIMEOUT
        self.reading_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_some, conn))
        self._read_some(conn, conn.sock)

    def _read_some(self, conn: TConn, client: Any) -> None:
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client hung up (or reset) before its request was complete
            self._stop_reading(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.gathered += data
        if is_complete(conn.gathered):
            self._stop_reading(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def _stop_reading(self, conn: TConn) -> None:
        self.poller.unregister(conn.sock)
        self.reading_conns.remove(conn)

    def murder_pending(self) -> None:
        """Close idle new connections (gunicorn's), and requests not complete in time with 408."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading_conns and self.reading_conns[0].read_deadline <= now:
            conn = self.reading_conns[0]
            self._stop_reading(conn)
            self.log.info(
                "Closing the connection from %s: its request was not complete within %d s",
                conn.client,
                READ_TIMEOUT,
            )
            self._answer_timeout(conn)
        while self.closing_conns and self.closing_conns[0].timeout <= now:
            self._close(self.closing_conns[0])

    def _answer_timeout(self, conn: TConn) -> None:
        # Closing with unread bytes from the client would reset the connection and could lose
        # the answer: like gunicorn's close_graceful, but in the loop, the rest is read and
        # dropped until the client closes too, for LINGER seconds at most.
        try:
            conn.sock.send(_TIMEOUT_ANSWER % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.timeout = time.monotonic() + LINGER
        self.closing_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn: TConn, client: Any) -> None:
        try:
            if client.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: TConn) -> None:
        self.poller.unregister(conn.sock)
        self.closing_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def handle(self, conn: TConn) -> Any:
        """Serve the gathered request in this thread, reading any rest by the same deadline."""
        conn.sock.setblocking(True)
        conn.init()
        if not isinstance(conn.parser.unreader, DeadlineUnreader):
            # The parser's messages take the unreader when each is made, so this holds from the
            # next request on; the bytes gunicorn itself has buffered come along.
            unreader = DeadlineUnreader(conn.sock)
            unreader.unread(conn.parser.unreader.take_buffered())
            conn.parser.unreader = unreader
        deadline = conn.read_deadline
        # A pipelined request that gunicorn hands on directly was never gathered here.
        conn.parser.unreader.deadline = (
            time.monotonic() + READ_TIMEOUT if deadline is None else deadline
        )
        conn.read_deadline = None
        conn.parser.unreader.unread(conn.gathered)
        conn.gathered = b""
        return super().handle(conn)
