"""Run ``tollhouse serve`` as a real process, the way an operator does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway(str):
    """The gateway's URL, carrying its process so a test can signal it."""

    proc: subprocess.Popen[bytes]


@contextmanager
def gateway_process(config: dict[str, Any], workdir: Path, name: str = "gw") -> Iterator[Gateway]:
    """Start a gateway on a free port, yield its URL, stop it with SIGTERM (graceful)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollhouse.cli", "serve", "--config", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = Gateway(f"http://127.0.0.1:{port}")
    url.proc = proc
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / f"{name}.log").read_text()[-3000:])
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
