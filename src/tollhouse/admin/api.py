"""The admin ASGI app (FastAPI): routes under ``/admin/v1``, errors, metrics, OpenAPI.

Mounted by ``tollhouse.app`` for paths under ``/admin/``, so the proxy's hot
path never passes through it. Every response, the errors included, carries
``x-request-id``; every error is the OpenAI-style body the proxy uses; every
request is counted in ``tollhouse_admin_requests_total`` by route template.
The schema is served at ``/admin/v1/openapi.json``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from tollhouse import __version__
from tollhouse.admin import routes_manage, routes_ops
from tollhouse.admin.deps import REQUEST_ID
from tollhouse.admin.runtime import AdminRuntime
from tollhouse.errors import BadRequest, GatewayError, MethodNotAllowed, RouteNotFound
from tollhouse.proxy.asgi import request_id
from tollhouse.proxy.responses import error_body
from tollhouse.store.engine import unreachable
from tollhouse.store.models import Conflict, MissingReference

log = logging.getLogger("tollhouse.admin")
PREFIX = "/admin/v1"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AlreadyExists(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class NotFound(RouteNotFound):
    code = "not_found"


class StoreUnavailable(GatewayError):
    """503: the store could not be reached; the same call may well work in a moment."""

    status = 503
    type = "api_error"
    code = "store_unavailable"


_SCHEMA = f"{PREFIX}/openapi.json"


def build_admin_app(rt: AdminRuntime) -> Any:
    """The admin app, wrapped in the middleware that counts and tags every request."""
    app = FastAPI(
        title="tollhouse admin API", version=__version__, openapi_url=_SCHEMA,
        docs_url=None, redoc_url=None,
        # No redirect for a trailing slash: it answered anyone (before the admin key was
        # checked) with a Location built from the request's Host header.
        redirect_slashes=False,
        description="Keys, teams, users, budgets, usage analytics, audit log and health.",
    )  # fmt: skip
    app.state.runtime = rt
    app.include_router(routes_manage.router, prefix=PREFIX)
    app.include_router(routes_ops.router, prefix=PREFIX)
    _error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return _Counted(app, rt)


def _respond(err: GatewayError, request: Request) -> Response:
    headers = dict(err.headers)
    rid = request.scope.get(REQUEST_ID)
    if rid:
        headers["x-request-id"] = rid
    return Response(error_body(err), err.status, headers, media_type="application/json")


def _error_handlers(app: FastAPI) -> None:
    async def gateway(request: Request, err: Exception) -> Response:
        assert isinstance(err, GatewayError)
        return _respond(err, request)

    async def invalid(request: Request, err: Exception) -> Response:
        assert isinstance(err, RequestValidationError)
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = f"{where or 'request'}: {first.get('msg', 'invalid')}"
        return _respond(BadRequest(message, param=where or None), request)

    async def http(request: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        if err.status_code == 405:
            return _respond(MethodNotAllowed(f"{request.method} is not allowed here"), request)
        if err.status_code == 404:
            return _respond(NotFound(f"no route {request.method} {request.url.path}"), request)
        return _respond(BadRequest(str(err.detail)), request)

    async def domain(request: Request, err: Exception) -> Response:
        if isinstance(err, Conflict):
            return _respond(AlreadyExists(str(err)), request)
        if isinstance(err, LookupError):
            return _respond(NotFound(str(err.args[0]) if err.args else "not found"), request)
        return _respond(BadRequest(str(err)), request)  # ValueError, MissingReference

    async def crash(request: Request, err: Exception) -> Response:
        if unreachable(err):
            log.warning("admin_store_unavailable path=%s error=%s", request.url.path,
                        type(err).__name__)  # fmt: skip
            return _respond(StoreUnavailable("The store cannot be reached right now; try again "
                                             "shortly."), request)  # fmt: skip
        log.error("admin_request_failed path=%s error=%s", request.url.path,
                  type(err).__name__, exc_info=err)  # fmt: skip
        return _respond(GatewayError("internal error; see the gateway log"), request)

    app.add_exception_handler(GatewayError, gateway)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
    for kind in (Conflict, LookupError, ValueError, MissingReference):
        app.add_exception_handler(kind, domain)
    app.add_exception_handler(Exception, crash)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema with its 422 replaced by the 400 this API really sends."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)  # fmt: skip
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema


class _Counted:
    """Pure ASGI wrapper: request id in and out, and one count per request by route template."""

    def __init__(self, app: FastAPI, rt: AdminRuntime) -> None:
        self.app = app
        self._metric = rt.metrics.admin_requests

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        rid = request_id(scope)
        scope[REQUEST_ID] = rid
        status, answered = 500, False

        async def tagged(message: MutableMapping[str, Any]) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception:
            # Starlette re-raises what its catch-all handler answered (a 500, or a 503
            # for an unreachable store) once the answer is sent: handled, and logged there.
            if answered:
                return
            raise
        finally:
            template = getattr(scope.get("route"), "path", None)
            if template is None:  # unrouted: the schema, or a 404; never a raw path
                template = _SCHEMA if scope["path"] == _SCHEMA else "unmatched"
            elif not template.startswith(PREFIX):
                template = PREFIX + template
            method = scope.get("method", "")
            self._metric.labels(template, method if method in _METHODS else "other",
                                f"{status // 100}xx").inc()  # fmt: skip
