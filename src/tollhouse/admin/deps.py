"""What every admin route depends on: the runtime, and an authenticated ``Actor``.

Order of checks for each request: a throttled address gets 429 (too many failed
authentications), then the admin API's own rate limit (429), then the admin key
(401, counted by reason). Only then does a handler run.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tollhouse.admin.audit import Actor
from tollhouse.admin.runtime import AdminRuntime
from tollhouse.errors import Rejected, Unauthorized
from tollhouse.identity.keys import same

ADMIN_ALIAS = "admin"
REQUEST_ID = "tollhouse.request_id"  # scope key the middleware stores the request id under
bearer = HTTPBearer(auto_error=False, description="the admin key (TOLLHOUSE_ADMIN_KEY)")


def runtime(request: Request) -> AdminRuntime:
    rt: AdminRuntime = request.app.state.runtime
    return rt


Runtime = Annotated[AdminRuntime, Depends(runtime)]


def address_of(request: Request) -> str | None:
    return request.client.host if request.client else None


async def admin_actor(
    request: Request,
    rt: Runtime,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Actor:
    address = address_of(request)
    wait = rt.guard.retry_after(address)
    if wait is not None:
        raise rt.guard.refuse("admin", wait)
    wait = rt.buckets.take(address or "unknown")
    if wait is not None:
        raise Rejected("Too many admin API requests; slow down.", reason="rate_limit",
                       scope="admin", retry_after=wait)  # fmt: skip
    reason = _failure(rt.admin_key, credentials)
    if reason is not None:
        rt.guard.failed("admin", reason, address)
        raise Unauthorized(_MESSAGES[reason], code=f"{reason}_admin_key")
    return Actor(ADMIN_ALIAS, address, request.scope.get(REQUEST_ID))


def _failure(admin_key: str | None, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    if admin_key is None:
        return "disabled"
    if credentials is None:
        return "missing"
    if not same(credentials.credentials, admin_key):
        return "invalid"
    return None


_MESSAGES = {
    "disabled": "The admin API is disabled: set the admin key's environment variable "
    "(auth.admin_key_env, TOLLHOUSE_ADMIN_KEY by default) and restart.",
    "missing": "Send the admin key as 'Authorization: Bearer ...'.",
    "invalid": "Incorrect admin key.",
}

AdminActor = Annotated[Actor, Depends(admin_actor)]
