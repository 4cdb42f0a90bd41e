"""A fast, deterministic mock LLM provider with its own usage ledger.

Why it exists: the gateway's whole promise is that its numbers are exactly right, and
"right" needs a ground truth. This server plays an OpenAI-compatible and an
Anthropic-compatible provider, answers with token counts that the gateway's own
estimator would compute (so estimated and reported usage can be compared exactly), and
writes down in a ledger what it *served*: how many tokens actually left the socket, and
whether the request finished, failed, was cancelled or was cut off. Tests compare the
gateway's accounting with this ledger; the benchmark uses the same server as a
zero-cost upstream.

Behaviour is selected per request through the ``model`` string, a dash-separated list
of tokens in any order (``gpt-fail-500``, ``m-delay-50``, ``m-hang-after-3``), read by
``tollhouse.providers.mock.parse_behaviour``: the gateway's built-in mock provider
understands the same names::

    fail-NNN       answer status NNN with the provider's error body
    ctx            with fail-400: OpenAI code ``context_length_exceeded``
    delay-N        wait N ms before the response headers
    chunkdelay-N   wait N ms between stream chunks
    hang           never send headers (for timeouts)
    hang-after-K   stream K content tokens, then hold the connection open silently
    drop-after-K   stream K content tokens, then abort the connection
    malformed      200 with a body (or SSE line) that is not JSON
    cache          report cached input tokens (OpenAI: prompt // 2; Anthropic: cache
                   read prompt // 2 and cache creation prompt // 4)
    reason-N       OpenAI: N of the output tokens are reasoning tokens
    length         finish with ``length`` / ``max_tokens`` instead of ``stop`` / ``end_turn``

Token counts: prompt tokens are ``estimate_prompt_tokens(messages)`` (Anthropic: the
``system`` prompt counts as one leading message, so a request translated from OpenAI
format counts the same); embeddings use ``estimate_input_tokens(input)``; output tokens
are ``max_completion_tokens``/``max_tokens`` if given, else 16, capped at 4096.

Run it standalone with ``python -m bench.mock_upstream --port 9000 [--delay-ms 50]``, or
in-process with ``with MockUpstream() as up: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import signal
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal, NoReturn, Self

import orjson
from aiohttp import web

from tollhouse.accounting.tokens import estimate_input_tokens, estimate_prompt_tokens
from tollhouse.accounting.usage import Usage
from tollhouse.providers.mock import Behaviour, parse_behaviour

try:  # uvloop makes the mock several times cheaper than the gateway it is measuring
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
    uvloop = None  # type: ignore[assignment]

Api = Literal["chat", "embeddings", "messages"]
Outcome = Literal["ok", "error", "cancelled", "dropped", "malformed"]
Provider = Literal["openai", "anthropic"]

DEFAULT_OUTPUT_TOKENS: Final = 16
MAX_OUTPUT_TOKENS: Final = 4096
EMBEDDING_DIMENSIONS: Final = 8
RATELIMIT_REQUESTS: Final = 10_000
RATELIMIT_TOKENS: Final = 1_000_000
MODEL_IDS: Final = ("mock-gpt", "mock-gpt-mini", "mock-embedding", "bench-model")

# One pre-encoded word per output token: content is "tok0 tok1 ... ", one word per chunk.
_WORDS: Final[tuple[bytes, ...]] = tuple(b"tok%d " % i for i in range(MAX_OUTPUT_TOKENS))
_HANG_FOREVER: Final = 3600.0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """What the mock served for one request (the ground truth tests compare against).

    ``input`` is all prompt tokens (for Anthropic including cache read and creation),
    ``cached_input`` the cache reads, ``cache_write_input`` the cache creation,
    ``output`` every output token written to the socket (reasoning included).
    ``status`` is the HTTP status sent, or 0 when no status line was ever sent
    (``hang``, a non-streaming ``drop-after-K``).

    ``input`` is the prompt whenever the mock accepted the request, including ones it then
    hung on, cut off or answered with garbage; only ``fail-NNN`` (and an unparsable body)
    record zero usage, as a provider bills nothing for a refused request. ``malformed``
    records no output.
    """

    request_id: str
    api: Api
    model: str
    stream: bool
    status: int
    input: int
    output: int
    cached_input: int
    cache_write_input: int
    reasoning: int
    outcome: Outcome

    @property
    def usage(self) -> Usage:
        """The entry as the gateway's :class:`Usage`, for direct comparison."""
        return Usage(
            input=self.input,
            output=self.output,
            cached_input=self.cached_input,
            cache_write_input=self.cache_write_input,
            reasoning=self.reasoning,
        )


class _Record:
    """Mutable twin of :class:`LedgerEntry`, updated while a response is being written.

    Streams bump ``output`` after every chunk, so a snapshot taken while the mock is
    still hanging (before it notices the client left) already has the right count.
    """

    __slots__ = (
        "api",
        "cache_write_input",
        "cached_input",
        "input",
        "model",
        "outcome",
        "output",
        "reasoning",
        "request_id",
        "status",
        "stream",
    )

    def __init__(self, request_id: str, api: Api, model: str, stream: bool) -> None:
        self.request_id = request_id
        self.api: Api = api
        self.model = model
        self.stream = stream
        self.status = 0
        self.input = 0
        self.output = 0
        self.cached_input = 0
        self.cache_write_input = 0
        self.reasoning = 0
        self.outcome: Outcome = "ok"

    def freeze(self) -> LedgerEntry:
        return LedgerEntry(
            request_id=self.request_id,
            api=self.api,
            model=self.model,
            stream=self.stream,
            status=self.status,
            input=self.input,
            output=self.output,
            cached_input=self.cached_input,
            cache_write_input=self.cache_write_input,
            reasoning=self.reasoning,
            outcome=self.outcome,
        )


class Ledger:
    """Thread-safe list of what was served; written by the server loop, read by tests.

    With ``enabled=False`` (the CLI, the benchmark) nothing is kept, so memory stays
    flat at tens of thousands of requests per second.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._lock = threading.Lock()
        self._records: list[_Record] = []

    def open(self, request_id: str, api: Api, model: str, stream: bool) -> _Record:
        record = _Record(request_id, api, model, stream)
        if self._enabled:
            with self._lock:
                self._records.append(record)
        return record

    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            return [record.freeze() for record in self._records]

    def reset(self) -> None:
        with self._lock:
            self._records.clear()


def output_tokens(body: dict[str, Any]) -> int:
    """``max_completion_tokens`` or ``max_tokens`` if given, else 16; capped at 4096."""
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool):
        return DEFAULT_OUTPUT_TOKENS
    return max(0, min(limit, MAX_OUTPUT_TOKENS))


def anthropic_prompt_tokens(body: dict[str, Any]) -> int:
    """Count an Anthropic request like the OpenAI request it may have been translated from.

    ``system`` becomes one leading message, so it costs its characters plus one message
    overhead, exactly as an OpenAI ``{"role": "system"}`` message would.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        messages = []
    system = body.get("system")
    if system is not None:
        messages = [{"content": system}, *messages]
    return estimate_prompt_tokens(messages)


@lru_cache(maxsize=MAX_OUTPUT_TOKENS + 1)
def _content(n: int) -> str:
    """The full answer text for ``n`` output tokens, identical to the streamed words."""
    return b"".join(_WORDS[:n]).decode()


def _embedding(item: Any) -> list[float]:
    """A deterministic vector whose components are exact in float32 (k/256).

    Exactness matters because the openai SDK asks for base64 float32 by default; the
    float and base64 encodings then decode to the same numbers.
    """
    seed = orjson.dumps(item)
    return [
        ((zlib.crc32(seed + bytes((i,))) & 0x1FF) - 256) / 256.0
        for i in range(EMBEDDING_DIMENSIONS)
    ]


def _embedding_items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [value]
        return list(value)
    return []


_OPENAI_ERRORS: Final[dict[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _openai_error_body(status: int, ctx: bool) -> bytes:
    kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "", None))
    if not kind:
        kind = "invalid_request_error"
    if status == 400 and ctx:
        code = "context_length_exceeded"
        message = "This model's maximum context length is 4096 tokens (mock)."
    else:
        message = f"mock upstream failure {status}"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _anthropic_error_body(status: int) -> bytes:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(
        {"type": "error", "error": {"type": kind, "message": f"mock upstream failure {status}"}}
    )


class _RateLimit:
    """Deterministic remaining-quota counters, one per provider, reported on every answer."""

    __slots__ = ("requests", "tokens")

    def __init__(self) -> None:
        self.requests = RATELIMIT_REQUESTS
        self.tokens = RATELIMIT_TOKENS

    def consume(self, tokens: int) -> tuple[str, str]:
        self.requests = max(0, self.requests - 1)
        self.tokens = max(0, self.tokens - tokens)
        return str(self.requests), str(self.tokens)


class MockServer:
    """The aiohttp application and its state; :class:`MockUpstream` runs one in a thread."""

    def __init__(self, *, delay_ms: int = 0, ledger: Ledger | None = None) -> None:
        self.delay_ms = delay_ms
        self.ledger = ledger if ledger is not None else Ledger()
        self._limits: dict[Provider, _RateLimit] = {
            "openai": _RateLimit(),
            "anthropic": _RateLimit(),
        }
        self._ids = itertools.count(1)
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_get("/v1/models", self.models)

    def reset(self) -> None:
        """Forget the ledger and refill the rate-limit quotas (call between tests)."""
        self.ledger.reset()
        self._limits = {"openai": _RateLimit(), "anthropic": _RateLimit()}

    # -- shared plumbing -------------------------------------------------------------

    def _headers(
        self, provider: Provider, request_id: str, tokens: int, *, consume: bool = True
    ) -> dict[str, str]:
        limit = self._limits[provider]
        if consume:
            requests, remaining = limit.consume(tokens)
        else:
            requests, remaining = str(limit.requests), str(limit.tokens)
        if provider == "openai":
            return {
                "x-ratelimit-remaining-requests": requests,
                "x-ratelimit-remaining-tokens": remaining,
                "x-request-id": request_id,
            }
        return {
            "anthropic-ratelimit-requests-remaining": requests,
            "anthropic-ratelimit-tokens-remaining": remaining,
            "request-id": request_id,
        }

    def _request_id(self, request: web.Request) -> str:
        return request.headers.get("x-request-id") or f"req_mock_{next(self._ids)}"

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return None
        return body if isinstance(body, dict) else None

    def _bad_json(self, provider: Provider, request: web.Request, api: Api) -> web.Response:
        record = self.ledger.open(self._request_id(request), api, "", False)
        record.status, record.outcome = 400, "error"
        body = (
            _openai_error_body(400, False) if provider == "openai" else _anthropic_error_body(400)
        )
        return web.Response(
            status=400,
            body=body,
            content_type="application/json",
            headers=self._headers(provider, record.request_id, 0),
        )

    async def _before_headers(
        self, behaviour: Behaviour, record: _Record, provider: Provider
    ) -> web.Response | None:
        """Apply hang / delay / fail; returns an error response, or None to go on."""
        if behaviour.hang:
            await self._hang(record, status=0)
        delay = behaviour.delay_ms if behaviour.delay_ms is not None else self.delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        if behaviour.fail is None:
            return None
        status = behaviour.fail
        record.status, record.outcome, record.input = status, "error", 0
        headers = self._headers(provider, record.request_id, 0)
        if status == 429:
            headers["retry-after"] = "1"
        if provider == "openai":
            body = _openai_error_body(status, behaviour.ctx)
        else:
            body = _anthropic_error_body(status)
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    async def _hang(self, record: _Record, *, status: int) -> NoReturn:
        """Stay silent until the client leaves (the handler is cancelled on disconnect).

        The outcome is written *before* sleeping: the disconnect is inevitable, and a test
        reading the ledger right after closing its client must already see it.
        """
        record.status, record.outcome = status, "cancelled"
        await asyncio.sleep(_HANG_FOREVER)
        raise asyncio.CancelledError  # pragma: no cover - nobody waits an hour

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _stream(
        self,
        request: web.Request,
        record: _Record,
        headers: dict[str, str],
        behaviour: Behaviour,
        n_out: int,
        *,
        opening: list[bytes],
        word: Callable[[int], bytes],
        closing: list[bytes],
        malformed: bytes,
    ) -> web.StreamResponse:
        """Write an SSE stream chunk by chunk, keeping the ledger current after each token.

        Shared by both providers: they differ only in the bytes around each word.
        """
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        response.headers["cache-control"] = "no-cache"
        record.status = 200
        gap = behaviour.chunk_delay_ms / 1000
        try:
            await response.prepare(request)
            if behaviour.malformed:
                record.outcome = "malformed"
                await response.write(malformed)
                await response.write_eof()
                return response
            for chunk in opening:
                await response.write(chunk)
            stop_after = n_out
            if behaviour.hang_after is not None:
                stop_after = min(n_out, behaviour.hang_after)
            elif behaviour.drop_after is not None:
                stop_after = min(n_out, behaviour.drop_after)
            for i in range(stop_after):
                if gap:
                    await asyncio.sleep(gap)
                await response.write(word(i))
                record.output = i + 1
            if behaviour.hang_after is not None:
                await self._hang(record, status=200)
            if behaviour.drop_after is not None:
                record.outcome = "dropped"
                self._abort(request)
                return response
            for chunk in closing:
                if gap:
                    await asyncio.sleep(gap)
                await response.write(chunk)
            await response.write_eof()
        except asyncio.CancelledError:
            if record.outcome == "ok":
                record.outcome = "cancelled"
            raise
        except ConnectionError:
            # The client left mid-stream; returning lets aiohttp wind down quietly.
            if record.outcome == "ok":
                record.outcome = "cancelled"
        return response

    # -- OpenAI ----------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        body = await self._body(request)
        if body is None:
            return self._bad_json("openai", request, "chat")
        model = str(body.get("model", ""))
        behaviour = parse_behaviour(model)
        stream = bool(body.get("stream"))
        record = self.ledger.open(self._request_id(request), "chat", model, stream)
        prompt = estimate_prompt_tokens(body.get("messages"))
        record.input = prompt
        n_out = output_tokens(body)
        if not stream and (behaviour.hang_after is not None):
            behaviour = Behaviour(hang=True)
        error = await self._before_headers(behaviour, record, "openai")
        if error is not None:
            return error
        cached = prompt // 2 if behaviour.cache else 0
        reasoning = min(behaviour.reasoning, n_out)
        record.cached_input, record.reasoning = cached, reasoning
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": n_out,
            "total_tokens": prompt + n_out,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
        finish = "length" if behaviour.length else "stop"
        created = int(time.time())
        completion_id = f"chatcmpl-{record.request_id}"

        if not stream:
            return self._chat_response(
                request, record, behaviour, model, n_out, usage, finish, created, completion_id
            )

        emitted = n_out
        for limit in (behaviour.hang_after, behaviour.drop_after):
            if limit is not None:
                emitted = min(n_out, limit)
        headers = self._headers(
            "openai", record.request_id, 0 if behaviour.malformed else prompt + emitted
        )
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        head = b"".join(
            (
                b'data: {"id":',
                orjson.dumps(completion_id),
                b',"object":"chat.completion.chunk","created":',
                str(created).encode(),
                b',"model":',
                orjson.dumps(model),
                b',"system_fingerprint":null,"choices":',
            )
        )
        word_head = head + b'[{"index":0,"delta":{"content":"'
        word_tail = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
        closing = [
            head
            + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}]}\n\n'
            % finish.encode()
        ]
        if include_usage:
            closing.append(head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
        closing.append(b"data: [DONE]\n\n")
        return await self._stream(
            request,
            record,
            headers,
            behaviour,
            n_out,
            opening=[
                head + b'[{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]}\n\n'
            ],
            word=lambda i: word_head + _WORDS[i] + word_tail,
            closing=closing,
            malformed=b"data: {not json\n\ndata: [DONE]\n\n",
        )

    def _chat_response(
        self,
        request: web.Request,
        record: _Record,
        behaviour: Behaviour,
        model: str,
        n_out: int,
        usage: dict[str, Any],
        finish: str,
        created: int,
        completion_id: str,
    ) -> web.Response:
        record.status = 200
        if behaviour.drop_after is not None:
            record.status, record.outcome = 0, "dropped"
            self._abort(request)
            return web.Response(status=200)
        prompt = usage["prompt_tokens"]
        if behaviour.malformed:
            record.outcome = "malformed"
            headers = self._headers("openai", record.request_id, 0)
            return web.Response(body=b"{not json", content_type="application/json", headers=headers)
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _content(n_out), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }
        record.output = n_out
        headers = self._headers("openai", record.request_id, prompt + n_out)
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers=headers
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings``: one deterministic 8-dimensional vector per input item."""
        body = await self._body(request)
        if body is None:
            return self._bad_json("openai", request, "embeddings")
        model = str(body.get("model", ""))
        behaviour = parse_behaviour(model)
        if behaviour.hang_after is not None:
            behaviour = Behaviour(hang=True)
        record = self.ledger.open(self._request_id(request), "embeddings", model, False)
        value = body.get("input")
        prompt = estimate_input_tokens(value)
        record.input = prompt
        error = await self._before_headers(behaviour, record, "openai")
        if error is not None:
            return error
        record.status = 200
        if behaviour.drop_after is not None:
            record.status, record.outcome = 0, "dropped"
            self._abort(request)
            return web.Response(status=200)
        if behaviour.malformed:
            record.outcome = "malformed"
            headers = self._headers("openai", record.request_id, 0)
            return web.Response(body=b"{not json", content_type="application/json", headers=headers)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(_embedding_items(value)):
            vector = _embedding(item)
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        headers = self._headers("openai", record.request_id, prompt)
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers=headers
        )

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``: an OpenAI model list (also a cheap readiness probe)."""
        payload = {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "mock"}
                for name in MODEL_IDS
            ],
        }
        # Rate-limit headers like every answer, but a listing (or readiness probe) is free,
        # so tests can count served requests without probes disturbing the numbers.
        headers = self._headers("openai", self._request_id(request), 0, consume=False)
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers=headers
        )

    # -- Anthropic -------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages`` (Anthropic Messages API)."""
        body = await self._body(request)
        if body is None:
            return self._bad_json("anthropic", request, "messages")
        model = str(body.get("model", ""))
        behaviour = parse_behaviour(model)
        stream = bool(body.get("stream"))
        record = self.ledger.open(self._request_id(request), "messages", model, stream)
        prompt = anthropic_prompt_tokens(body)
        record.input = prompt
        n_out = output_tokens(body)
        if not stream and behaviour.hang_after is not None:
            behaviour = Behaviour(hang=True)
        error = await self._before_headers(behaviour, record, "anthropic")
        if error is not None:
            return error
        cache_read = prompt // 2 if behaviour.cache else 0
        cache_write = prompt // 4 if behaviour.cache else 0
        record.cached_input, record.cache_write_input = cache_read, cache_write
        uncached = prompt - cache_read - cache_write
        stop_reason = "max_tokens" if behaviour.length else "end_turn"
        message_id = f"msg_{record.request_id}"

        if not stream:
            record.status = 200
            if behaviour.drop_after is not None:
                record.status, record.outcome = 0, "dropped"
                self._abort(request)
                return web.Response(status=200)
            if behaviour.malformed:
                record.outcome = "malformed"
                headers = self._headers("anthropic", record.request_id, 0)
                return web.Response(
                    body=b"{not json", content_type="application/json", headers=headers
                )
            payload = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": _content(n_out)}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": uncached,
                    "output_tokens": n_out,
                    "cache_read_input_tokens": cache_read,
                    "cache_creation_input_tokens": cache_write,
                },
            }
            record.output = n_out
            headers = self._headers("anthropic", record.request_id, prompt + n_out)
            return web.Response(
                body=orjson.dumps(payload), content_type="application/json", headers=headers
            )

        emitted = n_out
        for limit in (behaviour.hang_after, behaviour.drop_after):
            if limit is not None:
                emitted = min(n_out, limit)
        headers = self._headers(
            "anthropic", record.request_id, 0 if behaviour.malformed else prompt + emitted
        )
        start = {
            "type": "message_start",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": uncached,
                    "output_tokens": 1,
                    "cache_read_input_tokens": cache_read,
                    "cache_creation_input_tokens": cache_write,
                },
            },
        }
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": n_out},
        }
        word_head = (
            b"event: content_block_delta\ndata: "
            b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
        )
        word_tail = b'"}}\n\n'
        return await self._stream(
            request,
            record,
            headers,
            behaviour,
            n_out,
            opening=[
                b"event: message_start\ndata: " + orjson.dumps(start) + b"\n\n",
                b'event: ping\ndata: {"type":"ping"}\n\n',
                b"event: content_block_start\ndata: "
                b'{"type":"content_block_start","index":0,'
                b'"content_block":{"type":"text","text":""}}\n\n',
            ],
            word=lambda i: word_head + _WORDS[i] + word_tail,
            closing=[
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
                b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n",
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
            ],
            malformed=b"event: message_start\ndata: {not json\n\n",
        )


def _new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def _runner(server: MockServer) -> web.AppRunner:
    # handler_cancellation: a hanging handler must learn that its client left, so the
    # ledger can say "cancelled" and nothing is left sleeping at shutdown.
    return web.AppRunner(
        server.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
    )


class MockUpstream:
    """The mock served from a background thread with its own event loop.

    ``with MockUpstream() as up:`` binds 127.0.0.1 on a free port; OpenAI clients use
    ``up.base_url + "/v1"``, Anthropic ones ``up.base_url``. ``ledger()`` returns a
    snapshot of what was served, ``totals()`` its sum, ``reset()`` starts afresh.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, delay_ms: int = 0, record: bool = True
    ) -> None:
        self.host = host
        self.port = port
        self.server = MockServer(delay_ms=delay_ms, ledger=Ledger(enabled=record))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving; returns once the port is bound (raises if it could not be)."""
        if self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        self._thread = threading.Thread(target=self._run, name="mock-upstream", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("mock upstream failed to start") from self._error
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ledger(self) -> list[LedgerEntry]:
        """A copy of every entry so far, in arrival order."""
        return self.server.ledger.entries()

    def totals(
        self, *, api: Api | None = None, model: str | None = None, outcome: Outcome | None = None
    ) -> Usage:
        """Sum of the ledger's usage, optionally filtered by api, model and outcome."""
        total = Usage()
        for entry in self.ledger():
            if api is not None and entry.api != api:
                continue
            if model is not None and entry.model != model:
                continue
            if outcome is not None and entry.outcome != outcome:
                continue
            total += entry.usage
        return total

    def reset(self) -> None:
        """Clear the ledger and refill the rate-limit counters."""
        self.server.reset()

    def _run(self) -> None:
        loop = _new_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    async def _startup(self) -> None:
        runner = _runner(self.server)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*leftovers, return_exceptions=True)


async def serve(host: str, port: int, delay_ms: int) -> None:
    """Serve until SIGINT/SIGTERM (the CLI); no ledger is kept, to keep memory flat."""
    server = MockServer(delay_ms=delay_ms, ledger=Ledger(enabled=False))
    runner = _runner(server)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"mock upstream listening on http://{host}:{port} (delay {delay_ms} ms)", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mock_upstream", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind (9000)")
    parser.add_argument(
        "--delay-ms", type=int, default=0, help="default wait before response headers (0)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m bench.mock_upstream``."""
    args = _parse_args(argv)
    coro = serve(args.host, args.port, args.delay_ms)
    if uvloop is not None:
        uvloop.run(coro)
    else:  # pragma: no cover
        asyncio.run(coro)


if __name__ == "__main__":
    main()
