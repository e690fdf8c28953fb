"""Every row of TABLE, and every entry and exit action, pinned: change a row's destination,
drop one of its actions, or drop one of a state's entry or exit actions, and a pure test of
the machine fails.

Mutants are built in-process through ``ConnectionMachine``'s own arguments (``table=``,
``entry_actions=``, ``exit_actions=``): while a mutant is set in ``conftest.MUTANT``, every
``RecordedMachine`` (the pure tests' machine, and the ``machine`` fixture's) is built
from it; nothing of ``ibkr_connection`` is patched. The killers are the pure tests of
the machine, run as plain functions with fresh fixtures: the hand-written grid
(tests/test_machine_table.py) and its guarded rows' other branches
(tests/test_guarded_rows.py), the behaviour tests (tests/test_machine_behaviour.py,
tests/test_restart_machine.py, tests/test_farm_status.py), the table's own
(tests/test_table.py) and the states' entry and exit actions' (tests/test_state_actions.py).
A killer that builds a bare ``ConnectionMachine`` never runs a mutant, so it is left out.

A mutant is killed when one of them fails on it, or when ``check_table`` refuses it
(the table's rules run on every import of ``ibkr_connection.table``). It runs only
the killers that can tell: a mutant of a row only the killers whose machines handled
that row's input in its state, a mutant of a state's entry or exit actions only those
that reached or left the state (each killer is run once on the real table to see what
its machines met; the machine is deterministic, so a killer that never meets the
changed part runs exactly as on the real table). The killers most focused on the
changed part go first, and the one that killed the last mutant of the same place before
them: a mutant costs a few milliseconds.

The mutants no test kills are listed in SURVIVORS, each with why it is equivalent
(none today): a new survivor fails this test, and so does a listed one that a new
test kills (take it off the list).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionState
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import (
    ACTIONS,
    ENTRY,
    EXIT,
    TABLE,
    Phase,
    Row,
    StateAction,
    check_table,
)

from conftest import MUTANT, Mutant, RecordedMachine, RecordingEffects

S = ConnectionState
K = InputKind

#: The modules whose tests are the killers.
PURE_MODULES = ("test_machine_table", "test_guarded_rows", "test_machine_behaviour",
                "test_restart_machine", "test_table", "test_farm_status", "test_state_actions")

#: Mutants no pure test kills, by id, with why: each is equivalent (no input sequence
#: tells it from the real table). None today: the two there were (connected's and
#: degraded's connectivity_lost without note_link_lost: the fact was forgotten on
#: entering connecting, unread before) went with the action, off those rows.
SURVIVORS: dict[str, str] = {}

#: A place of the machine a mutant changes: ("row", the row), ("group", state, input) for
#: a fact noted before the guards of (state, input) are tried, ("entry", state) or
#: ("exit", state).
Place = tuple[Any, ...]


@dataclass(frozen=True)
class MutantSpec:
    """One mutant: its id, the place it changes, and ConnectionMachine's arguments for it."""

    id: str
    place: Place
    arguments: dict[str, Any]
    table: tuple[Row, ...] = TABLE


@dataclass
class Killer:
    """One pure test case: a test function and the arguments of one parametrization."""

    name: str
    func: Callable[..., Any]
    params: dict[str, Any]
    #: What its machines met on the real table: (state before, input, state after).
    met: set[tuple[ConnectionState, InputKind, ConnectionState]] = field(default_factory=set)
    #: The rows that took its machines' steps on the real table.
    rows: set[Row | None] = field(default_factory=set)

    def run(self, mutant: Mutant) -> bool:
        """Run the case on fresh fixtures, its machines built from ``mutant``; True if it fails."""
        token = MUTANT.set(mutant)
        try:
            effects, clock = RecordingEffects(), ManualClock()
            fixtures: dict[str, Any] = {"effects": effects, "clock": clock}
            wanted = inspect.signature(self.func).parameters
            if "machine" in wanted:
                fixtures["machine"] = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                                                      policy=RecoveryPolicy())
            args = {name: fixtures[name] for name in wanted if name not in self.params}
            try:
                self.func(**self.params, **args)
            except Exception:  # any failure of a test kills the mutant
                return True
            return False
        finally:
            MUTANT.reset(token)

    def focus(self, place: Place) -> float:
        """How much of what its machines ran, on the real table, is the part ``place``
        names: 0 if none (it cannot tell the mutant), 1 if all of it."""
        if place[0] == "row":
            return 1 / len(self.rows) if place[1] in self.rows else 0.0
        steps = self.met
        if not steps:
            return 0.0
        if place[0] == "group":
            hits = [m for m in steps if m[0] is place[1] and m[1] is place[2]]
        elif place[0] == "entry":
            hits = [m for m in steps if m[2] is place[1]]
        else:
            hits = [m for m in steps if m[0] is place[1]]
        return len(hits) / len(steps)


def _expand(func: Callable[..., Any]) -> list[dict[str, Any]]:
    """The parameter sets of ``func``'s ``parametrize`` marks (their product)."""
    sets: list[dict[str, Any]] = [{}]
    for mark in getattr(func, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        argnames, argvalues = mark.args[0], mark.args[1]
        names = ([n.strip() for n in argnames.split(",")] if isinstance(argnames, str)
                 else list(argnames))
        grown = []
        for value in argvalues:
            values = getattr(value, "values", value)  # a pytest.param carries .values
            if len(names) == 1 and not hasattr(value, "values"):
                values = (values,)
            grown += [{**base, **dict(zip(names, values, strict=True))} for base in sets]
        sets = grown
    return sets


@functools.cache
def _killers() -> list[Killer]:
    """Every pure test case that needs no fixture beyond effects, clock and machine, and
    builds its machines as RecordedMachine (a bare ConnectionMachine never runs a mutant);
    each run once on the real table to note what its machines met."""
    found = []
    for module_name in PURE_MODULES:
        module = importlib.import_module(module_name)
        for name, func in vars(module).items():
            if (not name.startswith("test_") or not inspect.isfunction(func)
                    or func.__module__ != module.__name__
                    or "ConnectionMachine(" in inspect.getsource(func)):
                continue
            wanted = set(inspect.signature(func).parameters)
            for params in _expand(func):
                if wanted - set(params) <= {"effects", "clock", "machine"}:
                    found.append(Killer(f"{module_name}::{name}", func, params))
    for killer in found:
        real = Mutant({})
        assert not killer.run(real), f"{killer.name} {killer.params} fails on the real table"
        killer.met, killer.rows = real.met, real.rows
    return found


def _dropped(
    actions: tuple[StateAction, ...],
) -> Iterator[tuple[StateAction, tuple[StateAction, ...]]]:
    """Each action, with the others in order."""
    for drop in range(len(actions)):
        yield actions[drop], actions[:drop] + actions[drop + 1:]


def _mutants() -> Iterator[MutantSpec]:
    """Each row with each other destination and with each action dropped; each state
    with each entry action and each exit action dropped."""
    for index, row in enumerate(TABLE):
        where = f"{row.source.value}/{row.input.value}"
        if row.guard:
            where += f"[{row.guard}]"
        # A changed row tells only once it takes a step; a fact it notes is noted
        # whichever row of its (state, input) takes the step.
        changed: list[tuple[str, Row, Place]] = [
            (f"{where} -> {'stay' if dest is None else dest.value}", replace(row, dest=dest),
             ("row", row))
            for dest in (None, *ConnectionState) if dest is not row.dest]
        changed += [
            (f"{where} without {action}",
             replace(row, actions=row.actions[:drop] + row.actions[drop + 1:]),
             ("group", row.source, row.input) if ACTIONS[action].phase is Phase.NOTE
             else ("row", row))
            for drop, action in enumerate(row.actions)]
        for mutant_id, mutated, place in changed:
            table = (*TABLE[:index], mutated, *TABLE[index + 1:])
            yield MutantSpec(mutant_id, place, {"table": table}, table)
    for which, actions, argument in (("entry", ENTRY, "entry_actions"),
                                     ("exit", EXIT, "exit_actions")):
        for state, steps in actions.items():
            for step, kept in _dropped(steps):
                label = step.action if step.guard is None else f"{step.action}[{step.guard}]"
                yield MutantSpec(f"{state.value} {which} without {label}",
                                 (which, state), {argument: {**actions, state: kept}})


def _refused(mutant: MutantSpec) -> bool:
    """True if ``check_table`` refuses the mutant's table.

    Checked on the changed (state, input)'s rows alone, its problems there kept: every
    rule of ``check_table`` reads one row, or the rows of one (state, input), and the
    real table breaks none, so the mutant's problems are all there (a millisecond less
    per mutant than the whole table).
    """
    if mutant.place[0] in ("entry", "exit"):
        return False  # the entry and exit actions are checked as declared in table.py
    changed = mutant.place[1] if mutant.place[0] == "row" else None
    state, kind = ((changed.source, changed.input) if changed is not None
                   else (mutant.place[1], mutant.place[2]))
    where = f"{state.value} + {kind.value}:"
    rows = [row for row in mutant.table if row.source is state and row.input is kind]
    return any(problem.startswith(where) and not problem.endswith(": no row")
               for problem in check_table(rows))


def _survives(mutant: MutantSpec, able: list[Killer], first: dict[Place, Killer]) -> bool:
    """True if ``check_table`` takes the mutant and no killer of ``able`` fails on it.

    ``first`` remembers, per place, the killer that killed the last mutant there: it is
    tried first.
    """
    if _refused(mutant):
        return False
    last = first.get(mutant.place)
    ordered = able if last is None else [last, *(k for k in able if k is not last)]
    for killer in ordered:
        if killer.run(Mutant(mutant.arguments)):
            first[mutant.place] = killer
            return False
    return True


# -- the pure tests this file adds: what no other test pinned ------------------------------


def test_the_killers_pass_on_the_real_table() -> None:
    """The harness runs the pure tests green on the table as it is: a kill is the mutant's."""
    assert len(_killers()) > 200


def test_the_harness_builds_machines_from_the_mutant() -> None:
    """A machine built while a mutant is set runs the mutant's table, entry and exit actions."""
    rows = tuple(replace(row, dest=S.FAILED)
                 if (row.source, row.input) == (S.DISCONNECTED, K.CONNECT) else row
                 for row in TABLE)
    leave = {**EXIT, S.FAILED: (StateAction("tear_down"),)}
    mutant = Mutant({"table": rows, "exit_actions": leave})
    token = MUTANT.set(mutant)
    try:
        effects = RecordingEffects()
        machine = RecordedMachine(effects, ManualClock(), port=4002, client_ids=[7])
        assert machine.handle(Input(K.CONNECT)).state is S.FAILED
        machine.handle(Input(K.CONNECT))
    finally:
        MUTANT.reset(token)
    assert (S.DISCONNECTED, K.CONNECT, S.FAILED) in mutant.met
    # Failed's entry stops everything; its exit, in the mutant, tears down once more.
    assert effects.names() == ["cancel_retry", "cancel_restore_timer", "stop_heartbeat",
                               "tear_down", "tear_down", "start_attempt"]


@pytest.mark.mutation
@pytest.mark.timeout(120)
def test_every_row_is_pinned() -> None:
    """No mutant of the table or of the entry and exit actions survives the pure tests,
    except the listed ones."""
    killers = _killers()
    able: dict[Place, list[Killer]] = {}
    first: dict[Place, Killer] = {}
    survivors = {}
    for mutant in _mutants():
        if mutant.place not in able:
            # The killers that can tell, the most focused on the changed part first.
            focus = {id(k): k.focus(mutant.place) for k in killers}
            able[mutant.place] = sorted((k for k in killers if focus[id(k)] > 0),
                                        key=lambda k: -focus[id(k)])
        if _survives(mutant, able[mutant.place], first):
            survivors[mutant.id] = SURVIVORS.get(mutant.id, "not yet killed")
    assert sorted(survivors) == sorted(SURVIVORS), "\n".join(sorted(survivors))
