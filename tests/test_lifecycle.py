"""The connection lifecycle tables (proto/lifecycle.py): every listed transition lands in a known
state, anything unlisted raises, CLOSED absorbs everything, and the rules the engines rely on."""

from __future__ import annotations

import itertools

import pytest

from h2serve.proto.lifecycle import (
    ABORT,
    CLOSE,
    CLOSED,
    CLOSING,
    DRAINED,
    DRAINING,
    FINISHING,
    GOAWAY_READ,
    H1_TABLE,
    H2_TABLE,
    IDLE,
    LOST,
    OPEN,
    SHUTDOWN,
    Lifecycle,
    LifecycleError,
    Table,
)

STATES = (OPEN, DRAINING, FINISHING, CLOSING, CLOSED)
EVENTS = (SHUTDOWN, GOAWAY_READ, DRAINED, IDLE, CLOSE, ABORT, LOST)
TABLES = {"h2": H2_TABLE, "h1": H1_TABLE}


def at(table: Table, state: str) -> Lifecycle:
    life = Lifecycle(table)
    life.state = state
    return life


@pytest.mark.parametrize("name", TABLES)
def test_every_transition_lands_in_a_known_state(name: str) -> None:
    table = TABLES[name]
    for (state, event), target in table.items():
        assert state in STATES and event in EVENTS
        assert at(table, state).fire(event) == target
        assert target in STATES


@pytest.mark.parametrize("name", TABLES)
def test_an_event_not_in_the_table_raises(name: str) -> None:
    table = TABLES[name]
    reachable = {OPEN} | set(table.values())
    for state, event in itertools.product(reachable, EVENTS):
        life = at(table, state)
        if (state, event) in table:
            life.fire(event)
        else:
            with pytest.raises(LifecycleError):
                life.fire(event)
            assert life.state == state  # a refused event changes nothing


@pytest.mark.parametrize("name", TABLES)
def test_an_unknown_event_raises(name: str) -> None:
    for state in {OPEN} | set(TABLES[name].values()):
        with pytest.raises(LifecycleError, match="'no-such-event'"):
            at(TABLES[name], state).fire("no-such-event")


@pytest.mark.parametrize("name", TABLES)
def test_closed_absorbs_every_event(name: str) -> None:
    table = TABLES[name]
    events = {event for _, event in table}
    assert {ABORT, LOST, CLOSE, SHUTDOWN, IDLE} <= events
    for event in events:
        assert at(table, CLOSED).fire(event) == CLOSED


@pytest.mark.parametrize("name", TABLES)
def test_close_abort_and_lost_end_every_state(name: str) -> None:
    table = TABLES[name]
    for state in {OPEN} | set(table.values()):
        assert at(table, state).fire(CLOSE) == (CLOSED if state == CLOSED else CLOSING)
        assert at(table, state).fire(ABORT) == CLOSED
        assert at(table, state).fire(LOST) == CLOSED


@pytest.mark.parametrize("name", TABLES)
def test_ended(name: str) -> None:
    for state in {OPEN} | set(TABLES[name].values()):
        assert at(TABLES[name], state).ended == (state in (CLOSING, CLOSED))


def test_h2_two_step_goaway() -> None:
    life = Lifecycle(H2_TABLE)
    assert life.state == OPEN
    assert life.fire(IDLE) == OPEN
    assert life.fire(DRAINED) == OPEN       # a PING ACK before any shutdown: nothing
    assert life.fire(SHUTDOWN) == DRAINING  # first GOAWAY and a PING
    assert life.fire(IDLE) == DRAINING      # requests may still be on their way
    assert life.fire(SHUTDOWN) == DRAINING
    assert life.fire(DRAINED) == FINISHING  # the final GOAWAY
    assert life.fire(SHUTDOWN) == FINISHING
    assert life.fire(IDLE) == CLOSING       # the last stream answered
    assert life.fire(IDLE) == CLOSING


@pytest.mark.parametrize("state", [OPEN, DRAINING, FINISHING])
def test_h2_the_clients_goaway_leads_to_finishing(state: str) -> None:
    assert at(H2_TABLE, state).fire(GOAWAY_READ) == FINISHING


def test_h1_has_no_goaway() -> None:
    for state in (OPEN, DRAINING):
        for event in (GOAWAY_READ, DRAINED):
            with pytest.raises(LifecycleError):
                at(H1_TABLE, state).fire(event)


def test_h1_shutdown_closes_after_the_response() -> None:
    life = Lifecycle(H1_TABLE)
    assert life.fire(IDLE) == OPEN          # a response done, keep-alive
    assert life.fire(SHUTDOWN) == DRAINING  # a response in flight
    assert life.fire(SHUTDOWN) == DRAINING
    assert life.fire(IDLE) == CLOSING       # it is done


def test_every_state_but_closed_is_reachable() -> None:
    for table in (H2_TABLE, H1_TABLE):
        seen, frontier = {OPEN}, [OPEN]
        while frontier:
            state = frontier.pop()
            for (source, _), target in table.items():
                if source == state and target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert CLOSED in seen and CLOSING in seen and DRAINING in seen
    assert FINISHING not in set(H1_TABLE.values())
