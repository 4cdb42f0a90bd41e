"""OpenAI-compatible wire format: OpenAI, Azure OpenAI, Ollama, vLLM, Groq, and the like.

Bodies pass through untouched except for ``model`` (the upstream id) and, on
streams, ``stream_options.include_usage`` which the gateway always asks for so
the usage it accounts is the upstream's own; the extra usage chunk is then
withheld from clients that did not ask for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tollhouse.accounting.usage import Usage
from tollhouse.errors import ErrorType, UpstreamError
from tollhouse.providers import classify, sse
from tollhouse.providers.base import Parsed, RateLimitInfo, Target, UpstreamRequest

JSON = "application/json"


def usage_from_openai(raw: Any) -> Usage | None:
    """Read an OpenAI ``usage`` object (chat or embeddings)."""
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens")
    if not isinstance(prompt, int):
        return None
    completion = raw.get("completion_tokens")
    pdetails = raw.get("prompt_tokens_details")
    cdetails = raw.get("completion_tokens_details")
    cached = pdetails.get("cached_tokens") if isinstance(pdetails, dict) else None
    reasoning = cdetails.get("reasoning_tokens") if isinstance(cdetails, dict) else None
    return Usage(
        input=prompt,
        output=completion if isinstance(completion, int) else 0,
        cached_input=cached if isinstance(cached, int) else 0,
        reasoning=reasoning if isinstance(reasoning, int) else 0,
    )


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise UpstreamError(ErrorType.INVALID_RESPONSE, "upstream sent invalid JSON") from None


class OpenAIAdapter:
    """OpenAI-compatible servers addressed by ``base_url`` (which includes ``/v1``)."""

    provider = "openai"

    def _url(self, target: Target, path: str) -> str:
        return f"{target.base_url.rstrip('/')}/{path}"

    def _headers(self, target: Target) -> dict[str, str]:
        headers = {"content-type": JSON, **target.headers}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        return headers

    def chat_request(
        self, body: dict[str, Any], target: Target, *, stream: bool
    ) -> UpstreamRequest:
        out = dict(body)
        out["model"] = target.upstream_model
        if stream and target.stream_usage:
            options = out.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            options["include_usage"] = True
            out["stream_options"] = options
        return UpstreamRequest(
            "POST",
            self._url(target, "chat/completions"),
            self._headers(target),
            orjson.dumps(out),
            stream,
        )

    def parse_chat(self, payload: bytes, target: Target) -> Parsed:
        data = _loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError(ErrorType.INVALID_RESPONSE, "upstream answer has no choices")
        model = data.get("model")
        return Parsed(
            payload, usage_from_openai(data.get("usage")), model if isinstance(model, str) else None
        )

    def chat_stream(self, target: Target, *, client_wants_usage: bool) -> OpenAIStream:
        return OpenAIStream(client_wants_usage)

    def embeddings_request(self, body: dict[str, Any], target: Target) -> UpstreamRequest:
        out = dict(body)
        out["model"] = target.upstream_model
        return UpstreamRequest(
            "POST", self._url(target, "embeddings"), self._headers(target), orjson.dumps(out)
        )

    def parse_embeddings(self, payload: bytes, target: Target) -> Parsed:
        data = _loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise UpstreamError(ErrorType.INVALID_RESPONSE, "upstream answer has no data")
        return Parsed(payload, usage_from_openai(data.get("usage")))

    def classify(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamError:
        message, code = _error_fields(payload)
        error_type = classify.refine(classify.by_status(status), f"{code} {message}")
        return UpstreamError(
            error_type,
            message or f"HTTP {status}",
            status=status,
            retry_after=classify.retry_after(headers),
        )

    def probe_request(self, target: Target) -> UpstreamRequest:
        headers = self._headers(target)
        headers.pop("content-type", None)
        return UpstreamRequest("GET", self._probe_url(target), headers, b"")

    def _probe_url(self, target: Target) -> str:
        return self._url(target, "models")

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitInfo:
        return RateLimitInfo(
            classify.header_number(headers, "x-ratelimit-remaining-requests"),
            classify.header_number(headers, "x-ratelimit-remaining-tokens"),
        )


class AzureOpenAIAdapter(OpenAIAdapter):
    """Azure OpenAI: deployment URLs with ``api-version`` and the ``api-key`` header.

    ``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``); the
    upstream model id is the deployment name.
    """

    provider = "azure"

    def _url(self, target: Target, path: str) -> str:
        base = target.base_url.rstrip("/")
        return (
            f"{base}/openai/deployments/{target.upstream_model}/{path}"
            f"?api-version={target.api_version}"
        )

    def _headers(self, target: Target) -> dict[str, str]:
        headers = {"content-type": JSON, **target.headers}
        if target.api_key:
            headers["api-key"] = target.api_key
        return headers

    def _probe_url(self, target: Target) -> str:
        return f"{target.base_url.rstrip('/')}/openai/models?api-version={target.api_version}"


def _error_fields(payload: bytes) -> tuple[str, str]:
    """(message, code) from an OpenAI-style error body; tolerant of anything else."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace").strip(), ""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code") or err.get("type") or ""
        return (message if isinstance(message, str) else ""), str(code)
    if isinstance(err, str):  # Ollama and some servers: {"error": "..."}
        return err, ""
    return "", ""


class OpenAIStream:
    """Relays OpenAI chunks as they come (raw bytes, no re-encoding) while reading usage."""

    __slots__ = ("_wants_usage", "content_chunks", "done", "error", "usage")

    def __init__(self, client_wants_usage: bool) -> None:
        self._wants_usage = client_wants_usage
        self.content_chunks = 0
        self.usage: Usage | None = None
        self.error: UpstreamError | None = None
        self.done = False

    @property
    def complete(self) -> bool:
        """The usage chunk is the last one before ``[DONE]``: either one ends the answer."""
        return self.done or self.usage is not None

    def feed(self, line: bytes) -> list[bytes]:
        parts = sse.split_field(line)
        if parts is None or parts[0] != b"data":
            return []
        data = parts[1]
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = UpstreamError(
                ErrorType.INVALID_RESPONSE, "upstream sent an invalid stream chunk"
            )
            return []
        if not isinstance(chunk, dict):
            self.error = UpstreamError(
                ErrorType.INVALID_RESPONSE, "upstream stream chunk is not an object"
            )
            return []
        if "error" in chunk and "choices" not in chunk:
            self.error = self._in_stream_error(chunk["error"])
            return []
        return self._relay(chunk, data)

    def _relay(self, chunk: dict[str, Any], data: bytes) -> list[bytes]:
        choices = chunk.get("choices")
        if isinstance(choices, list) and any(_has_content(c) for c in choices):
            self.content_chunks += 1
        raw_usage = chunk.get("usage")
        if raw_usage is not None:
            usage = usage_from_openai(raw_usage)
            if usage is not None:
                self.usage = usage
            if not self._wants_usage:
                if not choices:
                    return []  # the usage-only chunk we asked for on the client's behalf
                del chunk["usage"]
                return [sse.event(chunk)]
        return [b"data: " + data + b"\n\n"]

    @staticmethod
    def _in_stream_error(raw: Any) -> UpstreamError:
        message = raw.get("message") if isinstance(raw, dict) else raw
        code = raw.get("code") or raw.get("type") if isinstance(raw, dict) else ""
        text = message if isinstance(message, str) else "upstream stream error"
        kind = classify.refine(ErrorType.SERVER_ERROR, f"{code} {text}")
        if "rate" in str(code):
            kind = ErrorType.RATE_LIMIT
        return UpstreamError(kind, text)

    def finish(self) -> list[bytes]:
        return [sse.DONE]


def _has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"))
