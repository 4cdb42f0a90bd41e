"""Stopping a background task for sure.

A cancellation can be lost. A client library that runs its own timeout around a
command can turn a cancellation arriving at the wrong moment into its timeout
error, and a background loop's ``except Exception`` then takes it for one more
failed round and carries on. Awaiting the task once after a single ``cancel()``
then waits forever: seen in CI as the Redis limits backend's ``aclose`` hanging,
which would hang a gateway's shutdown the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], every: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again every ``every``
    seconds; re-raise what it failed with, if not its cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
    if not task.cancelled():
        task.result()
