"""Behaviour of the machine over sequences: backoff, client ids, farms, timers."""

from __future__ import annotations

import logging

import pytest
from freezegun import freeze_time

from ibkr_connection.clock import ManualClock, SystemClock
from ibkr_connection.errors import ConfigError, ReentrantHandleError, UsageError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ACTION_FUNCTIONS, ConnectionMachine
from ibkr_connection.outputs import Effect
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects, drive_to

S = ConnectionState
K = InputKind


def _fail_repeatedly(machine: ConnectionMachine, times: int, costly: bool) -> None:
    machine.handle(Input(K.CONNECT))
    for _ in range(times):
        machine.handle(Input(K.ATTEMPT_FAILED, costly=costly))
        if machine.state is S.BACKOFF:
            machine.handle(Input(K.RETRY_DUE))


@pytest.mark.parametrize(
    ("costly", "bases"),
    [
        (False, [0.05, 0.1, 0.2, 0.25, 0.25, 0.25]),
        (True, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
    ],
)
def test_backoff_schedule(
    costly: bool, bases: list[float], effects: RecordingEffects, clock: ManualClock
) -> None:
    """Delays grow exponentially to the cap; jitter only shortens them, by at most 10 %."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    _fail_repeatedly(machine, len(bases), costly)
    delays = [args[0] for args in effects.args_of("schedule_retry")]
    assert len(delays) == len(bases)
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.9 <= delay <= base


def test_backoff_resets_after_success(
    machine: ConnectionMachine, effects: RecordingEffects
) -> None:
    """After a good session, the first delay is back to the initial one."""
    _fail_repeatedly(machine, 4, costly=False)
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    assert machine.state is S.CONNECTED and machine.attempt == 0
    machine.handle(Input(K.SOCKET_CLOSED))
    assert 0.045 <= effects.args_of("schedule_retry")[-1][0] <= 0.05


def test_max_attempts_gives_up(effects: RecordingEffects, clock: ManualClock) -> None:
    """With max_attempts=3 the third failure ends in failed, with no retry scheduled."""
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=3))
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7], policy=policy)
    _fail_repeatedly(machine, 3, costly=False)
    assert machine.state is S.FAILED
    assert [a[0] for a in effects.args_of("start_attempt")] == [1, 2, 3]
    assert len(effects.args_of("schedule_retry")) == 2


def test_same_seed_same_transcript() -> None:
    """Same inputs and same seed give the same transcript; another seed other delays."""

    def run(seed: int) -> list[dict[str, object]]:
        clock = ManualClock()
        machine = RecordedMachine(
            RecordingEffects(), clock, port=4002, client_ids=[7], policy=RecoveryPolicy(seed=seed)
        )
        machine.handle(Input(K.CONNECT))
        for _ in range(5):
            clock.advance(0.3)
            machine.handle(Input(K.ATTEMPT_FAILED))
            machine.handle(Input(K.RETRY_DUE))
        machine.handle(Input(K.ATTEMPT_SUCCEEDED))
        machine.handle(Input(K.CONNECTIVITY_LOST, code=1100, message="lost"))
        machine.handle(Input(K.RESTORED_DATA_LOST, code=1101, message="restored"))
        return [t.to_json() for t in machine.transcript]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_client_id_fallback_order(effects: RecordingEffects, clock: ManualClock) -> None:
    """326 retries the same id once, then walks the configured fallbacks in order."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7, 8, 9])
    machine.handle(Input(K.CONNECT))
    for _ in range(6):
        machine.handle(Input(K.CLIENT_ID_IN_USE, code=326))
        machine.handle(Input(K.RETRY_DUE))
    used = [args[1] for args in effects.args_of("start_attempt")]
    assert used == [7, 7, 8, 8, 9, 9, 7]
    delays = [args[0] for args in effects.args_of("schedule_retry")]
    assert all(delay >= 0.9 for delay in delays), "326 waits for a stale session to go"


def test_degraded_until_every_farm_ok(machine: ConnectionMachine) -> None:
    """Degraded lasts until the last broken farm reports OK, in any order."""
    drive_to(machine, S.CONNECTED)
    for code, farm in ((2103, "usfarm"), (2105, "ushmds"), (2157, "secdefil")):
        machine.handle(Input(K.FARM_BROKEN, code=code, farm=farm))
    assert machine.state is S.DEGRADED
    assert machine.broken_farms == {"usfarm", "ushmds", "secdefil"}
    machine.handle(Input(K.FARM_OK, code=2106, farm="ushmds"))
    machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm"))
    assert machine.state is S.DEGRADED
    machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm"))
    assert machine.state is S.DEGRADED
    machine.handle(Input(K.FARM_OK, code=2158, farm="secdefil"))
    assert machine.state is S.CONNECTED


def test_lost_then_restored_keeps_broken_farms(
    machine: ConnectionMachine, effects: RecordingEffects
) -> None:
    """A farm broken during a 1100 keeps the session degraded after 1102."""
    drive_to(machine, S.LOST)
    machine.handle(Input(K.FARM_BROKEN, code=2103, farm="usfarm"))
    machine.handle(Input(K.RESTORED_DATA_KEPT, code=1102))
    assert machine.state is S.DEGRADED
    machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm"))
    assert machine.state is S.CONNECTED


def test_resubscribe_after_1101_not_1102(
    machine: ConnectionMachine, effects: RecordingEffects
) -> None:
    """1101 re-issues subscriptions; 1102 does not."""
    drive_to(machine, S.LOST)
    count = effects.names().count("restore_subscriptions")
    machine.handle(Input(K.RESTORED_DATA_KEPT, code=1102))
    assert effects.names().count("restore_subscriptions") == count
    machine.handle(Input(K.CONNECTIVITY_LOST, code=1100))
    machine.handle(Input(K.RESTORED_DATA_LOST, code=1101))
    assert effects.names().count("restore_subscriptions") == count + 1


def test_server_link_2110_until_restored(machine: ConnectionMachine) -> None:
    """2110 degrades the session until TWS reports 1102."""
    drive_to(machine, S.CONNECTED)
    machine.handle(Input(K.SERVER_LINK_BROKEN, code=2110))
    assert machine.state is S.DEGRADED
    machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm"))
    assert machine.state is S.DEGRADED
    machine.handle(Input(K.RESTORED_DATA_KEPT, code=1102))
    assert machine.state is S.CONNECTED


def test_1100_during_attempt_lands_in_lost(machine: ConnectionMachine) -> None:
    """A 1100 seen during the startup sync makes the new session start in lost."""
    drive_to(machine, S.CONNECTING)
    machine.handle(Input(K.CONNECTIVITY_LOST, code=1100))
    machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    assert machine.state is S.LOST


def test_port_reset_reconnects_at_once_on_new_port(
    machine: ConnectionMachine, effects: RecordingEffects
) -> None:
    """1300 tears down, retries with no delay, and the next attempt uses the new port."""
    drive_to(machine, S.CONNECTED)
    machine.handle(Input(K.PORT_RESET, code=1300, port=4003))
    assert machine.state is S.BACKOFF
    assert effects.args_of("schedule_retry")[-1] == (0.0,)
    machine.handle(Input(K.RETRY_DUE))
    assert effects.args_of("start_attempt")[-1] == (1, 7, 4003)


def test_entry_actions_of_a_session(machine: ConnectionMachine, effects: RecordingEffects) -> None:
    """A successful attempt selects the account, restores subscriptions, starts the heartbeat."""
    drive_to(machine, S.CONNECTED)
    assert effects.names()[-4:] == ["select_account", "restore_subscriptions", "start_heartbeat",
                                    "begin_session"]
    machine.handle(Input(K.SOCKET_CLOSED))
    assert effects.names()[-4:] == ["stop_heartbeat", "tear_down", "schedule_retry",
                                    "end_session"]
    assert effects.heartbeat is False


def test_restore_timeout_outside_reset_window(
    machine: ConnectionMachine, effects: RecordingEffects
) -> None:
    """Outside IB's reset window a 1100 gets the normal patience, then a reconnect."""
    drive_to(machine, S.LOST)  # ManualClock's wall time: 12:00 New York
    assert effects.args_of("start_restore_timer")[-1] == (120.0,)
    machine.handle(Input(K.RESTORE_TIMEOUT))
    assert machine.state is S.BACKOFF


@pytest.mark.parametrize(
    ("utc_time", "patience"),
    [
        ("2026-01-06 04:50:00", 900.0),  # 23:50 New York: nightly reset
        ("2026-01-06 05:30:00", 900.0),  # 00:30 New York
        ("2026-01-06 05:50:00", 120.0),  # 00:50 New York: window over
        ("2026-07-07 03:50:00", 900.0),  # 23:50 New York in summer time
        ("2026-01-06 16:00:00", 120.0),  # 11:00 New York
    ],
)
def test_reset_window_patience(utc_time: str, patience: float, effects: RecordingEffects) -> None:
    """Inside the nightly reset window a 1100 is expected maintenance: longer patience."""
    with freeze_time(utc_time):
        machine = RecordedMachine(effects, SystemClock(), port=4002, client_ids=[7])
        drive_to(machine, S.LOST)
    assert effects.args_of("start_restore_timer")[-1] == (patience,)


def test_disconnect_stops_everything(machine: ConnectionMachine, effects: RecordingEffects) -> None:
    """A user's disconnect cancels timers, stops the heartbeat and tears the socket down."""
    drive_to(machine, S.LOST)
    machine.handle(Input(K.DISCONNECT))
    assert machine.state is S.DISCONNECTED
    assert {"cancel_retry", "cancel_restore_timer", "stop_heartbeat", "tear_down"} <= set(
        effects.names()[-5:]
    )


def test_each_step_returns_its_transition_and_effects(clock: ManualClock) -> None:
    """handle returns a Step: the move made (None for a stay), the effects in order, the state."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7])
    step = machine.handle(Input(K.CONNECT))
    assert step.transition is not None
    assert (step.transition.source, step.transition.dest) == (S.DISCONNECTED, S.CONNECTING)
    assert step.effects == (Effect("start_attempt", (1, 7, 4002)),)
    assert step.state is S.CONNECTING
    step = machine.handle(Input(K.ATTEMPT_SUCCEEDED, accounts=("DU1234567",)))
    assert step.effects == (Effect("select_account", ("DU1234567",)),
                            Effect("restore_subscriptions", (True,)),
                            Effect("start_heartbeat"), Effect("begin_session"))
    step = machine.handle(Input(K.FARM_OK, code=2104, farm="usfarm"))
    assert (step.transition, step.effects, step.state) == (None, (), S.CONNECTED)
    step = machine.handle(Input(K.SOCKET_CLOSED))
    assert [e.name for e in step.effects] == ["stop_heartbeat", "tear_down", "schedule_retry",
                                              "end_session"]
    assert step.transition is not None and step.transition.delay is not None
    assert step.effects[2].args == (step.transition.delay,)


def test_the_table_says_new_session_or_data_lost(clock: ManualClock) -> None:
    """Subscriptions go out as on a new session when one comes up, as re-issues after a 1101."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7])
    machine.handle(Input(K.CONNECT))
    up = machine.handle(Input(K.ATTEMPT_SUCCEEDED))
    assert Effect("restore_subscriptions", (True,)) in up.effects
    lost = machine.handle(Input(K.RESTORED_DATA_LOST, code=1101))
    assert lost.effects == (Effect("restore_subscriptions", (False,)),)
    machine.handle(Input(K.CONNECTIVITY_LOST, code=1100))
    back = machine.handle(Input(K.RESTORED_DATA_LOST, code=1101))
    assert Effect("restore_subscriptions", (False,)) in back.effects


def test_a_nested_handle_is_refused(monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> None:
    """An action that fed the machine from inside a step would raise ReentrantHandleError."""
    machines: list[ConnectionMachine] = []

    def reenter(self: ConnectionMachine, inp: Input) -> None:
        machines[0].handle(Input(K.DISCONNECT))

    monkeypatch.setitem(ACTION_FUNCTIONS, "note_port", reenter)
    machines.append(RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7]))
    with pytest.raises(ReentrantHandleError, match="disconnect"):
        machines[0].handle(Input(K.PORT_RESET, code=1300, port=4003))
    # The machine is usable again afterwards.
    assert machines[0].handle(Input(K.CONNECT)).state is S.CONNECTING


def test_misuse_raises_project_error(machine: ConnectionMachine, clock: ManualClock) -> None:
    """Feeding something that is not an Input, or no client id, raises UsageError."""
    with pytest.raises(UsageError):
        machine.handle("connect")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_delay": -1.0}, "initial_delay"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": 1.0}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_bad_backoff_settings(kwargs: dict[str, float], field: str) -> None:
    """Invalid backoff settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError) as excinfo:
        BackoffPolicy(**kwargs)  # type: ignore[arg-type]
    assert excinfo.value.field == field


def test_transcript_carries_cause(machine: ConnectionMachine, clock: ManualClock) -> None:
    """A transition records the clock time, the IB code and its message."""
    drive_to(machine, S.CONNECTED)
    clock.advance(12.5)
    machine.handle(Input(K.CONNECTIVITY_LOST, code=1100,
                         message="Connectivity between IB and Trader Workstation has been lost."))
    last = machine.transcript[-1]
    assert (last.source, last.dest, last.trigger, last.at, last.code) == (
        S.CONNECTED, S.LOST, K.CONNECTIVITY_LOST, 12.5, 1100)
    assert "has been lost" in last.cause


@pytest.mark.parametrize("limit", [0, 1, 2])
def test_steps_carry_every_change_whatever_the_transcript_keeps(
    limit: int, clock: ManualClock
) -> None:
    """A tiny transcript_limit trims the transcript, never the steps' transitions."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7],
                              transcript_limit=limit)
    heard: list[str] = []
    for inp in (Input(K.CONNECT), Input(K.ATTEMPT_SUCCEEDED),
                Input(K.CONNECTIVITY_LOST, code=1100), Input(K.RESTORED_DATA_KEPT, code=1102)):
        step = machine.handle(inp)
        if step.transition is not None:
            heard.append(step.transition.dest.value)
    assert heard == ["connecting", "connected", "lost", "connected"]
    assert len(machine.transcript) <= max(limit, 1)


def test_transitions_own_debug_lines_are_logged_when_the_application_turns_them_on(
    machine: ConnectionMachine, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG on for "transitions": a move logs transitions' own lines, as transitions words them."""
    caplog.set_level(logging.DEBUG, logger="transitions")
    machine.handle(Input(K.CONNECT))
    lines = [r.getMessage() for r in caplog.records if r.name == "transitions.core"]
    assert "Initiating transition from state disconnected to state connecting..." in lines
    assert "Entering state connecting. Processing callbacks..." in lines
    assert "Finished processing state connecting enter callbacks." in lines

