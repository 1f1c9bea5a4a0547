"""Idle and slow clients against a real gunicorn with the default settings: none holds a thread."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from taskservice.worker import MAX_GATHERED_BODY, MAX_GATHERED_HEAD, READ_TIMEOUT, is_complete
from tests.helpers import join_all
from tests.server import Server

# Twice the two request threads would be enough to stall a worker that gives each one a thread.
SLOW_CLIENTS = 16
STALLED_HEAD = b"GET /health HTTP/1.1\r\nHost: t"
STALLED_BODY = (
    b"POST /tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n"
)
# Read by a request thread, not the main loop (see taskservice/worker.py), under the same deadline.
STALLED_CHUNKED = (
    b"POST /tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"dur'
)
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gunicorn as `make run` starts it, no setting changed."""
    path = tmp_path_factory.mktemp("connections")
    server = Server(f"sqlite:///{path / 'tasks.db'}", path / "gunicorn.log").start()
    try:
        server.wait_healthy()
        yield server
    finally:
        server.kill()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Client sockets a test opens; all are closed at its end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(server: Server, sockets: list[socket.socket], sent: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sockets.append(sock)
    if sent:
        sock.sendall(sent)
    return sock


def served_once(server: Server, sockets: list[socket.socket]) -> socket.socket:
    """A connection that has had one request answered and is kept alive."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert connection.sock is not None
    sockets.append(connection.sock)
    return connection.sock


def answer_seconds(server: Server, method: str, path: str, body: object = None) -> float:
    """How long a fresh connection's request takes; fails on a timeout or a wrong status."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        data = None if body is None else json.dumps(body)
        connection.request(method, path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status == (201 if method == "POST" else 200)
    finally:
        connection.close()
    return time.monotonic() - started


def assert_answers_at_once(server: Server) -> None:
    # A second is far above the few milliseconds these take: a held thread costs 5 s or more.
    assert answer_seconds(server, "GET", "/health") < 1
    assert answer_seconds(server, "POST", "/tasks", {"duration": 1}) < 1


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when that was."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic()


def test_idle_sockets_hold_no_request_thread(server: Server, sockets: list[socket.socket]):
    for _ in range(100):
        connect(server, sockets)
    assert_answers_at_once(server)


@pytest.mark.parametrize(
    "sent", [STALLED_HEAD, STALLED_BODY], ids=["head-unfinished", "body-missing"]
)
def test_slow_clients_hold_no_request_thread(
    server: Server, sockets: list[socket.socket], sent: bytes
):
    for _ in range(SLOW_CLIENTS):
        connect(server, sockets, sent)
    assert_answers_at_once(server)


def test_slow_requests_on_kept_alive_connections_hold_no_request_thread(
    server: Server, sockets: list[socket.socket]
):
    for _ in range(SLOW_CLIENTS):
        served_once(server, sockets).sendall(STALLED_HEAD)
    assert_answers_at_once(server)


def test_a_trickling_client_is_still_served(server: Server, sockets: list[socket.socket]):
    sock = connect(server, sockets)
    for index in range(len(GET_HEALTH)):
        sock.sendall(GET_HEALTH[index : index + 1])
    sock.sendall(GET_HEALTH + GET_HEALTH)  # and two more, pipelined
    received = b""
    while received.count(b"HTTP/1.1 200") < 3:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk


def test_unfinished_requests_are_answered_408_and_closed_in_bounded_time(
    server: Server, sockets: list[socket.socket]
):
    """Stalled, trickling (one byte every 0.2 s), kept alive or read by a thread: all are cut."""
    started = time.monotonic()
    stalled = [connect(server, sockets, sent) for sent in (STALLED_HEAD, STALLED_BODY)]
    chunked = connect(server, sockets, STALLED_CHUNKED)
    idle = connect(server, sockets)
    kept_alive = served_once(server, sockets)
    kept_alive.sendall(STALLED_HEAD)
    trickling = connect(server, sockets)
    done = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):  # the server closes it: that is the point
            for byte in b"GET /health HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 100:
                if done.wait(0.2):
                    return
                trickling.sendall(bytes([byte]))

    thread = threading.Thread(target=trickle)
    thread.start()
    bound = READ_TIMEOUT + 5  # the main loop looks at the deadlines once a second
    try:
        for sock in [*stalled, kept_alive, trickling]:
            received, closed = read_until_closed(sock, bound)
            assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
            assert json.loads(received.partition(b"\r\n\r\n")[2])["code"] == 408
            assert closed - started < bound
        # A thread's own read ends at the same deadline, and the app answers 408 too.
        received, closed = read_until_closed(chunked, bound)
        assert received.startswith(b"HTTP/1.1 408 REQUEST TIMEOUT\r\n"), received
        assert json.loads(received.partition(b"\r\n\r\n")[2])["message"] == (
            "The body did not arrive in full within the time allowed (10 s)."
        )
        assert closed - started < bound
        # An idle connection is closed silently after gunicorn's keep-alive (5 s).
        assert read_until_closed(idle, bound)[0] == b""
    finally:
        done.set()
        assert not join_all([thread], timeout=5)
    assert_answers_at_once(server)


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"", False),
        (b"GET / HTTP/1.1\r\nHost: t\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabc", False),
        (b"POST / HTTP/1.1\r\ncontent-length : 4\r\n\r\nabc", False),
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET", True),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_GATHERED_BODY + 1), True),
        (b"GET / HTTP/1.1\r\nX: " + b"x" * MAX_GATHERED_HEAD, True),
    ],
)
def test_a_request_is_complete_once_a_thread_need_not_wait(data: bytes, complete: bool):
    assert is_complete(data) is complete
