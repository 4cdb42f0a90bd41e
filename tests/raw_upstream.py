"""An upstream that answers one request with fixed bytes, for answers no mock sends: a
redirect, a body without usage, a stream cut cleanly short."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def answer_once(response: bytes) -> Iterator[int]:
    """Listen on a loopback port (yielded); the first connection gets its request read
    and ``response`` written, then is closed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(response)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        yield listener.getsockname()[1]
        server.join(5)
