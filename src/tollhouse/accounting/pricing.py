"""Prices and cost: a pure function of (usage, price) → Decimal USD.

Prices come from the config override (per model, then per backend) or from
``genai-prices``. Looking a model up in genai-prices costs ~180 µs, so a
``PriceBook`` resolves each (backend, upstream model) once and keeps a flat
``Price``; computing a cost is then a handful of Decimal operations.

Tiers follow genai-prices' "cliff" model: when the prompt crosses a tier's
threshold, that tier's rate applies to all tokens of the request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from tollhouse.accounting.usage import Usage
from tollhouse.config.schema import BackendConfig, Prices

log = logging.getLogger("tollhouse.pricing")

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens, with optional cliff tiers ``((threshold, rate), ...)``."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()

    def at(self, prompt_tokens: int) -> Decimal:
        rate = self.base
        for start, tier_rate in self.tiers:
            if prompt_tokens > start:
                rate = tier_rate
        return rate


@dataclass(frozen=True, slots=True)
class Price:
    input: Rate
    output: Rate
    cached_input: Rate
    cache_write_input: Rate
    source: str  # "config" or "genai-prices"


def cost(usage: Usage, price: Price) -> Decimal:
    """Exact USD cost of ``usage`` at ``price``.

    Cached and cache-write tokens are part of ``usage.input`` and are charged at
    their own rates instead of the plain input rate.
    """
    n = usage.input
    plain = max(0, usage.input - usage.cached_input - usage.cache_write_input)
    total = (
        plain * price.input.at(n)
        + usage.cached_input * price.cached_input.at(n)
        + usage.cache_write_input * price.cache_write_input.at(n)
        + usage.output * price.output.at(n)
    )
    return total / MILLION


def price_from_config(prices: Prices) -> Price:
    """A flat price from the config; cached input defaults to the input rate
    (never to zero: an unknown discount must not under-count spend)."""
    cached = prices.cached_input if prices.cached_input is not None else prices.input
    write = prices.cache_write_input if prices.cache_write_input is not None else prices.input
    return Price(Rate(prices.input), Rate(prices.output), Rate(cached), Rate(write), "config")


def _rate(value: object, fallback: Rate | None) -> Rate | None:
    if value is None:
        return fallback
    if isinstance(value, Decimal):
        return Rate(value)
    base = getattr(value, "base", None)
    tiers = getattr(value, "tiers", None)
    if isinstance(base, Decimal) and isinstance(tiers, list):
        return Rate(base, tuple((int(t.start), Decimal(t.price)) for t in tiers))
    return fallback


def price_from_genai_prices(provider_id: str, model: str) -> Price | None:
    """Look a model up in genai-prices' bundled snapshot; ``None`` if it is unknown."""
    from genai_prices.data_snapshot import get_snapshot

    try:
        _provider, info = get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
    mp = info.get_prices(datetime.now(tz=UTC))
    input_rate = _rate(getattr(mp, "input_mtok", None), None)
    output_rate = _rate(getattr(mp, "output_mtok", None), None)
    if input_rate is None and output_rate is None:
        return None
    input_rate = input_rate or Rate(ZERO)  # e.g. an output-priced-only model
    output_rate = output_rate or Rate(ZERO)
    cached = _rate(getattr(mp, "cache_read_mtok", None), input_rate) or input_rate
    write = _rate(getattr(mp, "cache_write_mtok", None), input_rate) or input_rate
    return Price(input_rate, output_rate, cached, write, "genai-prices")


class PriceBook:
    """Resolves and caches the price of each (backend, upstream model) pair."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, Prices | None], Price | None] = {}
        self._warned: set[tuple[str, str]] = set()

    def price(
        self, backend: BackendConfig, upstream_model: str, override: Prices | None = None
    ) -> Price | None:
        key = (
            backend.name,
            upstream_model,
            override,
        )  # two public names may price one model differently
        try:
            return self._cache[key]
        except KeyError:
            pass
        found: Price | None
        if override is not None:
            found = price_from_config(override)
        elif backend.prices is not None:
            found = price_from_config(backend.prices)
        else:
            provider_id = backend.genai_price_provider()
            found = price_from_genai_prices(provider_id, upstream_model) if provider_id else None
        self._cache[key] = found
        return found

    def warn_unpriced(self, backend: str, model: str) -> None:
        """Log once per (backend, model) that requests are not costed."""
        key = (backend, model)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "model_unpriced: backend=%s model=%s has no price in genai-prices and no "
            "override in the config; its requests are counted in llm_unpriced_requests_total",
            backend,
            model,
        )
