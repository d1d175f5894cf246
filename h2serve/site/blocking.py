"""The signal that an answer needs blocking work, for callers that must not wait on the event loop.

`Site.respond(..., block=False)` (and `Site.lookup`, `FileCache.get`, `CompressionCache.get` with
`block=False`) answer only from what is in memory. Where they would touch the disk or compress,
they raise `WouldBlock` instead, and the caller runs the same call with `block=True` in a worker
thread (`workpool.WorkPool`, the pool named by `kind`).
"""

from __future__ import annotations


class WouldBlock(Exception):
    """Answering needs blocking work: `kind` is "io" (disk) or "cpu" (compression)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
