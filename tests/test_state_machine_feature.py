"""Step definitions for features/state_machine.feature (the pure machine)."""

from __future__ import annotations

from pytest_bdd import given, parsers, scenarios, then, when

from ibkr_connection import codes
from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.table import SESSION_STATES, ConnectionState

from conftest import RecordedMachine, RecordingEffects, drive_to

scenarios("state_machine.feature")


@given(
    parsers.parse("a connection machine for port {port:d} with client id {client_id:d}"),
    target_fixture="machine",
)
def _machine(port: int, client_id: int, effects: RecordingEffects,
             clock: ManualClock) -> ConnectionMachine:
    return RecordedMachine(effects, clock, port=port, client_ids=[client_id])


@given("the bot is connected")
def _connected(machine: ConnectionMachine) -> None:
    drive_to(machine, ConnectionState.CONNECTED)


@when("the bot asks to connect")
def _connect(machine: ConnectionMachine) -> None:
    machine.handle(Input(InputKind.CONNECT))


@when("the attempt succeeds")
def _succeeds(machine: ConnectionMachine) -> None:
    machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED))


@when("the attempt fails because the connection was refused")
def _refused(machine: ConnectionMachine) -> None:
    machine.handle(Input(InputKind.ATTEMPT_FAILED, message="connection refused"))


@when("the retry is due")
def _retry(machine: ConnectionMachine) -> None:
    machine.handle(Input(InputKind.RETRY_DUE))


@when("the heartbeat is missed")
def _heartbeat(machine: ConnectionMachine) -> None:
    machine.handle(Input(InputKind.HEARTBEAT_MISSED))


@when(parsers.parse('IB sends code {code:d} "{message}"'))
def _code(machine: ConnectionMachine, code: int, message: str) -> None:
    inp = codes.classify(code, message)
    if inp is not None:
        machine.handle(inp)


@then(parsers.parse('the connection is "{state}"'))
def _state_is(machine: ConnectionMachine, state: str) -> None:
    assert machine.state is ConnectionState(state)


@then("the account is selected, subscriptions are set up and the heartbeat runs")
def _session_up(effects: RecordingEffects) -> None:
    assert effects.names()[-4:] == ["select_account", "restore_subscriptions", "start_heartbeat",
                                    "begin_session"]
    assert effects.heartbeat


@then(parsers.parse("the next attempt is scheduled within {seconds:f} seconds"))
def _scheduled(effects: RecordingEffects, seconds: float) -> None:
    assert 0 < effects.args_of("schedule_retry")[-1][0] <= seconds


@then("no order may be sent")
def _no_orders(machine: ConnectionMachine) -> None:
    assert machine.state in SESSION_STATES
    assert machine.state is ConnectionState.LOST


@then("the subscriptions are restored")
def _restored(effects: RecordingEffects) -> None:
    assert effects.names()[-1] == "restore_subscriptions"
    assert effects.names().count("restore_subscriptions") == 2


@then("the subscriptions are not restored again")
def _not_restored(effects: RecordingEffects) -> None:
    assert effects.names().count("restore_subscriptions") == 1


@then(parsers.parse("the attempt uses port {port:d}"))
def _port(effects: RecordingEffects, port: int) -> None:
    assert effects.args_of("start_attempt")[-1][2] == port
