"""A stay runs without ``transitions`` exactly as it runs through it.

A stay is the one row of its (state, input), unguarded, with no next state and only
notes for actions (the three farm notices of every connect are stays in
``connecting``). The machine runs those rows' notes and records them itself
(``fast_stays=True``, the default); here every such row of TABLE, found by this test
from the table, is run both ways on machines driven to its state, and the steps, the
journals, the facts and the log lines must be the same.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.table import ACTIONS, TABLE, ConnectionState, Phase, Row

from conftest import drive_to

S = ConnectionState
K = InputKind


def _stays() -> list[Row]:
    """The rows that are alone for their (state, input), unguarded, staying, notes only."""
    rows: dict[tuple[ConnectionState, InputKind], list[Row]] = {}
    for row in TABLE:
        rows.setdefault((row.source, row.input), []).append(row)
    return [group[0] for group in rows.values()
            if len(group) == 1 and group[0].guard is None and group[0].dest is None
            and all(ACTIONS[name].phase is Phase.NOTE for name in group[0].actions)]


STAYS = _stays()

#: What the inputs carry, so that every note has something to note (a farm reported
#: broken is another than the one noted broken before).
FIELDS: dict[str, Any] = {"code": 2104, "message": "Market data farm connection is OK:usfarm",
                          "port": 4003, "costly": True}

#: Machine attributes that are not facts: the shared ``transitions`` parts, the clock,
#: the random source (compared by its state).
NOT_FACTS = {"_model", "_events", "_stays", "_clock", "_rng"}


def _facts(machine: ConnectionMachine) -> dict[str, Any]:
    facts = {name: value for name, value in vars(machine).items() if name not in NOT_FACTS}
    facts["state"] = machine.state
    facts["rng"] = machine._rng.getstate()
    return facts


def _run(fast: bool, row: Row, noted: bool,
         caplog: pytest.LogCaptureFixture) -> tuple[Any, ...]:
    clock = ManualClock()
    machine = ConnectionMachine(clock, port=4002, client_ids=[7, 8], controller_configured=True,
                                record_journal=True, fast_stays=fast)
    drive_to(machine, row.source)
    if noted:
        # Facts noted before, so that a note that forgets one has something to forget.
        machine._session.broken_farms.add("usfarm")
        machine._session.link_lost = machine._session.server_link_broken = True
    clock.advance(1.5)
    caplog.clear()
    farm = "ushmds" if row.input is K.FARM_BROKEN else "usfarm"
    step = machine.handle(Input(row.input, farm=farm, **FIELDS))
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records
             if r.name.startswith("ibkr_connection")]
    return step, machine.journal, machine.last_row, lines, _facts(machine)


def test_the_connects_farm_notices_are_stays(triggered: list[str]) -> None:
    """The farm notices of a connect (farm OK in connecting) are stays: no transitions event."""
    found = {(row.source, row.input) for row in STAYS}
    assert {(S.CONNECTING, K.FARM_OK), (S.CONNECTING, K.FARM_BROKEN),
            (S.DISCONNECTED, K.PORT_RESET), (S.STOPPED, K.CONNECT),
            (S.CONNECTED, K.FARM_OK)} <= found
    assert (S.CONNECTED, K.FARM_BROKEN) not in found  # moves to degraded
    assert (S.CONNECTED, K.SUBSCRIBED) not in found  # asks for an effect
    assert (S.DEGRADED, K.FARM_OK) not in found  # guarded
    machine = ConnectionMachine(ManualClock(), port=4002, client_ids=[7])
    machine.handle(Input(K.CONNECT))
    for farm in ("usfarm", "ushmds", "secdefil"):
        machine.handle(Input(K.FARM_OK, code=2104, farm=farm))
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    assert triggered == ["connect", "attempt_succeeded"]
    assert machine.state is S.CONNECTED


@pytest.mark.parametrize("noted", [False, True], ids=["fresh", "noted"])
@pytest.mark.parametrize("row", STAYS, ids=lambda r: f"{r.source.value}-{r.input.value}")
def test_a_stay_runs_the_same_both_ways(row: Row, noted: bool,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """Step, journal, row taken, log lines and facts: the same with and without transitions."""
    caplog.set_level(logging.DEBUG, logger="ibkr_connection")
    fast = _run(True, row, noted, caplog)
    slow = _run(False, row, noted, caplog)
    assert fast == slow
    step = fast[0]
    assert step.transition is None and step.effects == () and step.state is row.source
    assert fast[2] is row
