"""A loopback TCP forwarder a test can cut and restore, to play a store or Redis going away.

PostgreSQL and Redis are real here; what cannot be arranged against a shared server is
its outage. ``Forwarder`` sits between the gateway and the server: ``cut()`` drops every
open connection and refuses new ones (as a stopped server does), ``restore()`` listens
again on the same port. ``lose_reply(after, to)`` plays the rarer failure: on the first
connection that sends ``after`` and then ``to``, the ``to`` message reaches the server
but the server's reply never reaches the client, whose connection is then reset (a
commit that landed, its acknowledgement lost). ``freeze()`` plays a network partition:
connections stay open and new ones are accepted, but no byte moves either way until
``thaw()``. Threads, not asyncio, so it runs beside a gateway in any loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

_POLL = 0.05  # how often the accept loop looks for a cut


class Forwarder:
    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lose: tuple[bytes, bytes] | None = None
        self._primed: set[socket.socket] = set()  # clients that sent ``after``
        self._deaf: set[socket.socket] = set()  # clients whose replies are dropped
        self.reply_lost = threading.Event()
        self._moving = threading.Event()  # cleared while frozen
        self._moving.set()
        probe = socket.create_server(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()

    def __enter__(self) -> Forwarder:
        self.restore()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cut()

    def restore(self) -> None:
        """Listen again (on the same port) and forward each new connection."""
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(_POLL)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one, both sides."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()

    def freeze(self) -> None:
        """Hold every byte, both ways, and every new connection, until ``thaw()``."""
        self._moving.clear()

    def thaw(self) -> None:
        self._moving.set()

    def _hold(self, sock: socket.socket) -> None:
        """Wait while frozen; give up if the connection was closed meanwhile (a cut)."""
        while not self._moving.wait(_POLL):
            if sock.fileno() < 0:
                raise OSError("closed while frozen")

    def lose_reply(self, after: bytes, to: bytes) -> None:
        """Arm a one-shot lost reply: see the module docstring."""
        self._lose = (after, to)
        self.reply_lost.clear()

    def _watch(self, client: socket.socket, data: bytes) -> bool:
        """Whether ``data`` from ``client`` is the message whose reply is to be lost."""
        lose = self._lose
        if lose is None:
            return False
        if client not in self._primed:
            if lose[0] not in data:
                return False
            self._primed.add(client)
            data = data[data.index(lose[0]) + len(lose[0]) :]  # ``to`` may follow at once
        if lose[1] not in data:
            return False
        self._lose = None
        self._deaf.add(client)
        return True

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by cut()
            client.settimeout(None)
            while not self._moving.wait(_POLL):  # a partition: the handshake goes nowhere
                if self._listener is not listener:
                    _close(client)
                    return
            try:
                server = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets |= {client, server}
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                self._hold(client)
                server.sendall(data)
                if self._watch(client, data):
                    time.sleep(0.3)  # the server acts on it and replies into the void
                    self.reply_lost.set()
                    break
        except OSError:
            pass
        self._end(client, server)

    def _down(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                self._hold(server)
                if client not in self._deaf:
                    client.sendall(data)
        except OSError:
            pass
        self._end(server, client)

    def _end(self, src: socket.socket, dst: socket.socket) -> None:
        for sock in (src, dst):
            _close(sock)
        with self._lock:
            self._sockets -= {src, dst}


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
