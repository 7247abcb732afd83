"""Dynamic micro-batching and back-pressure for the REST service.

Requests put preprocessed images on one queue; a single worker takes up to ``max_size`` of them,
waiting at most ``max_wait_ms`` for more after the first, and runs them as one forward pass.
Concurrent clients then share forward passes instead of fighting over the cores.

A failure stays with the image that caused it: when a batch fails, its images are run one by one
so that the others are still answered. The worker task is restarted if it ever ends, and every
caller waits with a timeout, so a stuck or dead worker is a 504 and a 503 on /ready, never a hang.

Pixels and outputs are whatever the backend takes and gives (numpy arrays for an ONNX Runtime
export, torch tensors for a PyTorch model): this module imports no torch, so a deploy-only
install (no torch) serves an export.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from vitft.core.errors import VitftError
from vitft.deploy.arrays import stack

log = logging.getLogger(__name__)


@dataclass
class _Item:
    pixels: Any  # (3, H, W), numpy or torch
    future: asyncio.Future


class MicroBatcher:
    """Batch single images from many requests into forward passes of ``fn``.

    ``fn`` maps ``(N, 3, H, W)`` pixels to ``(N, C)`` outputs; it always runs on one dedicated
    thread, so a backend never sees two calls at once. ``on_batch`` is told each pass's size.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        max_size: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_size < 1:
            raise VitftError(f"batch.max_size={max_size} must be >= 1")
        if max_wait_ms < 0:
            raise VitftError(f"batch.max_wait_ms={max_wait_ms} must be >= 0")
        self.fn = fn
        self.max_size = int(max_size)
        self.max_wait = float(max_wait_ms) / 1000
        self.on_batch = on_batch
        self.batch_sizes: list[int] = []  # recent forward-pass sizes, for /metadata and tests
        self.restarts = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._forward_since: float | None = None  # monotonic start of the running pass
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitft-forward")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._stopping = False
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker())
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        if self._stopping or task.cancelled():
            return
        err = task.exception()
        log.error("batch worker ended (%r); restarting it", err, exc_info=err)
        self.restarts += 1
        self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(self._task, 10)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        """Images waiting for a forward pass."""
        return self._queue.qsize() if self._queue is not None else 0

    def stalled(self, limit_s: float) -> bool:
        """Whether the running forward pass has taken longer than ``limit_s``."""
        since = self._forward_since
        return since is not None and time.monotonic() - since > limit_s

    async def submit_each(
        self, images: list[Any], timeout_s: float = 60.0
    ) -> list[Any | Exception]:
        """The output row of each ``(3, H, W)`` image, or the exception that image raised."""
        if self._queue is None:
            raise VitftError("MicroBatcher.start() was not awaited")
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            fut = loop.create_future()
            self._queue.put_nowait(_Item(image, fut))
            futures.append(fut)
        try:
            return await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), timeout_s
            )
        finally:
            for fut in futures:  # timed out: the worker skips what nobody waits for
                fut.cancel()

    async def submit(self, pixels: Any, timeout_s: float = 60.0) -> Any:
        """Outputs ``(N, C)`` for ``pixels`` ``(N, 3, H, W)``; the first failure is raised."""
        rows = await self.submit_each(list(pixels), timeout_s)
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        return stack(rows)

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
        while True:
            items = await self._collect()
            live = [it for it in items if not it.future.done()]  # the client may have gone
            try:
                if live:
                    await self._answer(live)
            except Exception as err:  # noqa: BLE001  (kept with these images; the loop goes on)
                log.exception("batch of %d failed outside the forward pass", len(live))
                _settle(live, [err] * len(live))

    async def _forward(self, batch: Any) -> Any:
        self._forward_since = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.fn, batch)
        finally:
            self._forward_since = None

    async def _answer(self, live: list[_Item]) -> None:
        try:
            out = await self._forward(stack([it.pixels for it in live]))
            rows: list = list(out)  # the rows along the first axis (torch: unbind(0))
            if len(rows) != len(live):
                raise VitftError(f"the model gave {len(rows)} rows for {len(live)} images")
        except Exception as err:  # noqa: BLE001
            if len(live) == 1:
                _settle(live, [err])
                return
            # One bad image must not fail the others: run each alone to find which one it is.
            log.warning("batch of %d failed (%s); running its images one by one", len(live), err)
            for it in live:
                await self._answer([it])
            return
        self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
        if self.on_batch is not None:
            self.on_batch(len(live))
        _settle(live, rows)


def _settle(items: list[_Item], results: list) -> None:
    for it, res in zip(items, results, strict=True):
        if it.future.done():
            continue
        if isinstance(res, BaseException):
            it.future.set_exception(res)
        else:
            it.future.set_result(res)


class ConcurrencyLimit:
    """At most ``limit`` requests in flight; beyond that the caller answers 429 at once."""

    def __init__(self, limit: int):
        if limit < 1:
            raise VitftError(f"max_concurrency={limit} must be >= 1")
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
