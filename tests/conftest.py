"""Fixtures shared by the whole suite."""

from __future__ import annotations

from typing import Any

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine, ConnectionState
from ibkr_connection.policy import RecoveryPolicy


class RecordingEffects:
    """An Effects port that records every call (the machine's only mock)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.heartbeat = False

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def start_attempt(self, attempt: int, client_id: int, port: int) -> None:
        self._record("start_attempt", attempt, client_id, port)

    def schedule_retry(self, delay: float) -> None:
        self._record("schedule_retry", delay)

    def cancel_retry(self) -> None:
        self._record("cancel_retry")

    def start_restore_timer(self, timeout: float) -> None:
        self._record("start_restore_timer", timeout)

    def cancel_restore_timer(self) -> None:
        self._record("cancel_restore_timer")

    def select_account(self) -> None:
        self._record("select_account")

    def restore_subscriptions(self) -> None:
        self._record("restore_subscriptions")

    def issue_new_subscriptions(self) -> None:
        self._record("issue_new_subscriptions")

    def start_heartbeat(self) -> None:
        self.heartbeat = True
        self._record("start_heartbeat")

    def stop_heartbeat(self) -> None:
        self.heartbeat = False
        self._record("stop_heartbeat")

    def tear_down(self) -> None:
        self._record("tear_down")

    def send_restart(self) -> None:
        self._record("send_restart")

    def start_restart_timer(self, timeout: float) -> None:
        self._record("start_restart_timer", timeout)

    def cancel_restart_timer(self) -> None:
        self._record("cancel_restart_timer")

    def probe_gateway(self, port: int, interval: float) -> None:
        self._record("probe_gateway", port, interval)

    def cancel_probe(self) -> None:
        self._record("cancel_probe")

    def send_reconnect_data(self) -> None:
        self._record("send_reconnect_data")

    def start_farm_timer(self, timeout: float) -> None:
        self._record("start_farm_timer", timeout)

    def cancel_farm_timer(self) -> None:
        self._record("cancel_farm_timer")

    def names(self) -> list[str]:
        """Return the names of the recorded calls, in order."""
        return [name for name, _ in self.calls]

    def args_of(self, name: str) -> list[tuple[Any, ...]]:
        """Return the arguments of every call to ``name``."""
        return [args for called, args in self.calls if called == name]


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
    return ConnectionMachine(effects, clock, port=4002, client_ids=[7], policy=RecoveryPolicy())
