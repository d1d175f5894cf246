"""Worker threads for the site's blocking work, so the event loop never waits on the disk or a CPU.

The loop asks `Site.respond(..., block=False)`; on `WouldBlock(kind)` it submits
`lambda: site.respond(..., block=True)` here under that kind, and delivers the result when the
future is done (`asyncio.wrap_future`). Nothing here knows of asyncio, and nothing runs until used:
the threads start with the first task.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from .coding import MAX_COMPRESSIONS

T = TypeVar("T")

IO_THREADS = 8  # file loads and listings at once: mostly waiting on the disk, not on a CPU


class WorkPool:
    """Worker threads for blocking site work: "io" (file loads, listings) and "cpu" (compression),
    each a bounded ThreadPoolExecutor, so compressions queued never hold up file loads.

    `cpu_threads` defaults to `coding.MAX_COMPRESSIONS` (one per CPU), the bound the compression
    cache keeps anyway, whichever thread compresses."""

    def __init__(self, io_threads: int = IO_THREADS, cpu_threads: int = MAX_COMPRESSIONS) -> None:
        # ThreadPoolExecutor is looked up here, not imported with the module: importing
        # concurrent.futures.thread registers an exit hook, which an unused pool should not.
        executor = concurrent.futures.ThreadPoolExecutor
        self._pools = {"io": executor(io_threads, thread_name_prefix="h2serve-io"),
                       "cpu": executor(cpu_threads, thread_name_prefix="h2serve-cpu")}

    def submit(self, kind: str, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn()` in the pool for `kind` ("io" or "cpu", as WouldBlock says)."""
        return self._pools[kind].submit(fn)

    def shutdown(self, wait: bool = False) -> None:
        """Drop the tasks not started yet (their futures are cancelled) and let the threads end
        after the tasks running; `wait` to wait for those here (not on the event loop)."""
        for pool in self._pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)
