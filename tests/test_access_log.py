"""One structured JSON access-log line per request, built from the UsageEvent, no secrets."""

from __future__ import annotations

import io
import logging

import httpx
import orjson
import pytest

from bench.mock_upstream import MockUpstream
from tests.conftest import mock_config, run_gateway
from tests.test_ledger_writer import EVENT
from tollhouse.accesslog import AccessLog, BatchingStreamHandler, record

SECRET = "sk-live-0123456789abcdef-secret"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "tollhouse.access"]


def test_one_json_line_per_request_with_the_event_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollhouse.access")
    with run_gateway(mock_config()) as gw, httpx.Client(base_url=gw.v1) as http:
        http.post("/chat/completions", json={"model": "chat", "max_tokens": 2,
                                             "messages": [{"role": "user", "content": "a b"}]},
                  headers={"x-request-id": "log-1"})  # fmt: skip
        with http.stream("POST", "/chat/completions",
                         json={"model": "chat", "stream": True, "max_tokens": 3,
                               "messages": [{"role": "user", "content": "a b"}]}) as r:  # fmt: skip
            r.read()
        http.post("/chat/completions", content=b"{nope")
        events = gw.wait_events(3)
    lines = access_lines(caplog)
    assert len(lines) == 3
    by_id = {line["request_id"]: line for line in lines}
    first = by_id["log-1"]
    assert first["model"] == "chat" and first["backend"] == "mock" and first["status"] == 200
    assert first["outcome"] == "success" and first["stream"] is False
    assert first["tokens"] == {"input": 4, "output": 2, "cached_input": 0, "cache_write_input": 0,
                               "reasoning": 0, "source": "reported"}  # fmt: skip
    assert first["cost_usd"] == str(events[0].cost) == "0.000011"  # 4*1.5 + 2*2.5 per million
    assert isinstance(first["latency_ms"], float) and first["ttft_ms"] is None
    stream = next(line for line in lines if line["stream"] is True)
    assert isinstance(stream["ttft_ms"], float) and stream["ttft_ms"] <= stream["latency_ms"]
    bad = next(line for line in lines if line["status"] == 400)
    assert bad["error_type"] == "bad_request" and bad["model"] == "none"


def test_no_secret_reaches_logs_metrics_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The upstream API key (from the environment) appears in no log line, metric or error."""
    caplog.set_level(logging.DEBUG)
    with MockUpstream() as up:
        config = {
            "backends": [{"name": "up", "provider": "openai", "base_url": up.base_url + "/v1",
                          "api_key_env": "UPSTREAM_KEY", "prices": {"input": 1, "output": 1}}],
            "models": [{"name": "ok", "backend": "up", "model": "m"},
                       {"name": "bad", "backend": "up", "model": "m-fail-401"}],
        }  # fmt: skip
        with (
            run_gateway(config, environ={"UPSTREAM_KEY": SECRET}) as gw,
            httpx.Client(base_url=gw.v1, headers={"authorization": f"Bearer {SECRET}"}) as http,
        ):
            msg = [{"role": "user", "content": "hi"}]
            assert (
                http.post("/chat/completions", json={"model": "ok", "messages": msg}).status_code
                == 200
            )
            failed = http.post("/chat/completions", json={"model": "bad", "messages": msg})
            assert failed.status_code == 502 and SECRET not in failed.text
            scrape = httpx.get(gw.url + "/metrics").text
            gw.wait_events(2)
    assert SECRET not in scrape
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert all(SECRET not in str(r.__dict__) for r in caplog.records)


def _logger_with_handler(name: str) -> tuple[logging.Logger, io.StringIO, BatchingStreamHandler]:
    """A logger set up as ``tollhouse serve`` sets up the access log, writing to a buffer."""
    log = logging.getLogger(name)
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO)
    out = io.StringIO()
    handler = BatchingStreamHandler(out, interval=3600)
    log.addHandler(handler)
    return log, out, handler


def test_the_cli_handler_gets_lines_written_directly_and_identically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only the CLI's handler attached, lines skip LogRecord creation (half the sink's
    cost) and are the bytes the logging path would have written."""
    log, out, handler = _logger_with_handler("tollhouse.test.access.direct")
    made: list[logging.LogRecord] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: object, **kwargs: object) -> logging.LogRecord:
        made.append(factory(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(logging, "_logRecordFactory", counting)
    try:
        AccessLog(log)(EVENT)
        assert made == []  # the direct path: no record built
        handler.flush_now()
        direct = out.getvalue()
        out.seek(0), out.truncate()
        log.addFilter(seen := RecordingFilter())  # an observer: the normal path again
        AccessLog(log)(EVENT)
        assert len(made) == 1 and seen.records == made
        handler.flush_now()
        assert out.getvalue() == direct == orjson.dumps(record(EVENT)).decode() + "\n"
    finally:
        handler.close()


def test_any_other_logging_setup_sees_every_line_through_logging() -> None:
    """Propagation, a second handler or a changed formatter each disable the direct path."""
    for change in ("propagate", "second handler", "formatter"):
        log, out, handler = _logger_with_handler(f"tollhouse.test.access.{change}")
        if change == "propagate":  # the root logger's handlers (caplog, say) must see it
            log.propagate = True
            assert BatchingStreamHandler.sole_target(log) is None
        elif change == "second handler":
            extra = RecordingHandler()
            log.addHandler(extra)
            AccessLog(log)(EVENT)
            handler.flush_now()
            assert len(extra.records) == 1 and out.getvalue().count("\n") == 1
        else:
            handler.setFormatter(logging.Formatter("access %(message)s"))
            AccessLog(log)(EVENT)
            handler.flush_now()
            assert out.getvalue().startswith("access {")
        handler.close()


class CountingStream(io.StringIO):
    """Counts write calls: each one would be a syscall on an unbuffered stdout."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_are_written_in_batches_even_to_an_unbuffered_stream() -> None:
    """PYTHONUNBUFFERED makes stdout write through on every call, so the handler batches
    lines itself: 1,000 lines from the direct and the logging path are one write."""
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, interval=3600)
    log = logging.getLogger("tollhouse.test.access.batches")
    log.handlers.clear()
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    try:
        for i in range(1000):
            if i % 2:
                handler.write_line(f"line {i}")
            else:
                log.info("line %d", i)
        assert stream.writes == 0
        handler.flush_now()
        assert stream.writes == 1
        assert stream.getvalue().splitlines() == [f"line {i}" for i in range(1000)]
    finally:
        handler.close()


def test_a_stalled_stream_pushes_back_instead_of_queueing_without_bound() -> None:
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, interval=3600, max_pending=100)
    try:
        for i in range(250):
            handler.write_line(f"line {i}")
        assert stream.writes == 2 and stream.getvalue().count("\n") == 200
    finally:
        handler.close()
    assert stream.writes == 3 and stream.getvalue().count("\n") == 250


class RecordingFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return True


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
