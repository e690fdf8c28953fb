"""Escalation to a gateway restart on the pure machine, with the policy's long defaults.

A ManualClock feeds the minutes (3 min restart wait, 10 min cooldown, 5 min
farm patience); freezegun sets the wall clock for IB's reset windows.
Expectations are written out here, not read back from the table.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest
from freezegun import freeze_time

from ibkr_connection.clock import ManualClock, SystemClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects, drive_to

S = ConnectionState
K = InputKind
TIMEOUT = Input(K.ATTEMPT_FAILED, message="TimeoutError()", costly=True)
REFUSED = Input(K.ATTEMPT_FAILED, message="ConnectionRefusedError()")


def _machine(effects: RecordingEffects, clock: ManualClock | SystemClock,
             controller: bool = True) -> ConnectionMachine:
    return RecordedMachine(effects, clock, port=4002, client_ids=[7],
                             controller_configured=controller)


def _fail(machine: ConnectionMachine, clock: ManualClock, inp: Input, times: int) -> None:
    for _ in range(times):
        if machine.state is S.BACKOFF:
            clock.advance(10.0)
            machine.handle(Input(K.RETRY_DUE))
        machine.handle(inp)


def _session_then_closed(machine: ConnectionMachine) -> None:
    """A session on the endpoint (it is proven), then its socket closes: backoff."""
    machine.handle(Input(K.CONNECT))
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    machine.handle(Input(K.SOCKET_CLOSED))
    assert machine.state is S.BACKOFF


def test_policy_defaults() -> None:
    """The documented defaults: 3 signs, 3 min to come back, 10 min between restarts, 5 min."""
    policy = RecoveryPolicy()
    assert (policy.restart_after, policy.restart_wait, policy.restart_cooldown,
            policy.farm_reconnect_after) == (3, 180.0, 600.0, 300.0)


def test_three_unanswered_handshakes_restart_once(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """After a session, the third consecutive costly failure moves to restarting; entry tears
    down and sends."""
    machine = _machine(effects, clock)
    _session_then_closed(machine)
    _fail(machine, clock, TIMEOUT, 2)
    assert machine.state is S.BACKOFF and machine.wedge_signs == 2
    _fail(machine, clock, TIMEOUT, 1)
    assert machine.state is S.RESTARTING
    assert effects.names()[-4:] == ["stop_heartbeat", "tear_down", "start_restart_timer",
                                    "send_restart"]
    assert effects.args_of("start_restart_timer") == [(180.0,)]
    machine.handle(Input(K.RESTART_SENT, message="OK RESTART in progress"))
    assert effects.args_of("probe_gateway") == [(4002, 0.25)]
    machine.handle(Input(K.GATEWAY_BACK))
    assert machine.state is S.CONNECTING
    assert effects.names()[-3:] == ["cancel_restart_timer", "cancel_probe", "start_attempt"]
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    assert machine.state is S.CONNECTED and machine.restarts == 1
    assert machine.endpoint_proven


def test_a_refused_connect_clears_the_count(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """Two time-outs, a refusal, two time-outs: never three in a row, never a restart."""
    machine = _machine(effects, clock)
    machine.handle(Input(K.CONNECT))
    for inp in (TIMEOUT, TIMEOUT, REFUSED, TIMEOUT, TIMEOUT, REFUSED):
        _fail(machine, clock, inp, 1)
        assert machine.state is S.BACKOFF
    assert machine.restarts == 0 and "send_restart" not in effects.names()


def test_refused_connects_for_an_hour_never_restart(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """A gateway that is down is not wedged."""
    machine = _machine(effects, clock)
    machine.handle(Input(K.CONNECT))
    _fail(machine, clock, REFUSED, 360)
    assert machine.restarts == 0 and machine.wedge_signs == 0


def test_heartbeat_misses_count_as_wedge_signs(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """A heartbeat miss, then two unanswered handshakes: a restart."""
    machine = _machine(effects, clock)
    drive_to(machine, S.CONNECTED)
    machine.handle(Input(K.HEARTBEAT_MISSED))
    assert machine.state is S.BACKOFF and machine.wedge_signs == 1
    _fail(machine, clock, TIMEOUT, 2)
    assert machine.state is S.RESTARTING


def test_a_session_that_comes_up_clears_the_count(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """Two signs, a good session, two signs: no restart."""
    machine = _machine(effects, clock)
    machine.handle(Input(K.CONNECT))
    _fail(machine, clock, TIMEOUT, 2)
    clock.advance(10.0)
    machine.handle(Input(K.RETRY_DUE))
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    assert machine.wedge_signs == 0
    machine.handle(Input(K.HEARTBEAT_MISSED))
    _fail(machine, clock, TIMEOUT, 1)
    assert machine.state is S.BACKOFF and machine.restarts == 0


def test_no_controller_never_escalates(effects: RecordingEffects, clock: ManualClock) -> None:
    """Wedge signs are counted, but without a controller they lead nowhere."""
    machine = _machine(effects, clock, controller=False)
    machine.handle(Input(K.CONNECT))
    _fail(machine, clock, TIMEOUT, 50)
    assert machine.wedge_signs == 50 and machine.restarts == 0


def test_cooldown_after_a_failed_restart(effects: RecordingEffects, clock: ManualClock) -> None:
    """A refused restart: backoff with the costly delay; the next restart only 10 min later."""
    machine = _machine(effects, clock)
    _session_then_closed(machine)
    _fail(machine, clock, TIMEOUT, 3)
    machine.handle(Input(K.RESTART_FAILED, message="IBC refused RESTART: ERROR ..."))
    last = machine.transcript[-1]
    assert (last.source, last.dest, last.cause) == (
        S.RESTARTING, S.BACKOFF, "IBC refused RESTART: ERROR ...")
    assert last.delay is not None and last.delay >= 0.9
    # The restart was at 30 s; 10 s per failed attempt: 59 more within the
    # cooldown (to 620 s), none of them restarts; the 61st after it does.
    assert clock.monotonic() == 30.0
    _fail(machine, clock, TIMEOUT, 59)
    assert machine.restarts == 1 and clock.monotonic() < 30.0 + 600.0
    _fail(machine, clock, TIMEOUT, 2)
    assert machine.state is S.RESTARTING and machine.restarts == 2
    assert effects.names().count("send_restart") == 2


def test_a_gateway_not_back_within_restart_wait(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """The restart timer (3 min) runs out: backoff, costly delay."""
    machine = _machine(effects, clock)
    _session_then_closed(machine)
    _fail(machine, clock, TIMEOUT, 3)
    machine.handle(Input(K.RESTART_SENT))
    machine.handle(Input(K.RESTART_TIMEOUT))
    assert machine.state is S.BACKOFF
    assert effects.names()[-5:] == ["cancel_restart_timer", "cancel_probe", "stop_heartbeat",
                                    "tear_down", "schedule_retry"]


def test_disconnect_leaves_restarting(effects: RecordingEffects, clock: ManualClock) -> None:
    """disconnect leaves it like any state, cancelling the timer and the probe."""
    machine = _machine(effects, clock)
    _session_then_closed(machine)
    _fail(machine, clock, TIMEOUT, 3)
    machine.handle(Input(K.DISCONNECT))
    assert machine.state is S.DISCONNECTED
    assert "cancel_restart_timer" in effects.names() and "cancel_probe" in effects.names()


def _lost_then_timeout(machine: ConnectionMachine) -> ConnectionState:
    drive_to(machine, S.LOST)
    return machine.handle(Input(K.RESTORE_TIMEOUT)).state


def test_a_1100_outside_the_reset_window_restarts(effects: RecordingEffects) -> None:
    """Tuesday 14:00 New York: a 1100 that outlasts its restore timeout restarts the gateway."""
    with freeze_time(datetime(2026, 1, 6, 19, 0, tzinfo=timezone.utc)):
        machine = _machine(effects, SystemClock())
        assert _lost_then_timeout(machine) is S.RESTARTING


def test_a_1100_inside_the_reset_window_never_restarts(effects: RecordingEffects) -> None:
    """23:55 New York, IB's nightly reset: reconnect as usual, never restart."""
    with freeze_time(datetime(2026, 1, 7, 4, 55, tzinfo=timezone.utc)):
        machine = _machine(effects, SystemClock())
        assert _lost_then_timeout(machine) is S.BACKOFF
        assert machine.restarts == 0 and effects.args_of("start_restore_timer") == [(900.0,)]


def test_a_broken_farm_gets_one_reconnect_data(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """Degraded: the 5 min farm timer starts once per outage; its input asks once, state stays."""
    machine = _machine(effects, clock)
    drive_to(machine, S.DEGRADED)
    assert effects.args_of("start_farm_timer") == [(300.0,)]
    machine.handle(Input(K.FARM_BROKEN, code=2103, farm="ushmds"))
    assert effects.args_of("start_farm_timer") == [(300.0,)]
    assert machine.handle(Input(K.FARM_RECONNECT_DUE)).state is S.DEGRADED
    assert effects.names().count("send_reconnect_data") == 1
    machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm"))
    machine.handle(Input(K.FARM_OK, code=2106, farm="ushmds"))
    assert machine.state is S.CONNECTED and effects.names()[-1] == "cancel_farm_timer"


def test_same_inputs_same_seed_same_transcript() -> None:
    """An escalation replayed gives the same transcript, delays included."""
    def run() -> list[dict[str, object]]:
        clock = ManualClock()
        machine = _machine(RecordingEffects(), clock)
        _session_then_closed(machine)
        _fail(machine, clock, TIMEOUT, 3)
        machine.handle(Input(K.RESTART_FAILED, message="unreachable"))
        _fail(machine, clock, REFUSED, 5)
        return [t.to_json() for t in machine.transcript]

    assert run() == run()


# -- an endpoint where no session was ever had (issue 18, item 1) ------------------------


def test_silence_on_an_unproven_endpoint_never_restarts(
    effects: RecordingEffects, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong port that accepts and never answers: 20 time-outs, no restart, one warning."""
    machine = RecordedMachine(effects, clock, port=4996, client_ids=[7],
                                controller_configured=True, host="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="ibkr_connection.machine"):
        machine.handle(Input(K.CONNECT))
        _fail(machine, clock, TIMEOUT, 20)
    assert machine.state is S.BACKOFF and machine.restarts == 0
    assert "send_restart" not in effects.names()
    warnings = [r.getMessage() for r in caplog.records if "not a TWS API port?" in r.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1:4996" in warnings[0]


def test_the_warning_comes_once_per_series(
    effects: RecordingEffects, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A new connect starts a new series: the warning again, once."""
    machine = _machine(effects, clock)
    with caplog.at_level(logging.WARNING, logger="ibkr_connection.machine"):
        machine.handle(Input(K.CONNECT))
        _fail(machine, clock, TIMEOUT, 5)
        machine.handle(Input(K.DISCONNECT))
        machine.handle(Input(K.CONNECT))
        _fail(machine, clock, TIMEOUT, 5)
    assert sum("not a TWS API port?" in r.getMessage() for r in caplog.records) == 2


def test_a_new_port_is_unproven(effects: RecordingEffects, clock: ManualClock) -> None:
    """A session on 4002, then a 1300 to 4003 where nothing answers: never a restart."""
    machine = _machine(effects, clock)
    drive_to(machine, S.CONNECTED)
    machine.handle(Input(K.PORT_RESET, code=1300, port=4003))
    machine.handle(Input(K.RETRY_DUE))
    _fail(machine, clock, TIMEOUT, 10)
    assert machine.port == 4003 and machine.restarts == 0
    assert "send_restart" not in effects.names()


def test_a_refusal_makes_the_endpoint_unproven(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """A session, then the gateway refuses (it restarts, e.g. IBC's nightly restart), then
    accepts and stays silent (logging in, 2FA pending): never restarted for that."""
    machine = _machine(effects, clock)
    _session_then_closed(machine)
    _fail(machine, clock, REFUSED, 2)
    _fail(machine, clock, TIMEOUT, 10)
    assert machine.restarts == 0 and "send_restart" not in effects.names()
    # Once it gives a session, silence there is a wedge sign again.
    clock.advance(10.0)
    machine.handle(Input(K.RETRY_DUE))
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    machine.handle(Input(K.HEARTBEAT_MISSED))
    _fail(machine, clock, TIMEOUT, 2)
    assert machine.state is S.RESTARTING


def test_a_restarted_gateway_must_give_a_session_before_another_restart(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """The restart is accepted but the gateway stays silent past restart_wait (a login
    waiting for 2FA): however long, no second restart until a session."""
    machine = _machine(effects, clock)
    _session_then_closed(machine)
    _fail(machine, clock, TIMEOUT, 3)
    machine.handle(Input(K.RESTART_SENT, message="OK RESTART in progress"))
    clock.advance(180.0)
    machine.handle(Input(K.RESTART_TIMEOUT))
    _fail(machine, clock, TIMEOUT, 200)
    assert clock.monotonic() > 2000.0
    assert machine.restarts == 1 and effects.names().count("send_restart") == 1
