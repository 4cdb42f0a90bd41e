"""The gateway's own log is one JSON object per line, whatever a message holds."""

from __future__ import annotations

import io
import logging
import sys

import orjson

from tollhouse.logs import JsonFormatter, log_to


def test_a_message_with_quotes_newlines_and_a_traceback_is_one_valid_json_line() -> None:
    """The old ``%``-style format pasted the message between quotes: an upstream error text
    holding a quote or a newline made the line invalid JSON."""
    record = logging.LogRecord(
        "tollhouse", logging.WARNING, __file__, 1, 'upstream said "no"\nand %s', ("\\x",), None
    )
    try:
        raise ValueError('bad "thing"')
    except ValueError:
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = orjson.loads(text)
    assert line["level"] == "WARNING" and line["logger"] == "tollhouse"
    assert line["msg"] == 'upstream said "no"\nand \\x'
    assert 'ValueError: bad "thing"' in line["exc"]


def test_uvicorn_logs_through_the_same_json_handler() -> None:
    stream = io.StringIO()
    uvicorn_error = logging.getLogger("uvicorn.error")
    root = logging.getLogger()
    saved = root.handlers[:], root.level, uvicorn_error.propagate
    try:
        log_to(stream, "info")
        log_to(stream, "info")  # configured twice (as serve does): still one line per record
        uvicorn_error.warning("Started server process [%d]", 42)  # any level uvicorn sets
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert [(x["logger"], x["msg"]) for x in lines] == [
            ("uvicorn.error", "Started server process [42]")
        ]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn_error.propagate = saved[2]
