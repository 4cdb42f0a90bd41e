"""Budget windows and rate-limit minutes: UTC calendar alignment, epoch-aligned durations,
stable ids, and clear errors for bad period strings."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from tollhouse.config.schema import BudgetConfig
from tollhouse.limits.periods import Period, Window, minute_window, parse_period


def ts(text: str) -> float:
    """Unix seconds of a naive ISO time read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


WINDOWS = [
    # period, now, start, end, id
    ("hourly", "2026-11-23T14:00:00", "2026-11-23T14:00", "2026-11-23T15:00", "h2026112314"),
    ("hourly", "2026-11-23T14:59:59.999", "2026-11-23T14:00", "2026-11-23T15:00", "h2026112314"),
    ("hourly", "2026-12-31T23:30:00", "2026-12-31T23:00", "2027-01-01T00:00", "h2026123123"),
    ("daily", "2026-11-23T00:00:00", "2026-11-23T00:00", "2026-11-24T00:00", "d20261123"),
    ("daily", "2028-02-28T23:59:59", "2028-02-28T00:00", "2028-02-29T00:00", "d20280228"),
    ("daily", "2028-02-29T12:00:00", "2028-02-29T00:00", "2028-03-01T00:00", "d20280229"),
    ("daily", "2026-12-31T23:59:59.5", "2026-12-31T00:00", "2027-01-01T00:00", "d20261231"),
    ("daily", "2027-01-01T00:00:00", "2027-01-01T00:00", "2027-01-02T00:00", "d20270101"),
    ("weekly", "2026-11-23T00:00:00", "2026-11-23T00:00", "2026-11-30T00:00", "w20261123"),
    ("weekly", "2026-11-22T23:59:59", "2026-11-16T00:00", "2026-11-23T00:00", "w20261116"),
    ("weekly", "2026-12-31T12:00:00", "2026-12-28T00:00", "2027-01-04T00:00", "w20261228"),
    ("weekly", "2028-03-01T08:00:00", "2028-02-28T00:00", "2028-03-06T00:00", "w20280228"),
    ("weekly", "1970-01-01T00:00:00", "1969-12-29T00:00", "1970-01-05T00:00", "w19691229"),
    ("monthly", "2026-11-30T23:59:59", "2026-11-01T00:00", "2026-12-01T00:00", "m202611"),
    ("monthly", "2026-12-31T23:59:59", "2026-12-01T00:00", "2027-01-01T00:00", "m202612"),
    ("monthly", "2027-01-01T00:00:00", "2027-01-01T00:00", "2027-02-01T00:00", "m202701"),
    ("monthly", "2028-02-29T23:59:59", "2028-02-01T00:00", "2028-03-01T00:00", "m202802"),
    ("monthly", "2027-02-28T12:00:00", "2027-02-01T00:00", "2027-03-01T00:00", "m202702"),
    ("30d", "2026-11-23T14:30:05", "2026-11-03T00:00", "2026-12-03T00:00", "p30d-692"),
    ("30d", "2026-11-03T00:00:00", "2026-11-03T00:00", "2026-12-03T00:00", "p30d-692"),
    ("30d", "2026-11-02T23:59:59", "2026-10-04T00:00", "2026-11-03T00:00", "p30d-691"),
    ("90m", "2026-11-23T14:30:05", "2026-11-23T13:30", "2026-11-23T15:00", "p90m-332489"),
    ("12h", "2026-11-23T12:00:00", "2026-11-23T12:00", "2026-11-24T00:00", "p12h-41561"),
    ("1d", "2028-02-29T12:00:00", "2028-02-29T00:00", "2028-03-01T00:00", "p1d-21243"),
    ("1w", "2026-11-23T14:30:05", "2026-11-19T00:00", "2026-11-26T00:00", "p1w-2968"),
    ("1m", "2026-11-23T14:30:05", "2026-11-23T14:30", "2026-11-23T14:31", "p1m-29924070"),
]


@pytest.mark.parametrize(("period", "now", "start", "end", "window_id"), WINDOWS)
def test_window_boundaries_and_ids(
    period: str, now: str, start: str, end: str, window_id: str
) -> None:
    """Each period's window around month ends, leap days, year ends and Mondays."""
    window = parse_period(period).window(ts(now))
    assert window == Window(ts(start), ts(end), window_id)
    assert window.start <= ts(now) < window.end


@pytest.mark.parametrize("period", ["hourly", "daily", "weekly", "monthly"])
def test_calendar_windows_tile_time_on_utc_boundaries(period: str) -> None:
    """Sampled over three years, every window contains its instant, starts on the calendar
    boundary (Monday for weeks, the 1st for months) and the next one starts at its end."""
    p = parse_period(period)
    t = ts("2026-01-01T00:00:00")
    while t < ts("2029-01-01T00:00:00"):
        w = p.window(t)
        start = datetime.fromtimestamp(w.start, UTC)
        assert w.start <= t < w.end
        assert (start.minute, start.second) == (0, 0)
        if period != "hourly":
            assert start.hour == 0
        if period == "weekly":
            assert start.isoweekday() == 1 and w.end - w.start == 7 * 86400
        if period == "monthly":
            assert start.day == 1 and datetime.fromtimestamp(w.end, UTC).day == 1
        assert p.window(w.end).start == w.end
        assert p.window(w.end - 0.001) == w
        t += 7 * 3600 + 13  # hits every hour of the day and day of the week


@pytest.mark.parametrize("period", ["30d", "7d", "1w", "2w", "45m", "5h"])
def test_durations_align_to_multiples_since_the_epoch(period: str) -> None:
    """Duration windows start at epoch + k·length, whatever the calendar says."""
    p = parse_period(period)
    for t in (0.0, 1.0, ts("2026-11-23T14:30:05"), ts("2028-02-29T00:00:00")):
        w = p.window(t)
        length = w.end - w.start
        k = int(w.start // length)
        assert w.start == k * length and w.start <= t < w.end
        assert w.id == f"p{period}-{k}"


def test_window_ids_are_stable_within_a_window_and_change_across() -> None:
    """Every instant of one window yields the same id; the next window a different one."""
    p = parse_period("daily")
    morning, evening = p.window(ts("2026-11-23T00:00:01")), p.window(ts("2026-11-23T23:59:59"))
    assert morning.id == evening.id == "d20261123"
    assert p.window(ts("2026-11-24T00:00:00")).id == "d20261124"
    assert parse_period("monthly") == Period.parse("monthly") == Period("monthly", "monthly")
    assert str(parse_period("30d")) == "30d"


@pytest.mark.parametrize(
    ("period", "now", "left"),
    [
        ("hourly", "2026-11-23T14:59:30", 30.0),
        ("hourly", "2026-11-23T14:00:00", 3600.0),
        ("daily", "2026-11-23T23:59:59.25", 0.75),
        ("monthly", "2026-02-28T00:00:00", 86400.0),
        ("monthly", "2028-02-28T00:00:00", 2 * 86400.0),
    ],
)
def test_seconds_left_counts_down_to_the_window_end(period: str, now: str, left: float) -> None:
    """seconds_left is what Retry-After should say at ``now``."""
    window = parse_period(period).window(ts(now))
    assert window.seconds_left(ts(now)) == pytest.approx(left)


def test_seconds_left_is_zero_after_the_window_ended() -> None:
    """A window asked about a later instant never reports negative time."""
    window = parse_period("hourly").window(ts("2026-11-23T14:00:00"))
    assert window.seconds_left(ts("2026-11-23T16:00:00")) == 0.0


@pytest.mark.parametrize(
    ("now", "minute", "end"),
    [
        (0.0, 0, 60.0),
        (59.999, 0, 60.0),
        (60.0, 1, 120.0),
        (ts("2026-11-23T14:30:05"), 29924070, ts("2026-11-23T14:31:00")),
    ],
)
def test_minute_window_is_the_unix_minute(now: float, minute: int, end: float) -> None:
    """Rate limits count per fixed minute; its id is the unix minute number."""
    assert minute_window(now) == (minute, end)


BAD = ["", "0d", "01d", "1y", "30", "d", "-1d", "1.5h", "30D", "Daily", " daily", "daily\n", "1dd", "weekly1"]  # fmt: skip


@pytest.mark.parametrize("text", BAD)
def test_bad_period_strings_raise_a_clear_value_error(text: str) -> None:
    """The error names the bad value and lists what is allowed."""
    with pytest.raises(ValueError, match="invalid budget period") as caught:
        parse_period(text)
    assert repr(text) in str(caught.value)
    assert "hourly, daily, weekly, monthly" in str(caught.value)


@pytest.mark.parametrize("text", [*BAD, "hourly", "daily", "weekly", "monthly", "90m", "99999w"])
def test_parse_period_accepts_exactly_what_the_config_accepts(text: str) -> None:
    """A period that passed config validation can never fail at request time, and back."""
    try:
        BudgetConfig(scope="end_user", max_usd=Decimal(1), period=text)
        config_ok = True
    except ValidationError:
        config_ok = False
    try:
        parse_period(text)
        parsed_ok = True
    except ValueError:
        parsed_ok = False
    assert parsed_ok == config_ok
