"""RFC 9218 priority signals on one HTTP/2 connection: the `priority` request header, and
PRIORITY_UPDATE frames, checked as section 7.1 says and remembered for streams not yet open.

Chrome and Firefox send both: the header with each request, and a PRIORITY_UPDATE when a resource
becomes more or less urgent (an image scrolled into view) or, in Firefox, before the request's
HEADERS. An update names a stream by id; one for a request stream the client has not opened yet
is kept (at most MAX_EARLY of them, the oldest dropped: a client cannot open more streams at once
than it may keep updates for) and applies when the stream opens, in place of its header, since it
was sent later. Malformed values fall back to the defaults (parse_priority never raises); a
malformed frame is a connection error, returned as a `Refusal` for the engine to answer.

RFC 7540's own priority scheme (PRIORITY frames, the priority fields of HEADERS) is what the
server's SETTINGS_NO_RFC7540_PRIORITIES = 1 says it ignores: h2 parses those, the budgets in
h2guard.py charge them, and nothing here reads them.
"""

from __future__ import annotations

from collections import OrderedDict

from h2.errors import ErrorCodes

from .h2guard import Refusal
from .priority import DEFAULT, Priority, parse_priority, parse_priority_update, priority_from_headers

NO_RFC7540_PRIORITIES = 0x9   # setting (RFC 9218 section 2.1)
MAX_EARLY = 100               # updates kept for streams not yet open


class PrioritySignals:
    """What the client said of each stream's priority."""

    __slots__ = ("_early", "highest_opened")

    def __init__(self) -> None:
        self._early: OrderedDict[int, Priority] = OrderedDict()
        self.highest_opened = 0

    def for_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> Priority:
        """The priority of a request stream as it opens: an update sent before it, else its header."""
        self.highest_opened = max(self.highest_opened, stream_id)
        early = self._early.pop(stream_id, None) if self._early else None
        return early if early is not None else priority_from_headers(headers)

    def update(self, frame_stream_id: int, payload: bytes) -> tuple[int, Priority] | Refusal | None:
        """A PRIORITY_UPDATE frame: (stream id, new priority) for an open or closed stream; None when
        it was kept for a stream not yet open; a Refusal for a connection error."""
        if frame_stream_id != 0:
            return Refusal(ErrorCodes.PROTOCOL_ERROR, "PRIORITY_UPDATE on a stream other than 0")
        try:
            stream_id, value = parse_priority_update(payload)
        except ValueError:
            return Refusal(ErrorCodes.FRAME_SIZE_ERROR, "PRIORITY_UPDATE shorter than a stream id")
        if stream_id == 0:
            return Refusal(ErrorCodes.PROTOCOL_ERROR, "PRIORITY_UPDATE naming stream 0")
        if stream_id % 2 == 0:
            # RFC 9218 section 7.1: a server's push streams cannot be reprioritized by id here.
            return Refusal(ErrorCodes.PROTOCOL_ERROR, "PRIORITY_UPDATE naming a pushed stream")
        priority = parse_priority(value, DEFAULT)
        if stream_id > self.highest_opened:
            self._early[stream_id] = priority
            self._early.move_to_end(stream_id)
            while len(self._early) > MAX_EARLY:
                self._early.popitem(last=False)
            return None
        return stream_id, priority
