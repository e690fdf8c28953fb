"""Farm status codes on the pure machine: a code that names no farm notes no farm."""

from __future__ import annotations

from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine, ConnectionState

from conftest import drive_to


def test_a_broken_farm_without_a_name_notes_none(machine: ConnectionMachine) -> None:
    """A 2103 with no farm in it degrades the session but adds no farm to the broken set."""
    drive_to(machine, ConnectionState.CONNECTED)
    assert machine.handle(Input(InputKind.FARM_BROKEN, code=2103)).state is ConnectionState.DEGRADED
    assert machine.broken_farms == frozenset()


def test_a_farm_ok_without_a_name_clears_none(machine: ConnectionMachine) -> None:
    """A 2104 with no farm in it leaves a named broken farm broken, and the session degraded."""
    drive_to(machine, ConnectionState.CONNECTED)
    machine.handle(Input(InputKind.FARM_BROKEN, code=2103, farm="usfarm"))
    assert machine.handle(Input(InputKind.FARM_OK, code=2104)).state is ConnectionState.DEGRADED
    assert machine.broken_farms == frozenset({"usfarm"})
