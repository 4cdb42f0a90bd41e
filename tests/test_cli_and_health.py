"""The ``tollhouse`` command as a user runs it, and the health endpoints."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson

from tollhouse.app import App
from tollhouse.config import load_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_on_embedded_defaults_answers_and_logs_then_stops_cleanly() -> None:
    """`tollhouse serve` with no config: the mock answers, /metrics counts it, SIGTERM stops it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollhouse.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "gateway did not start"
            time.sleep(0.1)
        r = httpx.post(url + "/v1/chat/completions",
                       json={"model": "mock-chat", "messages": [{"role": "user", "content": "hello world"}]})  # fmt: skip
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "hello world"
        scrape = httpx.get(url + "/metrics").text
        assert (
            'key="anonymous",model="mock-chat",outcome="success",provider="mock",status_class="2xx",team="none"}'
            in scrape
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    # uvicorn re-raises the signal after a graceful shutdown, as a process killed by it would
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err
    lines = [orjson.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert [line["model"] for line in lines] == ["mock-chat"]


def test_a_running_gateway_writes_access_lines_within_a_second_whatever_the_buffering() -> None:
    """Lines are batched by the access log's own writer, which must survive uvicorn's
    logging setup: with a block-buffered stdout (no PYTHONUNBUFFERED) a line still
    appears while the gateway runs, not only at exit or once 8 KB have piled up."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollhouse.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "gateway did not start"
            time.sleep(0.1)
        body = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 2
        while b"\n" not in seen and time.monotonic() < deadline:
            seen += os.read(proc.stdout.fileno(), 65536) if _readable(proc.stdout) else b""
            time.sleep(0.05)
        assert orjson.loads(seen.splitlines()[0])["model"] == "mock-chat"
        assert proc.poll() is None  # still serving: the line did not wait for exit
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _readable(stream: Any) -> bool:
    return bool(select.select([stream], [], [], 0)[0])


def test_serve_refuses_an_invalid_config(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: []\nmodels: []\nbogus: 1\n")
    result = subprocess.run([sys.executable, "-m", "tollhouse.cli", "serve", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 2
    assert "bogus: unknown field" in result.stderr


def test_serve_refuses_several_workers_with_memory_counters() -> None:
    """Each worker would keep its own copy of every budget and limit: refused, with the fix;
    a worker count below one is refused by the argument parser."""
    serve = [sys.executable, "-m", "tollhouse.cli", "serve", "--port", "0", "--workers"]
    result = subprocess.run([*serve, "3"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--workers 3 needs limits.backend: redis" in result.stderr
    assert "up to 3 times a budget" in result.stderr
    result = subprocess.run([*serve, "0"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "must be at least 1" in result.stderr


async def test_readiness_follows_the_lifespan() -> None:
    """Before start-up (or after shutdown) the gateway is live but not ready."""
    app = App(load_config(None))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/health/ready", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 503
    async with app.lifespan():
        sent.clear()
        await app(scope, receive, send)
        assert sent[0]["status"] == 200
        sent.clear()
        await app({**scope, "path": "/health"}, receive, send)
        assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"status":"ok"}'
    sent.clear()
    await app(scope, receive, send)
    assert sent[0]["status"] == 503
