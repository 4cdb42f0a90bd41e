"""Cost is a pure function of (usage, price) → Decimal, checked against genai-prices."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from genai_prices import Usage as GUsage
from genai_prices import calc_price

from tests.conftest import mock_config, run_gateway
from tollhouse.accounting.pricing import (
    Price,
    PriceBook,
    Rate,
    cost,
    price_from_config,
    price_from_genai_prices,
)
from tollhouse.accounting.usage import Usage
from tollhouse.config import parse_config
from tollhouse.config.schema import Prices

FLAT = Price(Rate(Decimal(2)), Rate(Decimal(8)), Rate(Decimal(1)), Rate(Decimal("2.5")), "config")
TIERED = Price(
    Rate(Decimal(3), ((200_000, Decimal(6)),)),
    Rate(Decimal(15), ((200_000, Decimal("22.5")),)),
    Rate(Decimal("0.3"), ((200_000, Decimal("0.6")),)),
    Rate(Decimal("3.75"), ((200_000, Decimal("7.5")),)),
    "genai-prices",
)


@pytest.mark.parametrize(
    ("usage", "price", "expected"),
    [
        (Usage(), FLAT, "0"),
        (Usage(input=1_000_000), FLAT, "2"),
        (Usage(output=1), FLAT, "0.000008"),
        (Usage(input=1000, output=500), FLAT, "0.006"),
        # 600 plain at 2 + 300 cached at 1 + 100 written at 2.5
        (Usage(input=1000, cached_input=300, cache_write_input=100), FLAT, "0.00175"),
        (Usage(input=7, output=3, reasoning=2), FLAT, "0.000038"),  # reasoning is inside output
        (Usage(input=200_000, output=10), TIERED, "0.60015"),  # at the threshold: base rates
        (Usage(input=200_001, output=10), TIERED, "1.200231"),  # past it: all tokens at the tier
    ],
)
def test_cost_table(usage: Usage, price: Price, expected: str) -> None:
    assert cost(usage, price) == Decimal(expected)


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
     ("anthropic", "claude-3-5-haiku-latest"), ("google", "gemini-2.5-pro")],
)  # fmt: skip
@pytest.mark.parametrize(
    "usage",
    [Usage(input=1234, output=567), Usage(input=5000, output=10, cached_input=3000, cache_write_input=500),
     Usage(input=250_000, output=1000, cached_input=10_000)],
)  # fmt: skip
def test_flat_price_equals_genai_prices_exactly(provider: str, model: str, usage: Usage) -> None:
    """Our cached flat price gives genai-prices' own answer, to the last digit."""
    price = price_from_genai_prices(provider, model)
    assert price is not None
    theirs = calc_price(
        GUsage(input_tokens=usage.input, output_tokens=usage.output,
               cache_read_tokens=usage.cached_input, cache_write_tokens=usage.cache_write_input),
        model_ref=model, provider_id=provider,
    ).total_price  # fmt: skip
    assert cost(usage, price) == theirs


def test_unknown_model_has_no_price() -> None:
    assert price_from_genai_prices("openai", "definitely-not-a-model") is None


def test_override_defaults_cached_rates_to_input_rate_never_zero() -> None:
    price = price_from_config(Prices(input=Decimal(3), output=Decimal(4)))
    assert price.cached_input.base == price.cache_write_input.base == Decimal(3)


def test_price_precedence_model_then_backend_then_genai_prices() -> None:
    config = parse_config({
        "backends": [{"name": "oa", "provider": "openai", "base_url": "http://x/v1"},
                     {"name": "priced", "provider": "openai", "base_url": "http://x/v1",
                      "prices": {"input": 5, "output": 6}}],
        "models": [{"name": "a", "backend": "oa", "model": "gpt-4o"},
                   {"name": "b", "backend": "oa", "model": "gpt-4o", "prices": {"input": 9, "output": 9}},
                   {"name": "c", "backend": "priced", "model": "gpt-4o"}],
    })  # fmt: skip
    book = PriceBook()
    oa, priced = config.backends
    a = book.price(oa, "gpt-4o", None)
    assert a is not None and (a.source, a.input.base) == ("genai-prices", Decimal("2.5"))
    b = book.price(oa, "gpt-4o", config.models[1].prices)
    assert b is not None and (b.source, b.input.base) == ("config", Decimal(9))
    c = book.price(priced, "gpt-4o", None)
    assert c is not None and c.input.base == Decimal(5)


def test_unpriced_model_is_counted_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    """Never silently costed at zero: counted in its own counter, one warning per model."""
    import httpx

    caplog.set_level(logging.WARNING, logger="tollhouse.pricing")
    config = mock_config()
    config["backends"].append({"name": "free", "provider": "mock"})
    config["models"].append({"name": "unpriced", "backend": "free", "model": "echo"})
    with run_gateway(config) as gw:
        for _ in range(3):
            httpx.post(gw.v1 + "/chat/completions",
                       json={"model": "unpriced", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
        events = gw.wait_events(3)
        assert all(e.cost is None for e in events)
        assert (
            gw.metric(
                "llm_unpriced_requests_total", model="unpriced", backend="free", provider="mock"
            )
            == 3
        )
        assert gw.total("llm_cost_usd_total", model="unpriced") == 0
    warnings = [r for r in caplog.records if "model_unpriced" in r.getMessage()]
    assert len(warnings) == 1
