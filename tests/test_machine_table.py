"""Table-driven tests of the connection machine: every state x every input.

The expectation grid below is written out by hand. It is NOT derived from
``ibkr_connection.table.TABLE``: a change to the machine must show up here as
a reviewed diff.

Cell legend: a state name = moves there; ``=`` = stays and acts (re-subscribes,
or remembers a fact); ``-`` = ignored with a logged reason.

The grid is for a machine with a controller (IBC) configured and the default
policy; ``NO_CONTROLLER`` lists the cells that differ without one. The ManualClock's
wall time (12:00 in New York) is outside IB's reset windows.

A socket closed while connecting is ignored: the attempt itself reports the
close, classified (``attempt_failed``, or ``fatal_error`` for an account the
login does not manage), and the driver feeds that before it closes the socket.
"""

from __future__ import annotations

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects, drive_to

# Columns, in this order.
COLUMNS = (
    "connect", "disconnect", "attempt_succeeded", "attempt_failed", "fatal_error",
    "socket_closed", "retry_due", "connectivity_lost", "restored_data_lost",
    "restored_data_kept", "farm_broken", "farm_ok", "server_link_broken", "port_reset",
    "client_id_in_use", "not_connected", "heartbeat_missed", "restore_timeout",
    "restart_sent", "restart_failed", "gateway_back", "restart_timeout", "farm_reconnect_due",
    "subscribed", "stop",
)

# Setup of each row: see conftest.drive_to (degraded = usfarm broken).
# Inputs carry: farm_broken -> "ushmds", farm_ok -> "usfarm", port_reset -> 4003.
EXPECTED = {
    #                connect     disconnect    succeeded  failed   fatal   closed   retry       1100  1101       1102       f_broken  f_ok       2110      1300     326      502/504  heartbeat restore      r_sent r_failed  back    r_timeout farm_due subscribed stop
    "disconnected": ("connecting", "-",          "-",       "-",      "-",     "-",     "-",        "-",  "-",       "-",       "-",      "-",       "-",      "=",     "-",     "-",     "-",      "-",         "-",   "-",      "-",    "-",      "-", "-", "stopped"),
    "connecting":   ("-",          "disconnected", "connected", "backoff", "failed", "-",     "-",  "=",  "=",       "=",       "=",      "=",       "=",      "backoff", "backoff", "backoff", "-",  "-",         "-",   "-",      "-",    "-",      "-", "-", "-"),
    "connected":    ("-",          "disconnected", "-",       "-",      "failed", "backoff", "-",     "lost", "=",     "-",       "degraded", "-",     "degraded", "backoff", "-",   "backoff", "backoff", "-",       "-",   "-",      "-",    "-",      "-", "=", "-"),
    "degraded":     ("-",          "disconnected", "-",       "-",      "failed", "backoff", "-",     "lost", "=",     "=",       "=",      "connected", "=",     "backoff", "-",   "backoff", "backoff", "-",       "-",   "-",      "-",    "-",      "=", "=", "-"),
    "lost":         ("-",          "disconnected", "-",       "-",      "failed", "backoff", "-",     "-",  "connected", "connected", "=",    "=",       "=",      "backoff", "-",   "backoff", "backoff", "restarting", "-", "-",      "-",    "-",      "-", "=", "-"),
    "backoff":      ("-",          "disconnected", "-",       "-",      "failed", "-",     "connecting", "-", "-",     "-",       "-",      "-",       "-",      "=",     "-",     "-",     "-",      "-",         "-",   "-",      "-",    "-",      "-", "-", "-"),
    "restarting":   ("-",          "disconnected", "-",       "-",      "-",     "-",     "-",        "-",  "-",       "-",       "-",      "-",       "-",      "=",     "-",     "-",     "-",      "-",         "=",   "backoff", "connecting", "backoff", "-", "-", "-"),
    "failed":       ("connecting", "disconnected", "-",       "-",      "-",     "-",     "-",        "-",  "-",       "-",       "-",      "-",       "-",      "=",     "-",     "-",     "-",      "-",         "-",   "-",      "-",    "-",      "-", "-", "-"),
    "stopped":      ("-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"),
}

#: The cells that differ for a machine without a controller: nothing escalates.
NO_CONTROLLER = {
    ("lost", "restore_timeout"): "backoff",
    ("degraded", "farm_reconnect_due"): "-",
}

PAYLOAD = {
    "farm_broken": {"code": 2103, "farm": "ushmds"},
    "farm_ok": {"code": 2104, "farm": "usfarm"},
    "port_reset": {"code": 1300, "port": 4003},
    "connectivity_lost": {"code": 1100},
    "restored_data_lost": {"code": 1101},
    "restored_data_kept": {"code": 1102},
    "server_link_broken": {"code": 2110},
    "client_id_in_use": {"code": 326},
    "not_connected": {"code": 504},
}

CASES = [
    (state, column, cell)
    for state, cells in EXPECTED.items()
    for column, cell in zip(COLUMNS, cells, strict=True)
]


def test_grid_covers_every_state_and_input() -> None:
    """The hand-written grid names every declared state and input exactly once."""
    assert set(EXPECTED) == {s.value for s in ConnectionState}
    assert set(COLUMNS) == {k.value for k in InputKind}
    assert len(CASES) == len(ConnectionState) * len(InputKind)


@pytest.mark.parametrize(("state", "column", "cell"), CASES)
def test_outcome(
    state: str, column: str, cell: str, effects: RecordingEffects, clock: ManualClock
) -> None:
    """Each (state, input) pair has the outcome written in the grid (with a controller)."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                                controller_configured=True)
    _check_cell(machine, state, column, cell)


@pytest.mark.parametrize(("state", "column", "cell"),
                         [(s, c, cell) for (s, c), cell in NO_CONTROLLER.items()])
def test_outcome_without_controller(
    state: str, column: str, cell: str, effects: RecordingEffects, clock: ManualClock
) -> None:
    """Without a controller those cells do not escalate."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    _check_cell(machine, state, column, cell)


def _check_cell(machine: ConnectionMachine, state: str, column: str, cell: str) -> None:
    drive_to(machine, ConnectionState(state))
    before = len(machine.transcript)
    result = machine.handle(Input(InputKind(column), **PAYLOAD.get(column, {}))).state  # type: ignore[arg-type]
    row = machine.last_row
    assert row is not None and row.source.value == state and row.input.value == column
    if cell == "-":
        assert result.value == state
        assert row.ignored, f"expected {column} to be ignored in {state}"
        assert len(machine.transcript) == before
    elif cell == "=":
        assert result.value == state
        assert not row.ignored and row.dest is None
        assert len(machine.transcript) == before
    else:
        assert result.value == cell
        transition = machine.transcript[-1]
        assert (transition.source.value, transition.dest.value) == (state, cell)
        assert transition.trigger.value == column


#: connecting + attempt_failed, by what came before (with a controller, default
#: policy: restart_after 3). The cell: where the third failure in a row leads.
#: "proven": a session came up on this port earlier; "1300": it came up on
#: another port, then a 1300 moved the port; "refused": proven, then a refused
#: connect before the silent ones; "none": no session ever.
WEDGE_GRID = {
    ("none", "costly"): "backoff",
    ("none", "cheap"): "backoff",
    ("proven", "costly"): "restarting",
    ("proven", "cheap"): "backoff",
    ("1300", "costly"): "backoff",
    ("refused", "costly"): "backoff",
}


@pytest.mark.parametrize(("history", "failure", "cell"),
                         [(h, f, c) for (h, f), c in WEDGE_GRID.items()])
def test_wedge_signs_count_only_on_a_proven_endpoint(
    history: str, failure: str, cell: str, effects: RecordingEffects, clock: ManualClock
) -> None:
    """Three failed attempts in a row restart the gateway only where a session was had."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7],
                                controller_configured=True)
    machine.handle(Input(InputKind.CONNECT))
    if history != "none":
        machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED))
        machine.handle(Input(InputKind.SOCKET_CLOSED))
        if history == "1300":
            machine.handle(Input(InputKind.PORT_RESET, code=1300, port=4003))
        machine.handle(Input(InputKind.RETRY_DUE))
        if history == "refused":
            machine.handle(Input(InputKind.ATTEMPT_FAILED))
            machine.handle(Input(InputKind.RETRY_DUE))
    for number in range(3):
        if number:
            machine.handle(Input(InputKind.RETRY_DUE))
        machine.handle(Input(InputKind.ATTEMPT_FAILED, costly=failure == "costly"))
    assert machine.state.value == cell


#: connecting + attempt_succeeded, by the account settings and the accounts
#: the attempt reported: the state, the account selected (or the refusal).
#: (configured account, account_fallback, managed accounts) -> (state, effect).
ACCOUNT_GRID = {
    ("DU222", "error", ("DU111", "DU222")): ("connected", ("select_account", "DU222")),
    ("DU333", "error", ("DU111", "DU222")):
        ("failed", ("refuse_account", "account DU333 is not managed by this login "
                                      "(managed: DU111, DU222)")),
    ("DU333", "first", ()):
        ("failed", ("refuse_account", "account DU333 is not managed by this login "
                                      "(managed: none)")),
    ("", "error", ("DU111",)): ("connected", ("select_account", "DU111")),
    ("", "first", ("DU111", "DU222")): ("connected", ("select_account", "DU111")),
    ("", "error", ("DU111", "DU222")):
        ("failed", ("refuse_account", "this login manages 2 accounts (DU111, DU222); set the "
                                      "account (IBKR_ACCOUNT) or account_fallback='first'")),
    ("", "first", ()): ("failed", ("refuse_account", "the gateway reported no managed accounts")),
}


@pytest.mark.parametrize(("account", "fallback", "managed", "expected"),
                         [(*key, cell) for key, cell in ACCOUNT_GRID.items()])
def test_the_table_chooses_the_account(
    account: str, fallback: str, managed: tuple[str, ...], expected: tuple[str, tuple[str, str]],
    clock: ManualClock,
) -> None:
    """A successful attempt's accounts: the configured one, the only one, the first, or failed."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7], account=account,
                                account_fallback=fallback, mask_accounts=False)
    machine.handle(Input(InputKind.CONNECT))
    step = machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED, message="connected",
                                accounts=managed))
    state, (command, argument) = expected
    assert step.state.value == state
    chosen = [e for e in step.effects if e.name in ("select_account", "refuse_account")]
    assert [(e.name, e.args) for e in chosen] == [(command, (argument,))]
    if state == "failed":
        # The refusal is the transition's cause (what start() raises and the log says).
        assert step.transition is not None and step.transition.cause == argument


def test_the_refusal_masks_the_accounts(clock: ManualClock) -> None:
    """With mask_accounts (the default) the refusal names the accounts masked."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7], account="DU0000001")
    machine.handle(Input(InputKind.CONNECT))
    step = machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED, accounts=("DU1234567",)))
    assert step.state is ConnectionState.FAILED
    assert step.effects[0].args == ("account DU***001 is not managed by this login "
                                    "(managed: DU***567)",)


#: connecting + attempt_failed on a proven endpoint with one wedge sign counted
#: (a heartbeat miss), by the failure and whether attempts are left (max_attempts
#: 1: the first attempt after the drop is the last). With a controller, restart_after 3.
#: -> (state, the row's guard, its actions, wedge signs after, endpoint proven after).
FAILURE_GRID = {
    ("costly", "left"): ("backoff", None, ("note_wedge_sign", "draw_costly_delay"),
                         2, True),
    ("refused", "left"): ("backoff", "retries_left & !costly",
                          ("note_gateway_down", "draw_delay"), 0, False),
    ("costly", "last"): ("failed", "!retries_left & costly", ("note_wedge_sign",), 2, True),
    ("refused", "last"): ("failed", "!retries_left", ("note_gateway_down",), 0, False),
}


@pytest.mark.parametrize(("failure", "attempts", "expected"),
                         [(*key, cell) for key, cell in FAILURE_GRID.items()])
def test_a_failed_attempt_is_a_wedge_sign_or_a_gateway_down_by_its_row(
    failure: str, attempts: str, expected: tuple[str, str | None, tuple[str, ...], int, bool],
    clock: ManualClock,
) -> None:
    """Costly or refused is the row's guard; each row's action does one thing."""
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=1 if attempts == "last" else None))
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7], policy=policy,
                                controller_configured=True)
    machine.handle(Input(InputKind.CONNECT))
    machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED))
    machine.handle(Input(InputKind.HEARTBEAT_MISSED))
    machine.handle(Input(InputKind.RETRY_DUE))
    assert machine.wedge_signs == 1 and machine.attempt == 1
    step = machine.handle(Input(InputKind.ATTEMPT_FAILED, costly=failure == "costly"))
    state, guard, actions, signs, proven = expected
    row = machine.last_row
    assert row is not None
    assert (step.state.value, row.guard, row.actions) == (state, guard, actions)
    assert (machine.wedge_signs, machine.endpoint_proven) == (signs, proven)


#: A connect's attempt budget (the sync wrapper's max_attempts), by the policy's
#: max_attempts: where each of four refused attempts in a row leads.
BUDGET_GRID = {
    (2, None): ("backoff", "failed", None, None),
    (None, None): ("backoff", "backoff", "backoff", "backoff"),
    (3, 2): ("backoff", "failed", None, None),
    (2, 3): ("backoff", "failed", None, None),
}


@pytest.mark.parametrize(("budget", "policy_max", "expected"),
                         [(*key, cell) for key, cell in BUDGET_GRID.items()])
def test_a_connects_attempt_budget_is_the_tables_give_up(
    budget: int | None, policy_max: int | None, expected: tuple[str | None, ...],
    clock: ManualClock,
) -> None:
    """connect(attempts=N): the N-th failed attempt takes connecting -> failed (or the policy's)."""
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=policy_max))
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7], policy=policy)
    machine.handle(Input(InputKind.CONNECT, attempts=budget))
    seen: list[str | None] = []
    for _ in range(4):
        if machine.state is ConnectionState.BACKOFF:
            machine.handle(Input(InputKind.RETRY_DUE))
        if machine.state is not ConnectionState.CONNECTING:
            seen.append(None)
            continue
        seen.append(machine.handle(Input(InputKind.ATTEMPT_FAILED)).state.value)
    assert tuple(seen) == expected


def test_a_session_spends_the_connects_budget(clock: ManualClock) -> None:
    """After a session came up, recovery follows the policy (unbounded), not connect()'s budget."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7])
    machine.handle(Input(InputKind.CONNECT, attempts=1))
    machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED))
    machine.handle(Input(InputKind.SOCKET_CLOSED))
    states = []
    for _ in range(3):
        machine.handle(Input(InputKind.RETRY_DUE))
        states.append(machine.handle(Input(InputKind.ATTEMPT_FAILED)).state.value)
    assert states == ["backoff", "backoff", "backoff"]


@pytest.mark.parametrize(("account", "expected"), [("DU111", "degraded"), ("DU333", "failed")])
def test_the_account_check_holds_for_a_session_that_comes_up_hurt(
    account: str, expected: str, clock: ManualClock,
) -> None:
    """A farm broken during the attempt: a managed account -> degraded, an unmanaged one -> failed."""
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7], account=account)
    machine.handle(Input(InputKind.CONNECT))
    machine.handle(Input(InputKind.FARM_BROKEN, code=2103, farm="usfarm"))
    step = machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED, accounts=("DU111", "DU222")))
    assert step.state.value == expected
    assert [e.name for e in step.effects if "account" in e.name] == (
        ["select_account"] if expected == "degraded" else ["refuse_account"])
