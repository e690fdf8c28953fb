"""Machines built from one table run on one ``transitions`` machine: each keeps its own state.

The ``transitions`` machine is built once per table and every
``ConnectionMachine`` adds its own model to it (a manager is then built in
well under a millisecond); these tests pin what that sharing must not change.
"""

from __future__ import annotations

import gc
import weakref

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine, ConnectionState

S = ConnectionState
K = InputKind


def test_machines_of_one_table_keep_their_own_state_and_counters(clock: ManualClock) -> None:
    """Two machines fed in turn: each moves, counts and records on its own."""
    first = ConnectionMachine(clock, port=4002, client_ids=[7])
    second = ConnectionMachine(clock, port=4003, client_ids=[8, 9])
    assert first.handle(Input(K.CONNECT)).state is S.CONNECTING
    assert second.state is S.DISCONNECTED
    assert second.handle(Input(K.CONNECT)).state is S.CONNECTING
    assert first.handle(Input(K.ATTEMPT_SUCCEEDED)).state is S.CONNECTED
    step = second.handle(Input(K.CLIENT_ID_IN_USE, code=326))
    assert step.state is S.BACKOFF
    assert first.state is S.CONNECTED
    assert [t.dest for t in first.transcript] == [S.CONNECTING, S.CONNECTED]
    assert [t.dest for t in second.transcript] == [S.CONNECTING, S.BACKOFF]
    assert (first.attempt, second.attempt) == (0, 1)
    assert (first.port, second.port) == (4002, 4003)
    start = second.handle(Input(K.RETRY_DUE))
    assert next(e for e in start.effects if e.name == "start_attempt").args == (2, 8, 4003)


def test_a_machine_let_go_of_is_collected_with_its_model(clock: ManualClock) -> None:
    """Nothing shared keeps a dropped machine, or the model it added, alive."""
    machine = ConnectionMachine(clock, port=4002, client_ids=[7])
    machine.handle(Input(K.CONNECT))
    gone = weakref.ref(machine)
    model = weakref.ref(machine._model)
    del machine
    gc.collect()
    assert gone() is None
    assert model() is None
