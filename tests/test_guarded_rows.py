"""The other branch of guarded rows, on the pure machine: what the grid does not reach.

The grid (tests/test_machine_table.py) drives each (state, input) once, so a guarded
row's other branch needs its own setup: retries exhausted, a farm or the link noted
during the attempt, a restart_after of one. Expectations are written out here.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects, drive_to

S = ConnectionState
K = InputKind


@pytest.mark.parametrize("inp", [Input(K.CLIENT_ID_IN_USE, code=326),
                                 Input(K.NOT_CONNECTED, code=504)], ids=["326", "504"])
def test_a_refusal_on_the_last_attempt_fails(
    inp: Input, effects: RecordingEffects, clock: ManualClock
) -> None:
    """326 or 504 while connecting, with max_attempts used up: failed, no retry scheduled."""
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=1))
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7], policy=policy)
    machine.handle(Input(K.CONNECT))
    assert machine.handle(inp).state is S.FAILED
    assert effects.args_of("schedule_retry") == []


@pytest.mark.parametrize("state", [S.CONNECTED, S.DEGRADED, S.LOST])
def test_a_heartbeat_miss_that_is_the_last_wedge_sign_restarts(
    state: ConnectionState, effects: RecordingEffects, clock: ManualClock
) -> None:
    """With restart_after=1 and a controller, one heartbeat miss from a session: restarting."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                                policy=replace(RecoveryPolicy(), restart_after=1),
                                controller_configured=True)
    drive_to(machine, state)
    assert machine.handle(Input(K.HEARTBEAT_MISSED)).state is S.RESTARTING
    assert effects.names().count("send_restart") == 1


@pytest.mark.parametrize(("noted", "up_in"), [
    (Input(K.FARM_BROKEN, code=2103, farm="usfarm"), S.DEGRADED),
    (Input(K.CONNECTIVITY_LOST, code=1100), S.LOST),
], ids=["farm-broken", "link-lost"])
def test_a_session_that_comes_up_hurt_is_a_whole_session(
    noted: Input, up_in: ConnectionState, effects: RecordingEffects, clock: ManualClock
) -> None:
    """A farm or the link noted during the attempt: the session comes up degraded or lost,
    with everything a session gets: wedge signs and backoff reset, the endpoint proven,
    account, subscriptions, heartbeat, the order tracker told."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    machine.handle(Input(K.CONNECT))
    machine.handle(Input(K.ATTEMPT_FAILED, costly=True))  # a wedge sign, a costly delay
    machine.handle(Input(K.RETRY_DUE))
    assert machine.wedge_signs == 1
    assert machine.handle(noted).state is S.CONNECTING
    mark = len(effects.calls)
    assert machine.handle(Input(K.ATTEMPT_SUCCEEDED)).state is up_in
    assert machine.wedge_signs == 0
    session = [name for name, _ in effects.calls[mark:]]
    assert {"select_account", "restore_subscriptions", "start_heartbeat"} <= set(session)
    assert session.count("begin_session") == 1
    assert machine.endpoint_proven
    # The backoff starts over: the next drop waits the first cheap delay (0.05 s at most).
    assert machine.handle(Input(K.SOCKET_CLOSED)).state is S.BACKOFF
    assert 0 < effects.args_of("schedule_retry")[-1][0] <= 0.05


@pytest.mark.parametrize("state", [S.CONNECTING, S.DEGRADED, S.LOST])
def test_the_next_attempt_after_a_port_reset_uses_the_new_port(
    state: ConnectionState, effects: RecordingEffects, clock: ManualClock
) -> None:
    """A 1300 naming port 4003 in this state: the next attempt goes to 4003."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    drive_to(machine, state)
    assert machine.handle(Input(K.PORT_RESET, code=1300, port=4003)).state is S.BACKOFF
    machine.handle(Input(K.RETRY_DUE))
    assert effects.args_of("start_attempt")[-1][2] == 4003


def test_1101_while_lost_with_a_farm_broken_comes_back_degraded(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """usfarm broken, then 1100, then 1101: degraded (the farm is still out), data re-issued."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    drive_to(machine, S.DEGRADED)
    machine.handle(Input(K.CONNECTIVITY_LOST, code=1100))
    mark = len(effects.calls)
    assert machine.handle(Input(K.RESTORED_DATA_LOST, code=1101)).state is S.DEGRADED
    assert [name for name, _ in effects.calls[mark:]].count("restore_subscriptions") == 1


def test_1101_while_degraded_by_a_farm_stays_degraded_and_reissues(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """usfarm broken, then 1101: still degraded, data re-issued once."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    drive_to(machine, S.DEGRADED)
    mark = len(effects.calls)
    assert machine.handle(Input(K.RESTORED_DATA_LOST, code=1101)).state is S.DEGRADED
    assert [name for name, _ in effects.calls[mark:]] == ["restore_subscriptions"]


def test_1101_while_degraded_by_the_server_link_reconnects_and_reissues(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """2110, then 1101 (the link is back, data lost): connected, data re-issued once."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    drive_to(machine, S.CONNECTED)
    assert machine.handle(Input(K.SERVER_LINK_BROKEN, code=2110)).state is S.DEGRADED
    mark = len(effects.calls)
    assert machine.handle(Input(K.RESTORED_DATA_LOST, code=1101)).state is S.CONNECTED
    assert [name for name, _ in effects.calls[mark:]].count("restore_subscriptions") == 1


def test_one_farm_back_of_two_keeps_the_farm_timer(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """Two farms broken, one OK: still degraded, and the farm timer neither stops nor restarts."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                                controller_configured=True)
    drive_to(machine, S.DEGRADED)
    machine.handle(Input(K.FARM_BROKEN, code=2105, farm="ushmds"))
    mark = len(effects.calls)
    assert machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm")).state is S.DEGRADED
    assert effects.calls[mark:] == []
