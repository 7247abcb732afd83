"""Dynamic micro-batching and back-pressure for the REST service.

Requests put preprocessed images on one queue; a single worker takes up to ``max_size`` of them,
waiting at most ``max_wait_ms`` for more after the first, and runs them as one forward pass.
Concurrent clients then share forward passes instead of fighting over the cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch


@dataclass
class _Item:
    pixels: torch.Tensor  # (3, H, W)
    future: asyncio.Future


class MicroBatcher:
    """Batch single images from many requests into forward passes of ``fn``.

    ``fn`` maps ``(N, 3, H, W)`` pixels to ``(N, C)`` probabilities; it always runs on one
    dedicated thread, so a backend never sees two calls at once.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        max_size: int = 16,
        max_wait_ms: float = 5.0,
    ):
        if max_size < 1:
            raise ValueError(f"batch.max_size={max_size} must be >= 1")
        if max_wait_ms < 0:
            raise ValueError(f"batch.max_wait_ms={max_wait_ms} must be >= 0")
        self.fn = fn
        self.max_size = int(max_size)
        self.max_wait = float(max_wait_ms) / 1000
        self.batch_sizes: list[int] = []  # recent forward-pass sizes, for /metadata and tests
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitft-forward")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def submit(self, pixels: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, C)`` for ``pixels`` ``(N, 3, H, W)``, batched with other callers."""
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        loop = asyncio.get_running_loop()
        futures = []
        for image in pixels:
            fut = loop.create_future()
            self._queue.put_nowait(_Item(image, fut))
            futures.append(fut)
        return torch.stack(await asyncio.gather(*futures))

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        items = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(items) < self.max_size:
            try:
                items.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return items

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [it for it in items if not it.future.done()]  # the client may have gone
            if not live:
                continue
            batch = torch.stack([it.pixels for it in live])
            try:
                probs = await loop.run_in_executor(self._pool, self.fn, batch)
            except Exception as err:  # noqa: BLE001  (handed to every waiting request)
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(err)
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
            for it, row in zip(live, probs, strict=True):
                if not it.future.done():
                    it.future.set_result(row)


class ConcurrencyLimit:
    """At most ``limit`` requests in flight; beyond that the caller answers 429 at once."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"max_concurrency={limit} must be >= 1")
        self.limit = int(limit)
        self.in_flight = 0

    def try_acquire(self) -> bool:
        # One event loop thread: no lock needed between the check and the increment.
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1
