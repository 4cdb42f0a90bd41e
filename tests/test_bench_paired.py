"""``bench.paired``: the harness behind the interleaved concurrency-1 line of ``bench.run``.

Two mocks stand in for "direct" and "gateway", the second 20 ms slower: the paired
difference must find those 20 ms, for whole answers and streams alike, and a leg that
cannot be reached must show up as errors, never as numbers.
"""

from __future__ import annotations

import socket

import pytest

from bench.mock_upstream import MockUpstream
from bench.paired import describe, run_paired

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_paired_difference_is_what_the_second_leg_adds(stream: bool) -> None:
    with MockUpstream(record=False) as fast, MockUpstream(delay_ms=20, record=False) as slow:
        result = await run_paired(
            fast.base_url + CHAT, slow.base_url + CHAT, stream=stream, duration=1.0, warmup=0.2
        )
    assert result.errors == 0
    assert result.pairs >= 10
    assert result.paired_p50 is not None and result.added_p50 is not None
    assert 18 <= result.paired_p50 <= 40
    assert 18 <= result.added_p50 <= 40
    if stream:
        assert result.paired_ttft_p50 is not None and 18 <= result.paired_ttft_p50 <= 40
        assert "TTFT" in describe(result)
    else:
        assert result.paired_ttft_p50 is None


async def test_an_unreachable_leg_is_counted_as_errors_with_no_numbers() -> None:
    with MockUpstream(record=False) as up:
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}{CHAT}"
        result = await run_paired(up.base_url + CHAT, url, stream=False, duration=0.3, warmup=0)
    assert result.pairs == 0
    assert result.errors > 0
    assert result.paired_p50 is None
    assert any("gateway" in sample for sample in result.error_samples)
    assert describe(result).startswith("- ms p50")
