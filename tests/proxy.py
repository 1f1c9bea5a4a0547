"""A TCP proxy of the tests' own on loopback, to cut a service off from its database.

The shared database server is never stopped by a test: the service reaches it
through this proxy instead, and `cut()` ends every connection and refuses new
ones until `restore()`, as an outage or a network fault would.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

# How often the accepting thread looks at its stop flag.
ACCEPT_POLL = 0.05


class TcpProxy:
    """Forwards connections from a loopback port to `target`, until it is cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._stopping = threading.Event()
        self._guard = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> TcpProxy:
        self._spawn(self._accept, name="proxy-accept")
        return self

    def cut(self) -> None:
        """End every forwarded connection; refuse new ones until restore()."""
        self._open.clear()
        with self._guard:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _shut(sock)

    def restore(self) -> None:
        """Forward new connections again."""
        self._open.set()

    def close(self) -> None:
        """Cut, stop accepting and join every thread of the proxy."""
        self._stopping.set()
        self.cut()
        for thread in list(self._threads):
            thread.join(10)
        self._listener.close()

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._guard:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            if not self._open.is_set():
                _shut(client)  # refused: the peer sees the connection end at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _shut(client)
                continue
            upstream.settimeout(None)
            with self._guard:
                self._sockets |= {client, upstream}
            self._spawn(self._pump, client, upstream, name="proxy-pump")
            self._spawn(self._pump, upstream, client, name="proxy-pump")

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source)
            _shut(sink)


def _shut(sock: socket.socket) -> None:
    """End a socket's connection both ways (waking a thread blocked on it) and close it."""
    with contextlib.suppress(OSError):  # not connected, or already shut
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
