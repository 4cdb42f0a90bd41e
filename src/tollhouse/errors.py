"""One error hierarchy for the whole gateway.

Two families live here:

* ``UpstreamError`` — something went wrong talking to a provider. It carries an
  ``ErrorType`` from the closed taxonomy below; provider adapters classify
  upstream answers into it and the HTTP transport maps network exceptions into
  it at the boundary (one place, like httpx's ``map_httpcore_exceptions``).
* ``GatewayError`` — what the client is told. Every rejection and failure that
  reaches a client is a ``GatewayError`` rendered to an OpenAI-style body
  (``{"error": {"message", "type", "code"}}``) in exactly one place
  (``tollhouse.proxy.responses``).

The taxonomy is closed so dashboards and alerts can enumerate it: a label value
outside ``ErrorType`` never reaches a metric.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorType(StrEnum):
    """Why a request failed, in words an operator can alert on."""

    RATE_LIMIT = "rate_limit"
    TIMEOUT = "timeout"
    AUTH = "auth"
    NETWORK = "network"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    SERVER_ERROR = "server_error"
    INVALID_RESPONSE = "invalid_response"
    CANCELLED = "cancelled"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    PERMISSION = "permission_denied"
    BUDGET = "budget_exceeded"
    UNKNOWN = "unknown"


class UpstreamError(Exception):
    """A provider call failed; ``error_type`` says why, ``status`` is the upstream's HTTP status."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.retry_after = retry_after


class GatewayError(Exception):
    """An error the client sees: HTTP status plus the OpenAI-style ``type`` and ``code``."""

    status: int = 500
    type: str = "api_error"
    code: str = "internal_error"
    error_type: ErrorType = ErrorType.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    error_type = ErrorType.BAD_REQUEST


class InvalidJSON(BadRequest):
    code = "invalid_json"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    error_type = ErrorType.NOT_FOUND


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    error_type = ErrorType.NOT_FOUND


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    error_type = ErrorType.BAD_REQUEST


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    error_type = ErrorType.PAYLOAD_TOO_LARGE


class UnsupportedEncoding(GatewayError):
    """415: a compressed (``Content-Encoding``) body, which the gateway does not decode."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"
    error_type = ErrorType.BAD_REQUEST


class ClientDisconnected(Exception):
    """The client closed its connection before its request body was complete: nothing
    is sent upstream and nobody is there to answer; the request is recorded as
    cancelled (499)."""


class Unauthorized(GatewayError):
    """401: no key, an unknown key, an expired key or a blocked key (``code`` says which)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    error_type = ErrorType.AUTH

    def __init__(self, message: str, *, code: str = "invalid_api_key") -> None:
        super().__init__(message)
        self.code = code


class ModelNotAllowed(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"
    error_type = ErrorType.PERMISSION


class Rejected(GatewayError):
    """429 from the gateway's own admission: a budget or a rate limit had no room.

    ``reason`` ("budget" or "rate_limit") and ``scope`` ("key", "team", ...) feed the
    rejection counter; ``Retry-After`` says when the window resets. ``too_big``: the
    request's own worst case is more than the whole limit, so no reset makes room (no
    ``Retry-After``), and the limit itself is not spent.
    """

    status = 429

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        scope: str,
        retry_after: float | None,
        too_big: bool = False,
    ) -> None:
        headers = (
            {} if retry_after is None else {"retry-after": str(max(1, int(retry_after + 0.999)))}
        )
        super().__init__(message, headers=headers)
        self.reason = reason
        self.scope = scope
        self.retry_after_seconds = retry_after
        self.too_big = too_big
        if reason == "budget":
            self.type, self.code, self.error_type = (
                "insufficient_quota",
                "budget_exceeded",
                ErrorType.BUDGET,
            )
        else:
            self.type, self.code = "rate_limit_error", "rate_limit_exceeded"
            self.error_type = ErrorType.RATE_LIMIT


class LimitsUnavailable(GatewayError):
    """503: the shared limits store (Redis) could not be reached, so nothing is admitted
    (failing closed: a budget that cannot be checked is not spent)."""

    status = 503
    type = "api_error"
    code = "limits_unavailable"
    error_type = ErrorType.SERVER_ERROR


class AuthUnavailable(GatewayError):
    """503: the store holding the keys cannot be read and this key was not seen lately."""

    status = 503
    type = "api_error"
    code = "auth_unavailable"
    error_type = ErrorType.SERVER_ERROR


class ShuttingDown(GatewayError):
    """503: the request was still running when the gateway's shutdown stopped waiting
    for it (``server.shutdown_timeout``); another replica can serve it."""

    status = 503
    type = "api_error"
    code = "gateway_shutting_down"
    error_type = ErrorType.SERVER_ERROR


class UpstreamFailed(GatewayError):
    """An ``UpstreamError`` translated for the client (status chosen by ``from_upstream``)."""

    type = "api_error"

    @classmethod
    def from_upstream(cls, err: UpstreamError) -> UpstreamFailed:
        status, type_, code = _UPSTREAM_TO_CLIENT.get(
            err.error_type, (502, "api_error", "upstream_error")
        )
        headers = {}
        if err.retry_after is not None:
            headers["retry-after"] = str(max(0, round(err.retry_after)))
        out = cls(f"upstream error ({err.error_type.value}): {err.message}", headers=headers)
        out.status, out.type, out.code, out.error_type = status, type_, code, err.error_type
        return out


# Upstream failures the client caused keep their 4xx meaning; the others become 5xx
# gateway statuses (502 bad gateway, 503 unavailable, 504 timeout).
_UPSTREAM_TO_CLIENT: dict[ErrorType, tuple[int, str, str]] = {
    ErrorType.RATE_LIMIT: (429, "rate_limit_error", "upstream_rate_limited"),
    ErrorType.TIMEOUT: (504, "api_error", "upstream_timeout"),
    ErrorType.AUTH: (502, "api_error", "upstream_auth_failed"),
    ErrorType.NETWORK: (502, "api_error", "upstream_unreachable"),
    ErrorType.BAD_REQUEST: (400, "invalid_request_error", "upstream_bad_request"),
    ErrorType.CONTEXT_LENGTH: (400, "invalid_request_error", "context_length_exceeded"),
    ErrorType.CONTENT_FILTER: (400, "invalid_request_error", "content_filter"),
    ErrorType.SERVER_ERROR: (502, "api_error", "upstream_server_error"),
    ErrorType.INVALID_RESPONSE: (502, "api_error", "upstream_invalid_response"),
    ErrorType.NOT_FOUND: (502, "api_error", "upstream_not_found"),
    ErrorType.UNKNOWN: (502, "api_error", "upstream_error"),
}
