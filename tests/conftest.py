"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ibkr_connection.clock import Clock, ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.outputs import Step, Transition
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import ConnectionState


class RecordingEffects:
    """Records the effects of every step a :class:`RecordedMachine` returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.heartbeat = False

    def record(self, step: Step) -> None:
        """Append the step's effects, in order."""
        for effect in step.effects:
            self.calls.append((effect.name, effect.args))
            if effect.name in ("start_heartbeat", "stop_heartbeat"):
                self.heartbeat = effect.name == "start_heartbeat"

    def names(self) -> list[str]:
        """Return the names of the recorded calls, in order."""
        return [name for name, _ in self.calls]

    def args_of(self, name: str) -> list[tuple[Any, ...]]:
        """Return the arguments of every call to ``name``."""
        return [args for called, args in self.calls if called == name]


class RecordedMachine(ConnectionMachine):
    """The machine, its steps' effects recorded and its transitions told to listeners.

    Tests only: the manager does both for a real machine.
    """

    def __init__(self, effects: RecordingEffects, clock: Clock, **kwargs: Any) -> None:
        super().__init__(clock, **kwargs)
        self.effects = effects
        self.listeners: list[Callable[[Transition], object]] = []

    def add_listener(self, listener: Callable[[Transition], object]) -> None:
        """Call ``listener`` with every transition, after its step."""
        self.listeners.append(listener)

    def handle(self, inp: Input) -> Step:
        step = super().handle(inp)
        self.effects.record(step)
        if step.transition is not None:
            for listener in self.listeners:
                listener(step.transition)
        return step


def drive_to(machine: ConnectionMachine, state: ConnectionState) -> None:
    """Feed the inputs that take a fresh machine to ``state``."""
    paths: dict[ConnectionState, list[Input]] = {
        ConnectionState.DISCONNECTED: [],
        ConnectionState.CONNECTING: [Input(InputKind.CONNECT)],
        ConnectionState.CONNECTED: [Input(InputKind.CONNECT), Input(InputKind.ATTEMPT_SUCCEEDED)],
        ConnectionState.DEGRADED: [
            Input(InputKind.CONNECT),
            Input(InputKind.ATTEMPT_SUCCEEDED),
            Input(InputKind.FARM_BROKEN, code=2103, farm="usfarm"),
        ],
        ConnectionState.LOST: [
            Input(InputKind.CONNECT),
            Input(InputKind.ATTEMPT_SUCCEEDED),
            Input(InputKind.CONNECTIVITY_LOST, code=1100),
        ],
        ConnectionState.BACKOFF: [Input(InputKind.CONNECT), Input(InputKind.ATTEMPT_FAILED)],
        ConnectionState.FAILED: [Input(InputKind.CONNECT), Input(InputKind.FATAL_ERROR)],
        # Needs a machine with a controller: after a session (the endpoint is
        # proven), a heartbeat miss and two attempts in a row that reached the
        # socket and got no handshake make a wedged gateway.
        ConnectionState.RESTARTING: [
            Input(InputKind.CONNECT), Input(InputKind.ATTEMPT_SUCCEEDED),
            Input(InputKind.HEARTBEAT_MISSED),
            Input(InputKind.RETRY_DUE), Input(InputKind.ATTEMPT_FAILED, costly=True),
            Input(InputKind.RETRY_DUE), Input(InputKind.ATTEMPT_FAILED, costly=True),
        ],
    }
    for inp in paths[state]:
        machine.handle(inp)
    assert machine.state is state


@pytest.fixture
def effects() -> RecordingEffects:
    """A fresh recording effects port."""
    return RecordingEffects()


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at t=0."""
    return ManualClock()


@pytest.fixture
def machine(effects: RecordingEffects, clock: ManualClock) -> ConnectionMachine:
    """A machine on port 4002 with client id 7 and default policy."""
    return RecordedMachine(effects, clock, port=4002, client_ids=[7], policy=RecoveryPolicy())
