"""``cancel_and_wait``: a background task whose cancellation gets lost still stops."""

from __future__ import annotations

import asyncio

import pytest

from tollhouse.tasks import cancel_and_wait


async def test_a_task_that_loses_cancellations_is_cancelled_again_until_it_ends() -> None:
    lost = 0

    async def stubborn() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                lost += 1
                if lost == 3:
                    raise
                # what a library's own timeout can turn a cancellation into: swallowed

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, every=0.05), timeout=5)
    assert task.cancelled() and lost == 3


async def test_what_the_task_failed_with_is_raised() -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("broke while stopping") from None

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broke while stopping"):
        await cancel_and_wait(task)


async def test_a_finished_task_is_left_as_it_is() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert task.done() and not task.cancelled()
