"""Backend options reach the upstream request, end to end.

The adapters and transports have unit tests that hand them a ``Target`` or a ``Timeouts``
directly; these tests instead start the real gateway from a config dict in front of a tiny
recording upstream (an aiohttp server in a thread) and check what the upstream actually
received: which URL, which headers, which body. A ``backends[]`` option that the config
accepted but that never made it into ``make_target``/``make_transport`` fails here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import RunningGateway, run_gateway
from tests.raw_upstream import answer_once
from tollhouse.accounting.tokens import estimate_prompt_tokens

# What the recording upstream reports as usage: numbers no estimate would produce, so an
# event carrying them proves the upstream's own usage was read.
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7
STREAM_WORDS = ("alpha ", "beta ", "gamma")
MESSAGES = [{"role": "user", "content": "hello upstream, how are you"}]
CLIENT_SECRET = "client-secret-must-not-travel"


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: Any

    def all(self, name: str) -> list[str]:
        """Every value sent under ``name`` (case-insensitive): a duplicate header shows here."""
        return list(self.headers.getall(name, []))


class Recorder:
    """An OpenAI/Azure/Anthropic-shaped upstream that writes down every request.

    Chat answers carry usage ``PROMPT_TOKENS``/``COMPLETION_TOKENS``; a stream sends three
    content chunks and, like OpenAI, a usage chunk only when ``stream_options.include_usage``
    was asked for. ``delay`` holds each answer back, and ``max_active`` is the most requests
    it was serving at one time.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.seen: list[Seen] = []
        self.active = 0
        self.max_active = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        self._stopped = asyncio.Event()
        self._ready.set()
        await self._stopped.wait()
        await runner.cleanup()

    def __enter__(self) -> Recorder:
        self._thread.start()
        assert self._ready.wait(10), "recording upstream did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)
        self._sock.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":  # nothing here probes, but answer a model list anyway
            return web.json_response({"object": "list", "data": []})
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                CIMultiDict(request.headers),
                body,
            )
        )
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if request.path.endswith("/v1/messages"):
                return web.json_response(_anthropic_answer(body))
            if body.get("stream"):
                return await self._stream(request, body)
            return web.json_response(_openai_answer(body))
        finally:
            self.active -= 1

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1}
        base["model"] = body["model"]
        for word in STREAM_WORDS:
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": word}}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(b"data: " + orjson.dumps(done) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": _usage()}
            await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def chats(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def _openai_answer(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-r",
        "object": "chat.completion",
        "created": 1,
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "recorded"},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
    }


def _anthropic_answer(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_r",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": "recorded"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
    }


def _backend(provider: str, up: Recorder, **extra: Any) -> dict[str, Any]:
    """A backend of ``provider`` pointed at the recorder, in the documented base_url shape."""
    base_url = {"openai": up.url + "/v1", "azure": up.url, "anthropic": up.url}[provider]
    backend = {"name": "up", "provider": provider, "base_url": base_url, **extra}
    if provider == "azure":
        backend.setdefault("api_version", "2024-10-21")
    return backend


@contextmanager
def gateway(
    provider: str, up: Recorder, environ: dict[str, str] | None = None, **extra: Any
) -> Iterator[RunningGateway]:
    config = {
        "backends": [_backend(provider, up, **extra)],
        "models": [{"name": "m", "backend": "up", "model": "deploy-1"}],
    }
    with run_gateway(config, environ=environ) as gw:
        yield gw


def chat(gw: RunningGateway, **body: Any) -> httpx.Response:
    """A chat through the gateway, carrying a client key that must stay at the gateway."""
    payload = {"model": "m", "messages": MESSAGES, **body}
    headers = {"authorization": f"Bearer {CLIENT_SECRET}", "x-api-key": CLIENT_SECRET}
    resp = httpx.post(gw.v1 + "/chat/completions", json=payload, headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp


# -- api_key_env -------------------------------------------------------------------------

KEY_HEADER = {"openai": "authorization", "azure": "api-key", "anthropic": "x-api-key"}
KEY_VALUE = {"openai": "Bearer sk-up-123", "azure": "sk-up-123", "anthropic": "sk-up-123"}


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic"])
def test_api_key_env_reaches_upstream_in_the_provider_header(provider: str) -> None:
    """The key is read from the variable named by ``api_key_env`` and sent in the provider's
    own header (docs "Providers"); the client's key never reaches the upstream. Without the
    wiring from ``api_key_env`` to the request no key header would arrive at all."""
    with (
        Recorder() as up,
        gateway(provider, up, {"UP_KEY": "sk-up-123"}, api_key_env="UP_KEY") as gw,
    ):
        chat(gw)
    (seen,) = up.chats()
    assert seen.all(KEY_HEADER[provider]) == [KEY_VALUE[provider]]
    if provider != "openai":
        assert seen.all("authorization") == []
    if provider != "anthropic":
        assert seen.all("x-api-key") == []
    assert all(CLIENT_SECRET not in v for v in seen.headers.values())


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic"])
def test_without_api_key_env_no_credentials_are_sent(provider: str) -> None:
    """Docs: "Without it, no credentials are sent" — and in particular the client's own key
    is not passed through in their place (the contrast to the test above)."""
    with Recorder() as up, gateway(provider, up, {"UP_KEY": "sk-up-123"}) as gw:
        chat(gw)
    (seen,) = up.chats()
    for name in ("authorization", "api-key", "x-api-key"):
        assert seen.all(name) == [], name


# -- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic"])
def test_extra_headers_are_sent_with_env_interpolated(provider: str) -> None:
    """``headers`` go out with every upstream request, ``${ENV}`` (and ``${ENV:-default}``)
    values resolved from the gateway's environment; two requests both carry them."""
    headers = {
        "OpenAI-Organization": "${ORG_ID}",
        "X-Client-Name": "${CLIENT_NAME:-tollhouse}",
        "X-Static": "plain",
    }
    with Recorder() as up, gateway(provider, up, {"ORG_ID": "org-42"}, headers=headers) as gw:
        chat(gw)
        chat(gw)
    assert len(up.chats()) == 2
    for seen in up.chats():
        assert seen.all("openai-organization") == ["org-42"]
        assert seen.all("x-client-name") == ["tollhouse"]
        assert seen.all("x-static") == ["plain"]


@pytest.mark.parametrize("name", ["authorization", "Authorization"])
def test_openai_api_key_wins_over_same_named_extra_header(name: str) -> None:
    """Docs: for ``openai`` the API key header set from ``api_key_env`` wins over an extra
    header of the same name. The upstream must see exactly one Authorization, the key's,
    however the config spells the header name (HTTP header names are case-insensitive)."""
    headers = {name: "Bearer from-headers"}
    env = {"UP_KEY": "sk-up-123"}
    with Recorder() as up, gateway("openai", up, env, api_key_env="UP_KEY", headers=headers) as gw:
        chat(gw)
    (seen,) = up.chats()
    assert seen.all("authorization") == ["Bearer sk-up-123"]


@pytest.mark.parametrize("name", ["api-key", "Api-Key"])
def test_azure_api_key_wins_over_same_named_extra_header(name: str) -> None:
    """As above for ``azure``, whose key header is ``api-key``."""
    headers = {name: "from-headers"}
    env = {"UP_KEY": "sk-up-123"}
    with Recorder() as up, gateway("azure", up, env, api_key_env="UP_KEY", headers=headers) as gw:
        chat(gw)
    (seen,) = up.chats()
    assert seen.all("api-key") == ["sk-up-123"]


@pytest.mark.parametrize("case", [str.lower, str.title])
def test_anthropic_extra_headers_are_applied_last(case: Any) -> None:
    """Docs: for ``anthropic`` extra headers are applied last and may replace the defaults:
    a configured ``anthropic-version`` (and even ``x-api-key``) replaces the gateway's own,
    so the upstream sees one value each, the configured one."""
    headers = {case("anthropic-version"): "2099-01-01", case("x-api-key"): "from-headers"}
    env = {"UP_KEY": "sk-up-123"}
    with (
        Recorder() as up,
        gateway("anthropic", up, env, api_key_env="UP_KEY", headers=headers) as gw,
    ):
        chat(gw)
    (seen,) = up.chats()
    assert seen.all("anthropic-version") == ["2099-01-01"]
    assert seen.all("x-api-key") == ["from-headers"]


# -- azure api_version -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2024-10-21", "2025-01-01-preview"])
def test_azure_request_goes_to_the_deployment_url_with_api_version(version: str) -> None:
    """Docs "Providers": ``{base_url}/openai/deployments/{model}/chat/completions
    ?api-version={api_version}``; two versions so a hard-coded one cannot pass."""
    with Recorder() as up, gateway("azure", up, api_version=version) as gw:
        chat(gw)
    (seen,) = up.chats()
    assert seen.path == "/openai/deployments/deploy-1/chat/completions"
    assert seen.query == {"api-version": version}


def test_openai_request_goes_to_base_url_chat_completions_without_api_version() -> None:
    """Contrast: ``api_version`` is ignored by other providers (docs), so no query string."""
    with Recorder() as up, gateway("openai", up, api_version="2024-10-21") as gw:
        chat(gw)
    (seen,) = up.chats()
    assert (seen.path, seen.query) == ("/v1/chat/completions", {})
    assert seen.body["model"] == "deploy-1"


# -- stream_usage ------------------------------------------------------------------------


def _stream(gw: RunningGateway) -> list[Any]:
    with openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return list(stream)


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_stream_usage_default_asks_upstream_for_exact_usage(provider: str) -> None:
    """Default ``stream_usage: true``: the upstream body carries ``stream_options.include_usage``
    although the client did not ask, the upstream's usage is accounted as reported, and the
    extra usage chunk is not passed to the client."""
    with Recorder() as up, gateway(provider, up) as gw:
        chunks = _stream(gw)
        event = gw.wait_events(1)[-1]
        labels = {"model": "m", "backend": "up", "provider": provider}
        reported = gw.total("llm_tokens_total", **labels, type="output", source="reported")
    (seen,) = up.chats()
    assert seen.body["stream_options"] == {"include_usage": True}
    assert all(ch.usage is None for ch in chunks) and all(ch.choices for ch in chunks)
    assert (event.usage.input, event.usage.output) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert event.token_source.value == "reported"
    assert reported == COMPLETION_TOKENS


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_stream_usage_false_sends_no_stream_options_and_estimates(provider: str) -> None:
    """``stream_usage: false``: no ``stream_options`` upstream, so the upstream sends no usage;
    output is estimated as one token per content chunk and labelled ``source="estimated"``."""
    with Recorder() as up, gateway(provider, up, stream_usage=False) as gw:
        chunks = _stream(gw)
        event = gw.wait_events(1)[-1]
        labels = {"model": "m", "backend": "up", "provider": provider}
        estimated = gw.total("llm_tokens_total", **labels, type="output", source="estimated")
        reported = gw.total("llm_tokens_total", **labels, source="reported")
    (seen,) = up.chats()
    assert "stream_options" not in seen.body
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "".join(STREAM_WORDS)
    assert event.token_source.value == "estimated"
    assert event.usage.output == len(STREAM_WORDS)
    assert event.usage.input == estimate_prompt_tokens(MESSAGES)
    assert estimated == len(STREAM_WORDS) and reported == 0


# -- default_max_tokens ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "client", "expected"),
    [(None, None, 4096), (256, None, 256), (256, 9, 9)],
    ids=["default-4096", "configured-256", "client-value-wins"],
)
def test_anthropic_default_max_tokens(
    configured: int | None, client: int | None, expected: int
) -> None:
    """A chat without ``max_tokens`` reaches Anthropic with the backend's
    ``default_max_tokens`` (4096 when unset); a client's own ``max_tokens`` is kept."""
    extra = {} if configured is None else {"default_max_tokens": configured}
    body = {} if client is None else {"max_tokens": client}
    with Recorder() as up, gateway("anthropic", up, **extra) as gw:
        chat(gw, **body)
    (seen,) = up.chats()
    assert seen.path == "/v1/messages"
    assert seen.body["max_tokens"] == expected


def test_default_max_tokens_is_ignored_by_openai() -> None:
    """Docs: ignored by other providers: an OpenAI body without max_tokens stays without."""
    with Recorder() as up, gateway("openai", up, default_max_tokens=256) as gw:
        chat(gw)
    (seen,) = up.chats()
    assert "max_tokens" not in seen.body


# -- http_client -------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
def test_http_client_serves_whole_and_streamed_chat_with_exact_usage(client: str) -> None:
    """Both clients serve whole and streamed chats with the upstream's exact usage. Which one
    is in use shows at the upstream: tollhouse's h1 client asks for ``accept-encoding:
    identity``, aiohttp for compressed bodies; so if ``http_client`` were ignored one of the
    two cases would fail."""
    with Recorder() as up, gateway("openai", up, http_client=client) as gw:
        whole = chat(gw).json()
        chunks = _stream(gw)
        events = gw.wait_events(2)
    assert whole["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert whole["choices"][0]["message"]["content"] == "recorded"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "".join(
        STREAM_WORDS
    )
    for event in events:
        assert (event.usage.input, event.usage.output) == (PROMPT_TOKENS, COMPLETION_TOKENS)
        assert event.token_source.value == "reported"
    encodings = {s.headers.get("accept-encoding", "") for s in up.chats()}
    if client == "h1":
        assert encodings == {"identity"}
    else:
        assert len(encodings) == 1 and "gzip" in encodings.pop()


# -- max_connections ---------------------------------------------------------------------


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
@pytest.mark.parametrize(("pool", "expected"), [(1, 1), (8, 3)])
def test_max_connections_bounds_concurrent_upstream_requests(
    client: str, pool: int, expected: int
) -> None:
    """With ``max_connections: 1`` three concurrent chats reach a slow upstream one at a time;
    with a larger pool all three are in the upstream at once."""
    with (
        Recorder(delay=0.3) as up,
        gateway("openai", up, max_connections=pool, http_client=client) as gw,
        ThreadPoolExecutor(3) as pool_exec,
    ):
        started = time.monotonic()
        results = list(pool_exec.map(lambda _: chat(gw), range(3)))
        elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in results)
    assert len(up.chats()) == 3
    assert up.max_active == expected
    if expected == 1:
        assert elapsed >= 0.85  # three 0.3 s answers in a row


# -- timeouts.connect --------------------------------------------------------------------


@contextmanager
def unconnectable() -> Iterator[str]:
    """A loopback address whose TCP handshake never completes: a listener that never accepts,
    its accept queue (backlog 0) already full, so Linux drops further SYNs and a connect
    hangs until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))  # EINPROGRESS: the SYN is on its way
            fillers.append(filler)
        time.sleep(0.05)
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            with pytest.raises(TimeoutError):  # the address really does hang
                probe.connect(("127.0.0.1", port))
        finally:
            probe.close()
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
def test_connect_timeout_fails_fast_as_timeout(client: str) -> None:
    """``timeouts.connect: 0.3`` against an upstream that never completes the handshake: the
    client gets the documented 504 within about a second and ``llm_errors_total`` counts a
    ``timeout``. Ignored, the 10 s default (or ``read: 5``) would hold the request far longer."""
    with unconnectable() as base_url:
        backend = {"name": "up", "provider": "openai", "base_url": base_url,
                   "http_client": client, "timeouts": {"connect": 0.3, "read": 5}}  # fmt: skip
        config = {"backends": [backend], "models": [{"name": "m", "backend": "up", "model": "x"}]}
        with run_gateway(config) as gw:
            started = time.monotonic()
            resp = httpx.post(
                gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=10
            )
            elapsed = time.monotonic() - started
            gw.wait_events(1)
            errors = gw.metric(
                "llm_errors_total", model="m", backend="up", provider="openai",
                error_type="timeout",
            )  # fmt: skip
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert 0.25 <= elapsed < 1.2
    assert errors == 1


@pytest.mark.parametrize("client", ["h1", "aiohttp"])
def test_only_the_aiohttp_client_goes_through_an_http_proxy(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/configuration.md ``http_client``: aiohttp honours ``HTTP_PROXY``, h1 ignores
    it. A second recorder plays the proxy: aiohttp sends it the request (with the real
    upstream as its Host), h1 goes straight to the upstream."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with Recorder() as up, Recorder() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with gateway("openai", up, http_client=client) as gw, \
                httpx.Client(trust_env=False) as http:  # fmt: skip
            r = http.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES})
            assert r.status_code == 200, r.text
        went, bypassed = (proxy, up) if client == "aiohttp" else (up, proxy)
        assert [s.path for s in went.seen] == ["/v1/chat/completions"] and bypassed.seen == []
        assert went.seen[0].headers["host"] == f"127.0.0.1:{up.port}"


def test_the_h1_client_does_not_follow_a_redirect() -> None:
    """docs/configuration.md ``http_client``: h1 does not follow redirects. An upstream
    that answers 307 to another server fails the request (the gateway's error, counted),
    and the server it points to is never called: a backend's API key must not travel to
    wherever a redirect says."""
    with Recorder() as elsewhere:
        location = f"{elsewhere.url}/v1/chat/completions".encode()
        redirect = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
        with answer_once(redirect % location) as port:
            config = {
                "backends": [{"name": "up", "provider": "openai", "http_client": "h1",
                              "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": "UP_KEY"}],
                "models": [{"name": "m", "backend": "up", "model": "deploy-1"}],
            }  # fmt: skip
            with run_gateway(config, environ={"UP_KEY": "sk-upstream-secret"}) as gw:
                r = httpx.post(gw.v1 + "/chat/completions",
                               json={"model": "m", "messages": MESSAGES})  # fmt: skip
                assert r.status_code == 502 and r.json()["error"]["message"] == (
                    "upstream error (invalid_response): HTTP 307"
                )
                event = gw.wait_events(1)[0]
                assert (event.outcome.value, event.error_type.value) == (
                    "error", "invalid_response",
                )  # fmt: skip
    assert elsewhere.seen == []


def test_a_whole_answer_without_usage_is_charged_an_estimate_of_its_output_too() -> None:
    """An OpenAI-compatible server that reports no usage: the prompt was estimated and the
    output charged 0, although the answer's text was there to estimate from (streams
    already count one token per content chunk)."""
    text = "one two three four five six seven eight"  # 39 characters: 10 tokens
    answer = orjson.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "x",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}]})  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    with answer_once(head % len(answer) + answer) as port:
        config = {
            "backends": [{"name": "up", "provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                          "prices": {"input": 1, "output": 2}}],
            "models": [{"name": "m", "backend": "up", "model": "x"}],
        }  # fmt: skip
        with run_gateway(config) as gw:
            r = httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": MESSAGES})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == text
            event = gw.wait_events(1)[0]
    prompt = estimate_prompt_tokens(MESSAGES)
    assert (event.usage.input, event.usage.output) == (prompt, 10)
    assert event.token_source.value == "estimated"
    assert event.cost == Decimal(prompt * 1 + 10 * 2) / 1_000_000
