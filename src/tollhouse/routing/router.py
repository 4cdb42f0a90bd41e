"""Resolve a public model name to the deployment that serves it.

Each backend gets one adapter (its wire format) and one transport (its
connection pool), built once at start-up; resolving is a dict lookup.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import get_args

from tollhouse.accounting.pricing import Price, PriceBook
from tollhouse.config.schema import (
    BackendConfig,
    Config,
    CooldownConfig,
    ErrorClass,
    ModelConfig,
)
from tollhouse.errors import ModelNotFound
from tollhouse.providers.anthropic import AnthropicAdapter
from tollhouse.providers.base import Adapter, Target, Transport
from tollhouse.providers.h1 import H1Transport
from tollhouse.providers.http import HttpTransport
from tollhouse.providers.mock import MockTransport
from tollhouse.providers.openai import AzureOpenAIAdapter, OpenAIAdapter
from tollhouse.routing.health import DeploymentHealth
from tollhouse.routing.strategies import STRATEGIES


@dataclass(frozen=True, slots=True, eq=False)
class Deployment:
    """One backend + upstream model serving a public model; its health is live state."""

    model: str  # the public name of its group
    target: Target
    adapter: Adapter
    transport: Transport
    price: Price | None
    weight: float = 1.0
    priority: int = 0
    health: DeploymentHealth = field(default_factory=lambda: DeploymentHealth(CooldownConfig()))

    @property
    def latency(self) -> float | None:
        return self.health.latency

    @property
    def in_flight(self) -> int:
        return self.health.in_flight

    @property
    def unit_price(self) -> Decimal | None:
        """Input plus output price per million tokens: what ``lowest_cost`` compares."""
        return None if self.price is None else self.price.input.base + self.price.output.base


@dataclass(frozen=True, slots=True)
class ModelGroup:
    """A public model: its deployments, how to choose among them, and what to do on failure."""

    name: str
    deployments: tuple[Deployment, ...]
    config: ModelConfig

    def order(self, rng: random.Random) -> list[Deployment]:
        """Available deployments, best first by the group's strategy. When every one is
        cooled down, all of them, soonest back first: a group never refuses on its own."""
        if len(self.deployments) == 1:  # the common case: nothing to choose, nothing to draw
            return list(self.deployments)
        ready = [d for d in self.deployments if d.health.available()]
        if not ready:
            return sorted(
                self.deployments, key=lambda d: max(d.health.cooled_until, d.health.exhausted_until)
            )
        ordered = STRATEGIES[self.config.strategy](ready, rng)
        return [d for d in ordered if isinstance(d, Deployment)]

    def fallbacks_for(self, error_class: str) -> list[str]:
        out: list[str] = []
        for rule in self.config.fallbacks:
            if matches(error_class, rule.when):
                out += [m for m in rule.to if m not in out]
        return out


def make_adapter(backend: BackendConfig) -> Adapter:
    if backend.provider == "anthropic":
        return AnthropicAdapter()
    if backend.provider == "azure":
        return AzureOpenAIAdapter()
    return OpenAIAdapter()  # openai-compatible and the in-process mock


def make_transport(backend: BackendConfig) -> Transport:
    """The lean HTTP/1.1 client by default (measured: about half aiohttp's time per call);
    aiohttp where its features are needed (HTTP(S)_PROXY, HTTP/1.1 extras)."""
    if backend.provider == "mock":
        return MockTransport(backend.timeouts)
    if backend.http_client == "aiohttp":
        return HttpTransport(backend.timeouts, backend.max_connections)
    return H1Transport(backend.timeouts, backend.max_connections)


def matches(error_class: str, when: Sequence[str]) -> bool:
    """Does a fallback rule's ``when`` list take this error class (``any``: every class)?"""
    return error_class in when or "any" in when


# What ``any`` stands for in a retry rule: every class a rule may name. A refusal such
# as bad_request or auth would fail the same way again, so no list retries it.
RETRY_ANY = frozenset(get_args(ErrorClass)) - {"any"}


def retried(error_class: str, when: Sequence[str]) -> bool:
    """Does a retry rule's ``when`` list take this error class?"""
    return error_class in when or ("any" in when and error_class in RETRY_ANY)


def make_target(backend: BackendConfig, upstream_model: str, environ: Mapping[str, str]) -> Target:
    key = environ.get(backend.api_key_env) if backend.api_key_env else None
    return Target(
        backend=backend.name,
        provider=backend.provider,
        base_url=backend.base_url or "mock://",
        upstream_model=upstream_model,
        api_key=key,
        api_version=backend.api_version,
        # Names in lower case, as the adapters write theirs: HTTP header names ignore case,
        # so a configured ``Authorization`` must replace the adapter's ``authorization`` (or
        # be replaced by it), not go out as a second header beside it.
        headers={name.lower(): value for name, value in backend.headers.items()},
        stream_usage=backend.stream_usage,
        default_max_tokens=backend.default_max_tokens,
    )


class Router:
    """Holds every group and deployment; must be built inside the running event loop."""

    def __init__(
        self,
        config: Config,
        prices: PriceBook,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._transports: dict[str, Transport] = {}
        adapters: dict[str, Adapter] = {}
        for backend in config.backends:
            self._transports[backend.name] = make_transport(backend)
            adapters[backend.name] = make_adapter(backend)
        self._groups: dict[str, ModelGroup] = {}
        for model in config.models:
            deployments = []
            for dep in model.group():
                backend = config.backend(dep.backend)
                deployments.append(Deployment(
                    model=model.name, target=make_target(backend, dep.model, env),
                    adapter=adapters[backend.name], transport=self._transports[backend.name],
                    price=prices.price(backend, dep.model, dep.prices),
                    weight=dep.weight, priority=dep.priority,
                    health=DeploymentHealth(model.cooldown, clock),
                ))  # fmt: skip
            self._groups[model.name] = ModelGroup(model.name, tuple(deployments), model)
        self.model_names: tuple[str, ...] = tuple(m.name for m in config.models)

    def resolve(self, model: str) -> ModelGroup:
        try:
            return self._groups[model]
        except KeyError:
            raise ModelNotFound(
                f"The model '{model[:200]}' does not exist or you do not have access to it.",
                param="model",
            ) from None

    def groups(self) -> list[ModelGroup]:
        return list(self._groups.values())

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
