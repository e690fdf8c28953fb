"""Machines built from one table run on one ``transitions`` machine: each keeps its own state.

The ``transitions`` machine is built once per table and every
``ConnectionMachine`` adds its own model to it (a manager is then built in
well under a millisecond); these tests pin what that sharing must not change.
"""

from __future__ import annotations

import gc
import random
import weakref
from dataclasses import replace

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine, ConnectionState
from ibkr_connection.table import TABLE

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


def test_a_machine_keeps_few_objects_for_the_garbage_collector(clock: ManualClock) -> None:
    """Building a machine leaves under 50 objects the collector tracks (the conveniences
    transitions binds to a model, ~180 of them, are not kept): fewer collections in start()."""
    ConnectionMachine(clock, port=4002, client_ids=[7])  # the shared machine built
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        machine = ConnectionMachine(clock, port=4002, client_ids=[7])
        kept = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert machine.state is S.DISCONNECTED
    assert kept < 50, kept


def _run(machine: ConnectionMachine, clock: ManualClock, seed: int) -> list[object]:
    """Feed ``machine`` 400 seeded random inputs; every step's state and effects."""
    rng = random.Random(seed)
    kinds = [kind for kind in InputKind if kind is not K.STOP]
    steps: list[object] = []
    for _ in range(400):
        clock.advance(rng.expovariate(2.0))
        step = machine.handle(Input(rng.choice(kinds), code=rng.choice((None, 1100, 2103)),
                                    farm=rng.choice((None, "usfarm")), costly=rng.random() < 0.5))
        steps.append((step.state, [(e.name, e.args) for e in step.effects]))
    return steps


def test_a_changed_copy_of_the_table_runs_as_if_built_from_scratch() -> None:
    """A copy of the table with two rows changed (its machine made from the table's, sharing
    the other rows) runs exactly as the same rows built from scratch; the table's own
    machines still run the table."""
    changed = list(TABLE)
    for index, row in enumerate(TABLE):
        if (row.source, row.input) == (S.DISCONNECTED, K.CONNECT):
            changed[index] = replace(row, dest=S.FAILED)
        if (row.source, row.input, row.dest) == (S.LOST, K.RESTORED_DATA_LOST, S.CONNECTED):
            changed[index] = replace(row, actions=("note_link_restored",))
    copy = tuple(changed)
    # The same rows and one more, never reached (after its (state, input)'s unguarded
    # row): another length, so a machine built from scratch.
    scratch = (*copy, copy[-1])
    runs = {}
    for name, table in (("real", TABLE), ("copy", copy), ("scratch", scratch),
                        ("real again", TABLE)):
        clock = ManualClock()
        runs[name] = _run(ConnectionMachine(clock, port=4002, client_ids=[7], table=table),
                          clock, seed=3)
    assert runs["copy"] == runs["scratch"]
    assert runs["copy"] != runs["real"]
    assert runs["real again"] == runs["real"]
    clock = ManualClock()
    machine = ConnectionMachine(clock, port=4002, client_ids=[7], table=copy)
    assert machine.handle(Input(K.CONNECT)).state is S.FAILED
