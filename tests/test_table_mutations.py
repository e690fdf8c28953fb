"""Every row of TABLE pinned: change a row's destination or drop one of its actions, and a
pure test of the machine fails.

Mutants are made in-process, a few milliseconds each: ``ConnectionMachine`` reads
``ibkr_connection.machine.TABLE`` when it is built, so a mutant swaps that one name
(the narrowest point today; the core reshape adds a ``table=`` argument to
``ConnectionMachine``, which will replace the swap). The killers are the pure tests of
the machine, run as plain functions with fresh fixtures: the hand-written grid
(tests/test_machine_table.py) and its guarded rows' other branches
(tests/test_guarded_rows.py), the behaviour tests (tests/test_machine_behaviour.py,
tests/test_restart_machine.py, tests/test_farm_status.py) and the table's own
(tests/test_table.py). A mutant
is killed when one of them fails on it, or when ``check_table`` refuses it (the table's
rules run on every import). The mutants no test kills are listed in SURVIVORS,
each with why it is equivalent or what would kill it: a new survivor fails this test,
and so does a listed one that a new test kills (take it off the list).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from ibkr_connection import machine as machine_module
from ibkr_connection.clock import ManualClock
from ibkr_connection.machine import ConnectionMachine, ConnectionState
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import TABLE, Row, check_table

from conftest import RecordingEffects

#: The modules whose tests are the killers.
PURE_MODULES = ("test_machine_table", "test_guarded_rows", "test_machine_behaviour",
                "test_restart_machine", "test_table", "test_farm_status")

#: The link-lost fact is read by one guard only, ``link_lost`` on connecting's
#: attempt_succeeded, and entering connecting forgets the session's facts: noted in a
#: session state, it is forgotten before anything reads it.
_LINK_LOST_UNREAD = "equivalent: the fact is forgotten on entering connecting, unread before"

#: Mutants no pure test kills, by id, with why: each is equivalent (no input sequence
#: tells it from the real table).
SURVIVORS: dict[str, str] = {
    "connected/connectivity_lost without note_link_lost": _LINK_LOST_UNREAD,
    "degraded/connectivity_lost without note_link_lost": _LINK_LOST_UNREAD,
}


@dataclass(frozen=True)
class Killer:
    """One pure test case: a test function and the arguments of one parametrization."""

    name: str
    func: Callable[..., Any]
    params: dict[str, Any]

    def mentions(self, row: Row) -> bool:
        """True for a grid cell of the row's (state, input): tried first."""
        return (self.params.get("state") == row.source.value
                and self.params.get("column") == row.input.value)

    def kills(self) -> bool:
        """Run the case on fresh fixtures (the shared conftest's); True if it fails."""
        effects, clock = RecordingEffects(), ManualClock()
        fixtures = {"effects": effects, "clock": clock}
        wanted = inspect.signature(self.func).parameters
        if "machine" in wanted:
            fixtures["machine"] = ConnectionMachine(effects, clock, port=4002, client_ids=[7],
                                                    policy=RecoveryPolicy())
        args = {name: fixtures[name] for name in wanted if name not in self.params}
        try:
            self.func(**self.params, **args)
        except Exception:  # any failure of a test kills the mutant
            return True
        return False


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


def _killers() -> list[Killer]:
    """Every pure test case that needs no fixture beyond effects, clock and machine."""
    found = []
    for module_name in PURE_MODULES:
        module = importlib.import_module(module_name)
        for name, func in vars(module).items():
            if not name.startswith("test_") or not inspect.isfunction(func):
                continue
            wanted = set(inspect.signature(func).parameters)
            for params in _expand(func):
                if wanted - set(params) <= {"effects", "clock", "machine"}:
                    found.append(Killer(f"{module_name}::{name}", func, params))
    return found


def _mutants() -> Iterator[tuple[str, int, Row]]:
    """(id, row index, mutated row): each other destination, each action dropped."""
    for index, row in enumerate(TABLE):
        where = f"{row.source.value}/{row.input.value}"
        if row.guard:
            where += f"[{row.guard}]"
        for dest in (None, *ConnectionState):
            if dest is not row.dest:
                to = "stay" if dest is None else dest.value
                yield f"{where} -> {to}", index, replace(row, dest=dest)
        for drop in range(len(row.actions)):
            actions = row.actions[:drop] + row.actions[drop + 1:]
            yield f"{where} without {row.actions[drop]}", index, replace(row, actions=actions)


def _survives(table: tuple[Row, ...], row: Row, killers: list[Killer]) -> bool:
    """True if no killer fails on a machine built from ``table``."""
    if check_table(table):
        return False
    ordered = sorted(killers, key=lambda k: not k.mentions(row))
    machine_module.TABLE = table  # type: ignore[misc]
    try:
        return not any(killer.kills() for killer in ordered)
    finally:
        machine_module.TABLE = TABLE  # type: ignore[misc]


def test_the_killers_pass_on_the_real_table() -> None:
    """The harness runs the pure tests green on the table as it is: a kill is the mutant's."""
    killers = _killers()
    assert len(killers) > 200
    assert [k.name for k in killers if k.kills()] == []


@pytest.mark.mutation
@pytest.mark.timeout(600)
def test_every_row_is_pinned() -> None:
    """No mutant of the table survives the pure tests, except the listed ones."""
    killers = _killers()
    survivors = {}
    for mutant_id, index, mutated in _mutants():
        table = (*TABLE[:index], mutated, *TABLE[index + 1:])
        if _survives(table, mutated, killers):
            survivors[mutant_id] = SURVIVORS.get(mutant_id, "not yet killed")
    assert sorted(survivors) == sorted(SURVIVORS), "\n".join(sorted(survivors))
