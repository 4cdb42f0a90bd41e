"""The seams between the proxy and the providers.

``Transport.send`` is the only place bytes leave the process (an aiohttp pool in
production, an in-process generator for the ``mock`` provider, anything in
tests). ``Adapter`` is pure: it builds requests, parses responses, and
classifies errors, so each wire format is testable without a network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tollhouse.accounting.usage import Usage
from tollhouse.errors import UpstreamError


@dataclass(slots=True)
class UpstreamRequest:
    """One HTTP call to a provider, fully built (URL, auth headers, encoded body)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool = False


class UpstreamResponse(Protocol):
    """A provider's answer. ``headers`` keys are lower-case."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_lines(self) -> AsyncIterator[bytes]:
        """Yield the body line by line (``\\n`` stripped), for SSE streams."""
        ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    """The one-method seam through which every upstream call goes."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the status and headers are in.

        Raises ``UpstreamError`` (never a foreign exception) for network
        failures and timeouts.
        """
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where one public model goes: the backend's settings plus the upstream model id."""

    backend: str
    provider: str
    base_url: str
    upstream_model: str
    api_key: str | None = None
    api_version: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    stream_usage: bool = True
    default_max_tokens: int = 4096


@dataclass(frozen=True, slots=True)
class Parsed:
    """A whole (non-streamed) answer translated to OpenAI format."""

    body: bytes
    usage: Usage | None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the upstream said about its own remaining quota (``x-ratelimit-remaining-*``)."""

    remaining_requests: float | None = None
    remaining_tokens: float | None = None


class StreamTranslator(Protocol):
    """Turns upstream SSE lines into OpenAI-format SSE bytes for the client.

    State the proxy reads after each ``feed``:
    ``content_chunks`` (chunks that carried generated content; the first one
    marks the time to first token, and the count is the output-token estimate
    when no usage arrives), ``usage`` (the latest usage the upstream reported),
    ``error`` (an in-stream upstream error), ``done`` (the end marker arrived) and
    ``complete`` (the answer is whole: its final usage or its end marker arrived; a
    stream that ends without it was cut short).
    """

    content_chunks: int
    usage: Usage | None
    error: UpstreamError | None
    done: bool

    @property
    def complete(self) -> bool: ...

    def feed(self, line: bytes) -> list[bytes]:
        """Consume one upstream line; return zero or more complete SSE events to relay."""
        ...

    def finish(self) -> list[bytes]:
        """Upstream ended cleanly; return the closing events (e.g. ``data: [DONE]``)."""
        ...


class Adapter(Protocol):
    """A wire format: pure translation and classification, no I/O."""

    provider: str

    def chat_request(
        self, body: dict[str, Any], target: Target, *, stream: bool
    ) -> UpstreamRequest:
        """Translate an OpenAI chat-completions body. For streams, ask for usage if possible."""
        ...

    def parse_chat(self, payload: bytes, target: Target) -> Parsed:
        """Translate a whole answer; raise ``UpstreamError(INVALID_RESPONSE)`` if unreadable."""
        ...

    def chat_stream(self, target: Target, *, client_wants_usage: bool) -> StreamTranslator: ...

    def embeddings_request(self, body: dict[str, Any], target: Target) -> UpstreamRequest:
        """Raise ``UpstreamError(BAD_REQUEST)`` where the wire format has no embeddings."""
        ...

    def parse_embeddings(self, payload: bytes, target: Target) -> Parsed: ...

    def classify(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """Turn a non-2xx answer into an ``UpstreamError`` with the right ``ErrorType``."""
        ...

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitInfo: ...

    def probe_request(self, target: Target) -> UpstreamRequest:
        """A cheap authenticated request (the model list) for active health checks."""
        ...
