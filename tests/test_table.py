"""The table's vocabulary and rules: actions and phases, rows that draw delays, check_table.

Expectations are written out here, not read back from ``ibkr_connection.table``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.table import (
    ACTIONS,
    ENTRY,
    EXIT,
    TABLE,
    ConnectionState,
    Phase,
    Row,
    check_table,
    outcome,
)

from conftest import RecordedMachine, RecordingEffects, drive_to

S = ConnectionState
K = InputKind

#: Every action and the phase it runs in.
PHASES = {
    "note_farm_broken": "note",
    "note_farm_ok": "note",
    "note_server_link_broken": "note",
    "note_link_lost": "note",
    "note_link_restored": "note",
    "note_port": "note",
    "first_attempt": "before",
    "count_attempt": "before",
    "warn_not_an_api_port": "before",
    "draw_delay": "before",
    "draw_costly_delay": "before",
    "retry_at_once": "before",
    "note_wedge_sign": "before",
    "note_gateway_down": "before",
    "refuse_unmanaged_account": "before",
    "refuse_no_account": "before",
    "refuse_ambiguous_accounts": "before",
    "reset_backoff": "after",
    "select_account": "after",
    "issue_subscriptions": "after",
    "restore_subscriptions": "after",
    "issue_new_subscriptions": "after",
    "start_heartbeat": "after",
    "retry_same_client_id": "after",
    "next_client_id": "after",
    "keep_client_id": "after",
    "forget_wedge_signs": "after",
    "note_endpoint_proven": "after",
    "forget_endpoint": "after",
    "begin_session": "after",
    "end_session": "after",
    "probe_gateway": "after",
    "reconnect_data": "after",
    "forget_session": "state",
    "start_attempt": "state",
    "schedule_retry": "state",
    "cancel_retry": "state",
    "start_restore_timer": "state",
    "start_maintenance_restore_timer": "state",
    "cancel_restore_timer": "state",
    "stop_heartbeat": "state",
    "tear_down": "state",
    "count_restart": "state",
    "start_restart_timer": "state",
    "send_restart": "state",
    "cancel_restart_timer": "state",
    "cancel_probe": "state",
    "start_farm_timer": "state",
    "cancel_farm_timer": "state",
}

#: Each state's entry and exit actions, in order (a guard in brackets).
ENTRY_EXIT = {
    "disconnected": (["cancel_retry", "cancel_restore_timer", "stop_heartbeat", "tear_down"],
                     []),
    "connecting": (["forget_session", "start_attempt"], []),
    "connected": ([], []),
    "degraded": (["start_farm_timer [controller_configured]"],
                 ["cancel_farm_timer [controller_configured]"]),
    "lost": (["start_maintenance_restore_timer [in_reset_window]",
              "start_restore_timer [!in_reset_window]"], ["cancel_restore_timer"]),
    "backoff": (["stop_heartbeat", "tear_down", "schedule_retry"], ["cancel_retry"]),
    "restarting": (["count_restart", "stop_heartbeat", "tear_down", "start_restart_timer",
                    "send_restart"], ["cancel_restart_timer", "cancel_probe"]),
    "failed": (["cancel_retry", "cancel_restore_timer", "stop_heartbeat", "tear_down"], []),
    "stopped": ([], []),
}


def test_entry_and_exit_actions_are_the_tables() -> None:
    """ENTRY and EXIT declare each state's entry and exit actions, as written here."""
    declared = {state.value: ([str(a) for a in ENTRY[state]], [str(a) for a in EXIT[state]])
                for state in ConnectionState}
    assert declared == ENTRY_EXIT

#: Every move into backoff and how its delay is decided: cheap unless the input
#: is classified costly (draw_delay), costly whatever it says, or none at all.
DELAYS = {
    # refused (the usual case, first), silence on an unproven endpoint (warned),
    # costly: a row each.
    ("connecting", "attempt_failed"): ("draw_delay", "draw_costly_delay", "draw_costly_delay"),
    ("connecting", "port_reset"): "retry_at_once",
    # the same id again, the next id, no fallback configured: a row each.
    ("connecting", "client_id_in_use"): ("draw_costly_delay",) * 3,
    ("connecting", "not_connected"): "draw_delay",
    ("connected", "socket_closed"): "draw_delay",
    ("connected", "heartbeat_missed"): "draw_costly_delay",
    ("connected", "port_reset"): "retry_at_once",
    ("connected", "not_connected"): "draw_delay",
    ("degraded", "socket_closed"): "draw_delay",
    ("degraded", "heartbeat_missed"): "draw_costly_delay",
    ("degraded", "port_reset"): "retry_at_once",
    ("degraded", "not_connected"): "draw_delay",
    ("lost", "socket_closed"): "draw_delay",
    ("lost", "heartbeat_missed"): "draw_costly_delay",
    ("lost", "restore_timeout"): "draw_costly_delay",
    ("lost", "port_reset"): "retry_at_once",
    ("lost", "not_connected"): "draw_delay",
    ("restarting", "restart_failed"): "draw_costly_delay",
    ("restarting", "restart_timeout"): "draw_costly_delay",
}


def test_every_action_has_its_phase() -> None:
    """Each action runs in the phase written here, and there is no other action."""
    assert {name: action.phase.value for name, action in ACTIONS.items()} == PHASES


@pytest.mark.parametrize(("state", "kind", "delay"),
                         [(s, k, d) for (s, k), d in DELAYS.items()])
def test_each_move_into_backoff_names_how_its_delay_is_drawn(
    state: str, kind: str, delay: str | tuple[str, ...]
) -> None:
    """The row, not a list of input kinds elsewhere, says cheap, costly or at once."""
    rows = [r for r in outcome(S(state), K(kind)) if r.dest is S.BACKOFF]
    expected = (delay,) if isinstance(delay, str) else delay
    assert [a for row in rows for a in row.actions
            if "delay" in a or a == "retry_at_once"] == list(expected)


def test_only_the_rows_above_move_into_backoff() -> None:
    """No other row moves into backoff."""
    moves = {(r.source.value, r.input.value) for r in TABLE if r.dest is S.BACKOFF}
    assert moves == set(DELAYS)


@pytest.mark.parametrize(
    ("state", "kind", "costly", "low", "high"),
    [
        ("connected", "socket_closed", False, 0.045, 0.05),
        # only an attempt's failure is classified: a closed socket is cheap
        ("connected", "socket_closed", True, 0.045, 0.05),
        ("connecting", "attempt_failed", False, 0.045, 0.05),
        ("connecting", "attempt_failed", True, 0.9, 1.0),
        ("connected", "heartbeat_missed", False, 0.9, 1.0),
        ("lost", "restore_timeout", False, 0.9, 1.0),
        ("connected", "not_connected", False, 0.045, 0.05),
        ("connected", "port_reset", True, 0.0, 0.0),
    ],
)
def test_delay_follows_the_row(
    state: str, kind: str, costly: bool, low: float, high: float,
    effects: RecordingEffects, clock: ManualClock,
) -> None:
    """The row chooses the schedule: a costly attempt failure its own row, the rest as named."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    drive_to(machine, S(state))
    machine.handle(Input(K(kind), costly=costly, port=4003 if kind == "port_reset" else None))
    delay = machine.transcript[-1].delay
    assert delay is not None and low <= delay <= high
    assert effects.args_of("schedule_retry")[-1] == (delay,)


def test_attempts_are_counted_by_the_rows_into_connecting(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """connect starts a fresh series (attempt 1); retry_due counts the next attempt."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    machine.handle(Input(K.CONNECT))
    machine.handle(Input(K.ATTEMPT_FAILED))
    machine.handle(Input(K.RETRY_DUE))
    machine.handle(Input(K.DISCONNECT))
    machine.handle(Input(K.CONNECT))
    assert [t.attempt for t in machine.transcript] == [1, 1, 2, 2, 1]
    assert [args[0] for args in effects.args_of("start_attempt")] == [1, 2, 1]


def test_an_ignored_row_changes_no_fact(effects: RecordingEffects, clock: ManualClock) -> None:
    """A farm reported broken without a session is ignored: nothing is noted."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    machine.handle(Input(K.FARM_BROKEN, code=2103, farm="usfarm"))
    assert machine.last_row is not None and machine.last_row.ignored
    assert machine.broken_farms == frozenset()


def test_a_port_is_noted_in_every_state(effects: RecordingEffects, clock: ManualClock) -> None:
    """A 1300 without a session is not ignored: the next attempt uses its port."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    machine.handle(Input(K.PORT_RESET, code=1300, port=4003))
    machine.handle(Input(K.CONNECT))
    assert effects.args_of("start_attempt") == [(1, 7, 4003)]


def test_every_move_is_a_transitions_event(
    triggered: list[str], effects: RecordingEffects, clock: ManualClock
) -> None:
    """An input that moves or asks for an effect triggers one event; a stay (notes only) none."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    fed = [K.FARM_OK, K.CONNECT, K.FARM_OK, K.CONNECT, K.SOCKET_CLOSED, K.ATTEMPT_SUCCEEDED,
           K.RESTORED_DATA_KEPT, K.FARM_BROKEN, K.SUBSCRIBED]
    for kind in fed:
        machine.handle(Input(kind, farm="usfarm"))
    # Ignored in disconnected, noted in connecting, ignored twice in connecting and once
    # in connected: stays, without transitions. In connected, farm_broken moves to degraded
    # and subscribed asks for the new subscription to be issued: through transitions.
    assert triggered == ["connect", "attempt_succeeded", "farm_broken", "subscribed"]


def test_without_fast_stays_every_input_is_a_transitions_event(
    triggered: list[str], effects: RecordingEffects, clock: ManualClock
) -> None:
    """With fast_stays=False each input fed, ignored or noted ones included, triggers one event."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7], fast_stays=False)
    fed = [K.FARM_OK, K.CONNECT, K.FARM_OK, K.CONNECT, K.SOCKET_CLOSED, K.ATTEMPT_SUCCEEDED,
           K.RESTORED_DATA_KEPT, K.FARM_BROKEN]
    for kind in fed:
        machine.handle(Input(kind, farm="usfarm"))
    assert triggered == [k.value for k in fed]


def test_the_machine_carries_no_bound_triggers(
    effects: RecordingEffects, clock: ManualClock
) -> None:
    """transitions drives a private model: the machine has no connect(), trigger() or fsm_state."""
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7])
    for name in ("connect", "socket_closed", "trigger", "may_connect", "fsm_state",
                 "is_state_connected", "is_fsm_state_connected"):
        assert not hasattr(machine, name), name


def test_the_table_keeps_its_rules() -> None:
    """The shipped table breaks none of the rules check_table knows."""
    assert check_table() == []


def _without(table: tuple[Row, ...], state: S, kind: K) -> list[Row]:
    return [r for r in table if not (r.source is state and r.input is kind)]


def _edited(state: S, kind: K, **changes: object) -> list[Row]:
    return [replace(r, **changes) if (r.source, r.input) == (state, kind) else r for r in TABLE]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (_without(TABLE, S.LOST, K.FARM_OK), "lost + farm_ok: no row"),
        (_edited(S.BACKOFF, K.RETRY_DUE, guard="retries_left"),
         "backoff + retry_due: the last row has a guard"),
        (_edited(S.LOST, K.FARM_OK, actions=("note_farm_ok", "polish")),
         "lost + farm_ok: unknown action(s) polish"),
        (_edited(S.CONNECTED, K.RESTORED_DATA_LOST,
                 actions=("restore_subscriptions", "note_link_restored")),
         "connected + restored_data_lost: actions not listed phase by phase"),
        (_edited(S.CONNECTED, K.SOCKET_CLOSED, actions=()),
         "connected + socket_closed: a move into backoff needs one of"),
        (_edited(S.LOST, K.FARM_OK, actions=("note_farm_ok", "draw_delay")),
         "lost + farm_ok: draw_delay outside a move into backoff"),
        (_edited(S.BACKOFF, K.RETRY_DUE, actions=()),
         "backoff + retry_due: only a move into connecting counts an attempt"),
        (_edited(S.CONNECTING, K.ATTEMPT_SUCCEEDED, guard="sunny"),
         "connecting + attempt_succeeded: unknown guard sunny"),
        ([replace(r, actions=()) if (r.source, r.input, r.dest) == (S.DEGRADED, K.FARM_OK, None)
          else r for r in TABLE],
         "degraded + farm_ok: rows note different facts"),
    ],
)
def test_check_table_names_what_is_wrong(table: list[Row], problem: str) -> None:
    """A broken table is reported by state, input and rule."""
    problems = check_table(table)
    assert any(p.startswith(problem) for p in problems), problems


def test_phase_values() -> None:
    """The phases, in the order a row's actions run, then the states' own."""
    assert [p.value for p in Phase] == ["note", "before", "after", "state"]
