"""``server.on_disconnect: cancel``: a client that leaves a whole answer cancels its upstream call.

By default a non-streamed request whose client disconnects (an SDK timeout, say) runs
to its end upstream, so its usage is exact. An operator whose clients time out and
retry may rather stop paying for answers nobody will read: then the server's notice
that the client left (``proxy.asgi.ON_CLIENT_GONE``) cancels the request's task, the
upstream connection is closed, and the request is recorded as ``cancelled`` (499)
with its prompt charged as an estimate, as a stream cancelled before its first chunk
is. Streams do not need this: they watch their client themselves (``proxy.chat``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tollhouse.providers.base import UpstreamRequest
from tollhouse.proxy.asgi import CLIENT_GONE, ON_CLIENT_GONE, Scope
from tollhouse.proxy.context import RequestContext
from tollhouse.proxy.exchange import call_upstream
from tollhouse.routing.router import Deployment


class Abandonment:
    """Cancels the current task when the server says the client left, and tells that
    cancellation apart from any other (a server shutting down)."""

    __slots__ = ("_fired", "_scope", "_task")

    def __init__(self, scope: Scope) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._scope = scope
        self._fired = False
        scope[ON_CLIENT_GONE] = self._fire

    @property
    def gone(self) -> bool:
        """The client has left already (before the watch began, or since)."""
        return self._fired or bool(self._scope.get(CLIENT_GONE))

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def absorb(self) -> bool:
        """Call in ``except CancelledError``: True, with the cancellation undone, when it
        was the client leaving; False when it is another cancellation, to re-raise."""
        if not self._fired:
            return False
        self._fired = False
        self._task.uncancel()
        return True

    async def call_upstream(
        self, ctx: RequestContext, dep: Deployment, request: UpstreamRequest, prompt_tokens: int
    ) -> bytes | None:
        """``exchange.call_upstream``; None when the client left meanwhile and the call was
        cancelled. The request is then ``cancelled`` (499), charged its prompt as an
        estimate (by ``call_upstream``: the upstream had it, and reported no usage)."""
        try:
            return await call_upstream(ctx, dep, request, prompt_tokens)
        except asyncio.CancelledError:
            if not self.absorb():
                raise
        ctx.cancel(499)
        return None

    async def execute(self, ctx: RequestContext, attempts: Callable[[], Awaitable[None]]) -> None:
        """Run ``attempts`` unless the client left, and stop them if it leaves.

        A client gone before the first attempt costs nothing; one that leaves between
        attempts, or while its answer is written, is ``cancelled`` with what was charged.
        """
        try:
            if self.gone:
                ctx.cancel(499)
                return
            await attempts()
        except asyncio.CancelledError:
            if not self.absorb():
                raise
            ctx.cancel(499)
        finally:
            self._scope.pop(ON_CLIENT_GONE, None)  # no notice needed any more
