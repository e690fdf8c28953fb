"""The states' entry and exit actions, and the facts a new attempt starts from, on the pure
machine: what each move out of a state asks the driver to do, written out in order."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects, drive_to

S = ConnectionState
K = InputKind

#: Disconnected's and failed's entry: stop everything that may be running.
STOP = ["cancel_retry", "cancel_restore_timer", "stop_heartbeat", "tear_down"]


@contextmanager
def _warnings() -> Iterator[list[str]]:
    """The machine's warning lines logged inside the block (a handler of its own: the
    row-mutation test runs these tests as plain functions, without pytest's caplog)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    machine_logger = logging.getLogger("ibkr_connection.machine")
    handler, level = Keep(logging.WARNING), machine_logger.level
    machine_logger.addHandler(handler)
    machine_logger.setLevel(logging.WARNING)
    try:
        yield lines
    finally:
        machine_logger.removeHandler(handler)
        machine_logger.setLevel(level)


@pytest.mark.parametrize(("state", "kind", "controller", "dest", "asked"), [
    # backoff's exit cancels the retry, then disconnected's entry stops everything
    (S.BACKOFF, K.DISCONNECT, False, S.DISCONNECTED, ["cancel_retry", *STOP]),
    (S.BACKOFF, K.FATAL_ERROR, False, S.FAILED, ["cancel_retry", *STOP]),
    # lost's exit cancels the restore timer, whatever comes next
    (S.LOST, K.DISCONNECT, False, S.DISCONNECTED,
     ["cancel_restore_timer", *STOP, "end_session"]),
    (S.LOST, K.SOCKET_CLOSED, False, S.BACKOFF,
     ["cancel_restore_timer", "stop_heartbeat", "tear_down", "schedule_retry", "end_session"]),
    (S.LOST, K.RESTORED_DATA_KEPT, False, S.CONNECTED, ["cancel_restore_timer"]),
    # failed stops the attempt, or the session's heartbeat and socket
    (S.CONNECTING, K.FATAL_ERROR, False, S.FAILED, STOP),
    (S.CONNECTED, K.FATAL_ERROR, False, S.FAILED, [*STOP, "end_session"]),
    # with a controller: degraded's farm timer, restarting's timer and probe
    (S.DEGRADED, K.DISCONNECT, True, S.DISCONNECTED,
     ["cancel_farm_timer", *STOP, "end_session"]),
    (S.RESTARTING, K.DISCONNECT, True, S.DISCONNECTED,
     ["cancel_restart_timer", "cancel_probe", *STOP]),
])
def test_leaving_a_state_asks_for_its_exit_then_the_next_entry(
    state: ConnectionState, kind: InputKind, controller: bool, dest: ConnectionState,
    asked: list[str], effects: RecordingEffects, clock: ManualClock,
) -> None:
    """A move out of a state asks for the state's exit actions, then the next state's entry
    actions, then the row's own, in that order and each once."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                              controller_configured=controller)
    drive_to(machine, state)
    step = machine.handle(Input(kind, code=1102 if kind is K.RESTORED_DATA_KEPT else None))
    assert step.state is dest
    assert [effect.name for effect in step.effects] == asked


@pytest.mark.parametrize("hurt", [S.DEGRADED, S.LOST])
def test_a_new_attempt_forgets_the_last_sessions_facts(
    hurt: ConnectionState, effects: RecordingEffects, clock: ManualClock
) -> None:
    """A session that ended with a farm broken (or TWS's link lost) is no reason for the next
    one to come up hurt: the next session is connected, with no farm noted."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    drive_to(machine, hurt)
    assert machine.handle(Input(K.SOCKET_CLOSED)).state is S.BACKOFF
    assert machine.handle(Input(K.RETRY_DUE)).state is S.CONNECTING
    assert machine.handle(Input(K.ATTEMPT_SUCCEEDED)).state is S.CONNECTED
    assert machine.broken_farms == frozenset()


def test_the_not_an_api_port_warning_comes_once_per_series(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """Silent handshakes on an unproven endpoint: one warning for the series, not one each."""
    machine = RecordedMachine(effects, clock, port=4996, client_ids=[7])
    with _warnings() as lines:
        machine.handle(Input(K.CONNECT))
        for _ in range(3):
            machine.handle(Input(K.ATTEMPT_FAILED, message="TimeoutError()", costly=True))
            clock.advance(10.0)
            machine.handle(Input(K.RETRY_DUE))
    assert sum("not a TWS API port?" in line for line in lines) == 1


def test_one_client_id_in_use_retries_it_then_waits_then_retries_it_again(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """With one client id (same_client_id_retries=1), 326 after 326: the same id at once, then
    after a delay with nothing else to try, then the same id at once again: a cycle."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    with _warnings() as lines:
        machine.handle(Input(K.CONNECT))
        for _ in range(4):
            assert machine.handle(Input(K.CLIENT_ID_IN_USE, code=326)).state is S.BACKOFF
            machine.handle(Input(K.RETRY_DUE))
    assert lines == ["client id 7 in use: retrying the same id",
                     "client id 7 in use and no fallback ids configured",
                     "client id 7 in use: retrying the same id",
                     "client id 7 in use and no fallback ids configured"]


def test_a_session_that_comes_up_starts_the_counts_over(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """Two silent handshakes, then a session: no wedge sign left, and the next drop waits the
    first cheap delay again (0.05 s at most), not the third costly one."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    machine.handle(Input(K.CONNECT))
    for _ in range(2):
        machine.handle(Input(K.ATTEMPT_FAILED, message="TimeoutError()", costly=True))
        machine.handle(Input(K.RETRY_DUE))
    assert machine.wedge_signs == 2
    assert machine.handle(Input(K.ATTEMPT_SUCCEEDED)).state is S.CONNECTED
    assert machine.wedge_signs == 0
    assert machine.handle(Input(K.SOCKET_CLOSED)).state is S.BACKOFF
    assert 0 < effects.args_of("schedule_retry")[-1][0] <= 0.05


@pytest.mark.parametrize("session", [S.CONNECTED, S.DEGRADED, S.LOST])
def test_a_heartbeat_miss_in_any_session_state_is_a_wedge_sign(
    session: ConnectionState, effects: RecordingEffects, clock: ManualClock
) -> None:
    """A miss from connected, degraded or lost counts: two unanswered handshakes after it
    make three signs, and the third restarts the gateway, saying it saw three."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                              controller_configured=True)
    drive_to(machine, session)
    assert machine.handle(Input(K.HEARTBEAT_MISSED)).state is S.BACKOFF
    silent = Input(K.ATTEMPT_FAILED, message="no handshake", costly=True)
    with _warnings() as lines:
        for expected in (S.BACKOFF, S.RESTARTING):
            clock.advance(10.0)
            machine.handle(Input(K.RETRY_DUE))
            assert machine.handle(silent).state is expected
    assert [line for line in lines if line.startswith("restarting the gateway")] == [
        "restarting the gateway through its controller (restart 1): the gateway takes "
        "sockets but answers no handshake or sync: restart it (3 consecutive wedge sign(s)); "
        "waiting up to 180s for it to come back"]


@pytest.mark.parametrize("session", [S.CONNECTED, S.DEGRADED, S.LOST])
def test_the_miss_that_restarts_is_counted_in_the_restart_line(
    session: ConnectionState, effects: RecordingEffects, clock: ManualClock
) -> None:
    """With restart_after=1 a miss restarts at once, and the restart line counts it as the
    one sign it saw (the count itself is forgotten once the restart starts)."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                              controller_configured=True,
                              policy=RecoveryPolicy(restart_after=1))
    drive_to(machine, session)
    with _warnings() as lines:
        assert machine.handle(Input(K.HEARTBEAT_MISSED)).state is S.RESTARTING
    assert [line for line in lines if line.startswith("restarting the gateway")] == [
        "restarting the gateway through its controller (restart 1): the gateway keeps "
        "hanging and reconnecting did not help: restart it (1 consecutive wedge sign(s)); "
        "waiting up to 180s for it to come back"]
    assert machine.wedge_signs == 0
