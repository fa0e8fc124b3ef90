"""The lifespan's bounded shutdown (app.finish_within): a step that never ends stops it at the deadline,
and a step it did not reach, given as a function, never becomes a coroutine "never awaited"."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings

from chatagent.app import finish_within


def test_steps_run_in_order_within_the_deadline() -> None:
    ran: list[str] = []

    async def step(name: str) -> None:
        await asyncio.sleep(0)
        ran.append(name)

    asyncio.run(finish_within(5, "steps", step("first"), None, step("second")))
    assert ran == ["first", "second"]


def test_a_hanging_step_ends_the_shutdown_and_later_steps_are_closed() -> None:
    ran: list[str] = []

    async def hang(release: asyncio.Event) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:  # a step that ignores cancellation
                continue

    async def close() -> None:
        ran.append("close")

    async def main() -> float:
        started = time.monotonic()
        release = asyncio.Event()
        hanging = asyncio.ensure_future(hang(release))
        await finish_within(0.2, "close services", hanging, close)
        took = time.monotonic() - started
        release.set()
        await hanging
        return took

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        took = asyncio.run(main())
        gc.collect()
    assert took < 5
    assert ran == []
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
