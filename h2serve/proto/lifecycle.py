"""The lifecycle of a connection, as one transition table per protocol.

A connection's life used to be eight flags read and set across a protocol class; which combinations
could happen was nowhere written down. Here it is a table of (state, event) -> state, as h11's
`_state.py` keeps its own: an engine fires events and acts on the state it lands in, and an event
the table does not list for a state is a bug in the engine (LifecycleError), never ignored.

The rules, HTTP/2 (RFC 9113 section 6.8):
- OPEN takes requests. SHUTDOWN (the server is stopping) sends a GOAWAY with the largest stream id
  and a PING: DRAINING, where requests already on their way are still taken.
- DRAINED (the PING came back, or the wait for it ran out) sends the final GOAWAY naming the last
  stream taken: FINISHING. The client's own GOAWAY also leads to FINISHING: it opens no more streams.
- FINISHING closes when the last stream is answered (IDLE): CLOSING.
- CLOSE (a protocol error, a flood, a timeout, a GOAWAY with an error) closes at once after the
  frames queued: CLOSING. ABORT drops the connection with nothing more sent, and LOST (the
  transport is gone) ends every state: CLOSED.

HTTP/1.1 has no streams and no GOAWAY: SHUTDOWN closes an idle connection at once and a busy one after
its response (DRAINING, then IDLE); CLOSE also follows a response after which the connection
must close.

The adapter reads only the state: CLOSING means write what is queued and close; CLOSED means abort.
"""

from __future__ import annotations

OPEN, DRAINING, FINISHING, CLOSING, CLOSED = "open", "draining", "finishing", "closing", "closed"
SHUTDOWN, GOAWAY_READ, DRAINED, IDLE, CLOSE, ABORT, LOST = (
    "shutdown", "goaway-read", "drained", "idle", "close", "abort", "lost")

Table = dict[tuple[str, str], str]
_ENDED = frozenset({CLOSING, CLOSED})

H2_TABLE: Table = {
    (OPEN, SHUTDOWN): DRAINING,
    (OPEN, GOAWAY_READ): FINISHING,
    (OPEN, DRAINED): OPEN,            # a PING ACK carrying our payload, not after a shutdown: nothing
    (OPEN, IDLE): OPEN,
    (DRAINING, SHUTDOWN): DRAINING,
    (DRAINING, GOAWAY_READ): FINISHING,
    (DRAINING, DRAINED): FINISHING,
    (DRAINING, IDLE): DRAINING,       # the PING is still to come back: more requests may be on the way
    (FINISHING, SHUTDOWN): FINISHING,
    (FINISHING, GOAWAY_READ): FINISHING,
    (FINISHING, DRAINED): FINISHING,
    (FINISHING, IDLE): CLOSING,
    (CLOSING, SHUTDOWN): CLOSING,
    (CLOSING, GOAWAY_READ): CLOSING,
    (CLOSING, DRAINED): CLOSING,
    (CLOSING, IDLE): CLOSING,
    (CLOSING, CLOSE): CLOSING,
}

H1_TABLE: Table = {
    (OPEN, SHUTDOWN): DRAINING,
    (OPEN, IDLE): OPEN,
    (DRAINING, SHUTDOWN): DRAINING,
    (DRAINING, IDLE): CLOSING,
    (CLOSING, SHUTDOWN): CLOSING,
    (CLOSING, IDLE): CLOSING,
    (CLOSING, CLOSE): CLOSING,
}

# Every state but the last: CLOSE closes, ABORT and LOST end. CLOSED takes any event and stays.
for _table in (H2_TABLE, H1_TABLE):
    _states = {state for state, _ in _table}
    for _state in _states - {CLOSING}:
        _table[(_state, CLOSE)] = CLOSING
    for _state in _states:
        _table[(_state, ABORT)] = CLOSED
        _table[(_state, LOST)] = CLOSED
    for _event in {event for _, event in _table}:
        _table[(CLOSED, _event)] = CLOSED


class LifecycleError(Exception):
    """An event the table does not allow in the current state: a bug in an engine."""


class Lifecycle:
    """A connection's state, moved only by `fire()`."""

    __slots__ = ("state", "table")

    def __init__(self, table: Table) -> None:
        self.table = table
        self.state = OPEN

    def fire(self, event: str) -> str:
        """Apply `event`; the new state."""
        try:
            self.state = self.table[(self.state, event)]
        except KeyError:
            raise LifecycleError(f"{event!r} is not allowed in state {self.state!r}") from None
        return self.state

    @property
    def ended(self) -> bool:
        """Closing or closed: nothing more is taken or produced but what is queued."""
        return self.state in _ENDED
