"""SIGTERM with requests in flight, through a real ``tollhouse serve`` process.

A rolling deploy sends SIGTERM to a gateway that is serving. Within
``server.shutdown_timeout`` the requests in flight, streams included, finish and are
recorded as usual while new connections are refused. What outlives the timeout is cut:
a non-streamed request gets a 503 ``gateway_shutting_down`` (retry it elsewhere), a
stream ends early, and each is recorded as an error with its prompt charged as an
estimate. Before, both were recorded as successes and the non-streamed one got the
server's plain-text 500.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import mock_config
from tests.gateway_process import gateway_process

PROMPT = [{"role": "user", "content": "one two three four five six"}]


def config(tmp_path: Path, shutdown_timeout: float | None) -> dict[str, Any]:
    raw = mock_config()
    raw["backends"][0]["timeouts"] = {"read": 10, "stream_idle": 10}
    raw["models"] += [{"name": "wait", "backend": "mock", "model": "echo-delay-1500"},
                      {"name": "drip", "backend": "mock", "model": "echo-chunkdelay-300"}]  # fmt: skip
    raw["store"] = {"url": f"sqlite+aiosqlite:///{tmp_path}/store.db"}
    raw["auth"] = {"required": False}
    if shutdown_timeout is not None:
        raw["server"]["shutdown_timeout"] = shutdown_timeout
    return raw


def ask(url: str, model: str, stream: bool, into: dict[str, Any]) -> None:
    """One request, its status and body (or the transport error) kept in ``into``."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "stream": stream}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            into[model] = (r.status_code, r.read())
    except httpx.TransportError as err:
        into[model] = ("cut", repr(err))


def ledger(tmp_path: Path) -> dict[str, tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "store.db")
    try:
        rows = db.execute(
            "SELECT model, status, outcome, error_type, input_tokens, output_tokens, token_source "
            "FROM ledger"
        ).fetchall()
    finally:
        db.close()
    return {row[0]: row[1:] for row in rows}


def sigterm_while_serving(tmp_path: Path, shutdown_timeout: float | None) -> tuple[Any, ...]:
    """Start ``wait`` (1.5 s, not streamed) and ``drip`` (9 chunks 0.3 s apart), SIGTERM
    0.5 s in; return the answers, what a new request met, and the seconds to exit."""
    answers: dict[str, Any] = {}
    with gateway_process(config(tmp_path, shutdown_timeout), tmp_path) as url:
        calls = [threading.Thread(target=ask, args=(url, "wait", False, answers)),
                 threading.Thread(target=ask, args=(url, "drip", True, answers))]  # fmt: skip
        for call in calls:
            call.start()
        time.sleep(0.5)
        url.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # the listener is closed: go elsewhere
            httpx.get(url + "/health", timeout=2)
        for call in calls:
            call.join(timeout=30)
        url.proc.wait(timeout=30)
        took = time.monotonic() - stopped
    return answers, took


def test_requests_in_flight_finish_and_are_recorded_before_the_gateway_exits(
    tmp_path: Path,
) -> None:
    answers, took = sigterm_while_serving(tmp_path, shutdown_timeout=None)  # 30 s default
    status, body = answers["wait"]
    assert status == 200 and b'"finish_reason":"stop"' in body
    status, body = answers["drip"]
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    assert took < 10  # it exits once they are done, not after the whole grace period
    rows = ledger(tmp_path)
    assert rows["wait"][:3] == (200, "success", None) and rows["wait"][5] == "reported"
    assert rows["drip"][:3] == (200, "success", None) and rows["drip"][5] == "reported"


def test_requests_outliving_shutdown_timeout_are_cut_and_recorded_as_errors(
    tmp_path: Path,
) -> None:
    answers, took = sigterm_while_serving(tmp_path, shutdown_timeout=0.5)
    status, body = answers["wait"]
    assert status == 503 and b'"code":"gateway_shutting_down"' in body
    assert answers["drip"][0] == "cut"  # the stream ended before its last chunk
    assert took < 6
    rows = ledger(tmp_path)
    wait, drip = rows["wait"], rows["drip"]
    assert wait[:3] == (503, "error", "server_error")
    assert wait[3] > 0 and wait[4] == 0 and wait[5] == "estimated"  # the prompt it sent
    assert drip[:3] == (200, "error", "server_error")  # its headers had said 200
    assert drip[3] > 0 and 0 < drip[4] < 9 and drip[5] == "estimated"  # the chunks seen
