"""Resolve a public model name to the deployment that serves it.

Each backend gets one adapter (its wire format) and one transport (its
connection pool), built once at start-up; resolving is a dict lookup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from tollhouse.accounting.pricing import Price, PriceBook
from tollhouse.config.schema import BackendConfig, Config
from tollhouse.errors import ModelNotFound
from tollhouse.providers.anthropic import AnthropicAdapter
from tollhouse.providers.base import Adapter, Target, Transport
from tollhouse.providers.h1 import H1Transport
from tollhouse.providers.http import HttpTransport
from tollhouse.providers.mock import MockTransport
from tollhouse.providers.openai import AzureOpenAIAdapter, OpenAIAdapter


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str  # public name
    target: Target
    adapter: Adapter
    transport: Transport
    price: Price | None


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


def make_target(backend: BackendConfig, upstream_model: str, environ: Mapping[str, str]) -> Target:
    key = environ.get(backend.api_key_env) if backend.api_key_env else None
    return Target(
        backend=backend.name,
        provider=backend.provider,
        base_url=backend.base_url or "mock://",
        upstream_model=upstream_model,
        api_key=key,
        api_version=backend.api_version,
        headers=dict(backend.headers),
        stream_usage=backend.stream_usage,
        default_max_tokens=backend.default_max_tokens,
    )


class Router:
    """Holds every deployment; must be built inside the running event loop."""

    def __init__(
        self, config: Config, prices: PriceBook, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self._transports: dict[str, Transport] = {}
        adapters: dict[str, Adapter] = {}
        for backend in config.backends:
            self._transports[backend.name] = make_transport(backend)
            adapters[backend.name] = make_adapter(backend)
        self._deployments: dict[str, Deployment] = {}
        for model in config.models:
            backend = config.backend(model.backend)
            self._deployments[model.name] = Deployment(
                model=model.name,
                target=make_target(backend, model.model, env),
                adapter=adapters[backend.name],
                transport=self._transports[backend.name],
                price=prices.price(backend, model.model, model.prices),
            )
        self.model_names: tuple[str, ...] = tuple(m.name for m in config.models)

    def resolve(self, model: str) -> Deployment:
        try:
            return self._deployments[model]
        except KeyError:
            raise ModelNotFound(
                f"The model '{model[:200]}' does not exist or you do not have access to it.",
                param="model",
            ) from None

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()
