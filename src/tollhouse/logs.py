"""The gateway's own log: one JSON object per line, whatever the message holds.

A ``%``-style format that pastes the message between quotes writes invalid JSON as
soon as a message carries a quote, a backslash or a newline (an upstream's error
text, a traceback), and a log pipeline then drops or mangles exactly the lines an
operator needs. uvicorn's own loggers are routed through the same handler, so its
start and stop lines are JSON too.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import orjson

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg"}``, plus ``"exc"`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line).decode()


def log_to(stream: TextIO | None, level: str) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(old)  # configured again (uvicorn's dictConfig ran in between)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in UVICORN_LOGGERS:
        uv = logging.getLogger(name)
        uv.handlers.clear()  # uvicorn's plain-text handler
        uv.propagate = True
