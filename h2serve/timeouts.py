"""The send timeouts every connection enforces, whatever its protocol.

Both come from clients that stop reading: one whose transport stays paused (it asked for more
than it reads), and one that reads neither our last bytes nor the TLS close_notify after we closed,
which would keep the transport open for good (asyncio has no limit of its own on plain TCP, and
uvloop waits for the client's close_notify). The sweeper calls each connection's `check()` about
once a second; `check()` starts with `SendTimeouts.send_timed_out()`.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("h2serve")


class SendTimeouts:
    """Mixed into the protocol classes (http1.py, http2.py), which set these attributes."""

    transport: asyncio.Transport | None
    client: str
    closed: bool
    closed_at: float
    paused: bool
    paused_at: float

    def abort(self) -> None:
        raise NotImplementedError

    def send_timed_out(self, now: float, send_timeout: float) -> bool:
        """Abort a connection closed or paused for over `send_timeout` seconds. True when the
        connection is closed (whether by this call or before): its other timeouts no longer apply."""
        if self.closed:
            if self.transport is not None and now - self.closed_at > send_timeout:
                self.transport.abort()
            return True
        if self.paused and now - self.paused_at > send_timeout:
            log.info("client %s has read nothing for %gs: closing", self.client, send_timeout)
            self.abort()
            return True
        return False
