"""Natural batching: concurrent callers share one round trip, with no timer.

A single background task takes everything that is waiting, sends it in one call, and
hands each caller its own outcome. Whatever arrives while that call is in flight forms
the next batch: a lone request goes out at once, and batches grow only under load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")

# Per item: None (done) or the exception its caller gets. A runner may return None for "all done".
Outcomes = Sequence[BaseException | None] | None


class Batcher(Generic[Item]):
    """Runs `run(items)` for whatever callers of `submit` are waiting, up to `max_size` at a time."""

    def __init__(self, name: str, run: Callable[[list[Item]], Awaitable[Outcomes]], max_size: int = 256) -> None:
        self.name = name
        self.run = run
        self.max_size = max_size
        self._waiting: asyncio.Queue[tuple[Item, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> None:
        """Wait until `item` went out in a batch; raise its own error, or the whole batch's."""
        if self._task is None or self._task.done():
            raise RuntimeError(f"{self.name} batcher is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait((item, future))
        await future

    def start(self) -> None:
        """Start the background task (in the running event loop)."""
        self._task = asyncio.create_task(self._loop(), name=f"{self.name}-batcher")

    async def stop(self) -> None:
        """Stop the background task (after the server stopped); callers still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._waiting.empty():
            self._waiting.get_nowait()[1].cancel()

    async def _loop(self) -> None:
        while True:
            batch = [await self._waiting.get()]
            while len(batch) < self.max_size and not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
            # A caller cancelled while waiting (deadline, disconnect) has nobody to answer: skip its item.
            batch = [(item, future) for item, future in batch if not future.done()]
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[None]]]) -> None:
        """One call for the batch; an exception fails this batch's callers only, never the loop."""
        outcomes: Outcomes
        try:
            outcomes = await self.run([item for item, _ in batch])
        except Exception as error:  # noqa: BLE001 - handed to every caller of the batch
            outcomes = [error] * len(batch)
        except asyncio.CancelledError:  # stopped mid-batch: nobody is left waiting forever
            for _, future in batch:
                future.cancel()
            raise
        if outcomes is None:
            outcomes = [None] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)
