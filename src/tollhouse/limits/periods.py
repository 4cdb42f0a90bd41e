"""Budget windows and rate-limit minutes: pure functions of unix time, all in UTC.

A budget's period (the config string) fixes which window a moment falls in;
every replica computes the same window id from the same clock reading, which
is why counter names can carry the window and no one has to reset anything.

Calendar periods, aligned to the UTC calendar:

===========  ======================================  ===============
period       window starts at                        id
===========  ======================================  ===============
``hourly``   the top of the hour                     ``h2026112314``
``daily``    00:00 UTC                               ``d20261123``
``weekly``   Monday 00:00 UTC (ISO weeks)            ``w20261123``
``monthly``  the 1st of the month, 00:00 UTC         ``m202611``
===========  ======================================  ===============

(the weekly id is the date of that Monday.)

Duration periods ``<N>m``, ``<N>h``, ``<N>d``, ``<N>w`` are fixed-length
windows aligned to multiples of the duration since the Unix epoch: ``30d``
windows start at 1970-01-01 + k·30 days, and the id is ``p30d-<k>``. They do
*not* follow the calendar: ``1d`` covers the same days as ``daily``, but ``1w``
starts on Thursdays (the epoch was a Thursday) and ``30d`` drifts against
months. Use ``weekly``/``monthly`` for calendar weeks and months.

Rate limits count per fixed 60-second window aligned to the minute; the
window id is the unix minute number (``minute_window``).

Windows start and end on whole seconds; ``now`` is floored before use, so a
float's fraction never moves a boundary.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Kind = Literal["hourly", "daily", "weekly", "monthly", "duration"]

_PATTERN = re.compile(r"(hourly|daily|weekly|monthly)|([1-9][0-9]*)([mhdw])")
_CALENDAR: dict[str, Kind] = {k: k for k in ("hourly", "daily", "weekly", "monthly")}
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DAY = 86400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True, slots=True)
class Window:
    """One budget window: ``start <= t < end`` in unix seconds, named by ``id``."""

    start: float
    end: float
    id: str

    def seconds_left(self, now: float) -> float:
        """Seconds until this window ends (0 once it has), e.g. for ``Retry-After``."""
        return max(0.0, self.end - now)


@dataclass(frozen=True, slots=True)
class Period:
    """A parsed budget period; ``seconds`` is the length of a ``duration`` window."""

    text: str
    kind: Kind
    seconds: int = 0

    @classmethod
    def parse(cls, text: str) -> Period:
        return parse_period(text)

    def window(self, now: float) -> Window:
        """The window containing ``now`` (unix seconds)."""
        t = math.floor(now)
        if self.kind == "duration":
            k = t // self.seconds
            start, end = k * self.seconds, (k + 1) * self.seconds
            return Window(float(start), float(end), f"p{self.text}-{k}")
        if self.kind == "monthly":
            return _month(t)
        if self.kind == "weekly":
            day = t // _DAY
            start = (day - (day + _EPOCH_WEEKDAY) % 7) * _DAY
            return Window(float(start), float(start + 7 * _DAY), _utc(start).strftime("w%Y%m%d"))
        length, fmt = (3600, "h%Y%m%d%H") if self.kind == "hourly" else (_DAY, "d%Y%m%d")
        start = t - t % length
        return Window(float(start), float(start + length), _utc(start).strftime(fmt))

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=256)
def parse_period(text: str) -> Period:
    """Parse a config period string; ``ValueError`` names the bad value and what is allowed.

    Accepts exactly what the config schema's pattern accepts. Cached, because the
    admission policy parses a rule's period on every request."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid budget period {text!r}: expected hourly, daily, weekly, monthly "
            "or a duration such as 90m, 12h, 30d or 2w (a positive whole number "
            "followed by m, h, d or w)"
        )
    calendar, count, unit = match.groups()
    if calendar is not None:
        return Period(text, _CALENDAR[calendar])
    return Period(text, "duration", int(count) * _UNIT_SECONDS[unit])


def minute_window(now: float) -> tuple[int, float]:
    """(unix minute number, end of that minute): the fixed window rate limits count in."""
    minute = math.floor(now) // 60
    return minute, float((minute + 1) * 60)


def _month(t: int) -> Window:
    at = _utc(t)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return Window(start.timestamp(), end.timestamp(), start.strftime("m%Y%m"))


def _utc(t: int) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)
