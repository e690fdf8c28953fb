"""The connection state machine: states, actions, the transition table, and its runner.

Everything that decides the connection's state lives in this file. :data:`TABLE`
is plain data: one :class:`Row` per (state, input[, guard]), naming the actions
the row runs. :data:`ACTIONS` says what each action does and when it runs
(:class:`Phase`): facts are noted before the row's guard is tried, counters and
delays are set before the move, effects are asked for after it. The
``transitions`` machine, the diagrams in ``diagrams/`` and the docs tables are
all derived from these two tables, and every input goes through ``transitions``.

The machine is sans-IO: it never touches a socket, a clock or asyncio. It reads
time from an injected :class:`~ibkr_connection.clock.Clock` and asks an
:class:`Effects` port to do things; the asyncio driver
(:mod:`ibkr_connection.driver`, owned by
:class:`~ibkr_connection.manager.ConnectionManager`) performs them and feeds
the results back in as :class:`~ibkr_connection.inputs.Input`.

The table is total: every (state, input) pair has a declared outcome, either a
move, a stay with actions, or an ignore with a logged reason. IB can send any
code at any time, so no input ever raises. :func:`check_table` holds the table
to its rules when this module is imported.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any

from transitions import EventData, Machine

from ibkr_connection.clock import Clock
from ibkr_connection.errors import UsageError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.outputs import Effects, JournalEntry, Transition
from ibkr_connection.policy import RecoveryPolicy

logger = logging.getLogger(__name__)

# transitions logs every callback at INFO; our own log has one line per
# transition. Quieten it unless the application configured it.
_transitions_logger = logging.getLogger("transitions")
if _transitions_logger.level == logging.NOTSET:
    _transitions_logger.setLevel(logging.WARNING)


class ConnectionState(str, Enum):
    """The states of a connection to TWS / IB Gateway."""

    def __str__(self) -> str:
        return self.value

    #: Nobody wants a connection. No socket, no timers. Entry: cancel every
    #: timer and the running attempt, stop the heartbeat, tear the socket down.
    DISCONNECTED = "disconnected"
    #: An attempt is running: TCP connect, API handshake, startup sync, account
    #: check. Entry: forget the last session's farm and link status, start the
    #: attempt with the current client id and port.
    CONNECTING = "connecting"
    #: Ready: the API is up, TWS is linked to IB, every data farm is OK.
    #: Entered from ``connecting``: reset the backoff, select the account,
    #: (re)issue every registered subscription, start the heartbeat.
    CONNECTED = "connected"
    #: The API is up but a data farm (or TWS's link to its server, 2110) is
    #: broken. Orders may still be placed; market data may be stale. Returns to
    #: ``connected`` only once every broken farm has reported OK.
    DEGRADED = "degraded"
    #: The API socket is up but TWS lost IB (1100). No order may be sent. Entry:
    #: start the restore timer (longer inside IB's reset windows); exit: cancel it.
    LOST = "lost"
    #: The socket is down and the next attempt is scheduled. Entry: stop the
    #: heartbeat, tear the socket down, schedule the retry with the delay the
    #: row drew; exit: cancel the retry.
    BACKOFF = "backoff"
    #: Gave up: attempts exhausted or a fatal error (e.g. unknown account).
    #: Entry: as for ``disconnected``. Only a connect request (to ``connecting``)
    #: or a disconnect (to ``disconnected``) leaves it.
    FAILED = "failed"


_S = ConnectionState
_I = InputKind

#: States in which the API socket is up and a session exists.
SESSION_STATES = (_S.CONNECTED, _S.DEGRADED, _S.LOST)
#: States in which requests and orders can be sent.
USABLE_STATES = (_S.CONNECTED, _S.DEGRADED)

_ALL_STATES = tuple(ConnectionState)
_NO_SESSION = (_S.DISCONNECTED, _S.BACKOFF, _S.FAILED)


class Phase(str, Enum):
    """When an action of a row runs."""

    def __str__(self) -> str:
        return self.value

    #: Before the row's guard is tried (a fact the guard may read). The same
    #: on every row of a (state, input): it is noted once, whichever row is taken.
    NOTE = "note"
    #: Once the guard held, before the move (exit and entry actions) and
    #: before the transition is recorded: counters and the retry delay.
    BEFORE = "before"
    #: After the move and its entry actions: effects of the new session.
    AFTER = "after"


@dataclass(frozen=True)
class Action:
    """One action a row may name.

    Attributes:
        name: the name used in :data:`TABLE`; ``ConnectionMachine._do_<name>``
            performs it.
        phase: when it runs.
        doc: what it does, for ``diagrams/transitions.md``.
    """

    name: str
    phase: Phase
    doc: str


_N, _B, _A = Phase.NOTE, Phase.BEFORE, Phase.AFTER

#: Every action a row may name, in the order the docs list them.
ACTIONS: dict[str, Action] = {action.name: action for action in (
    Action("note_farm_broken", _N, "remember the data farm the input names as broken"),
    Action("note_farm_ok", _N, "forget the data farm the input names as broken"),
    Action("note_server_link_broken", _N, "remember that TWS's link to its server is broken "
                                          "(2110) until a 1101/1102"),
    Action("note_link_lost", _N, "remember that TWS lost IB (1100)"),
    Action("note_link_restored", _N, "TWS's links are back (1101/1102): forget a 1100 and a "
                                     "2110"),
    Action("note_port", _N, "the next attempt uses the port the input names (1300)"),
    Action("first_attempt", _B, "a user's connect starts a fresh series: attempt 1, no "
                                "failure counted, the client id's 326 retries forgotten"),
    Action("count_attempt", _B, "count the attempt about to start"),
    Action("draw_delay", _B, "count a failure and draw the delay before the next attempt: "
                             "the costly schedule if the input is classified costly (the "
                             "attempt cost the gateway a handshake), else the cheap one; "
                             "jittered"),
    Action("draw_costly_delay", _B, "count a failure and draw the delay from the costly "
                                    "schedule, whatever the input says; jittered"),
    Action("retry_at_once", _B, "the next attempt starts without delay; no failure counted"),
    Action("reset_backoff", _A, "a session is up: attempts, failures and the client id's "
                                "326 retries back to zero"),
    Action("select_account", _A, "effect: apply the account chosen during the attempt"),
    Action("restore_subscriptions", _A, "effect: (re)issue every registered subscription"),
    Action("start_heartbeat", _A, "effect: start probing the gateway when it is quiet"),
    Action("next_client_id", _A, "326: retry the same client id `same_client_id_retries` "
                                 "times, then the next configured one"),
)}

#: The actions that set the delay of a move into ``backoff``; every such row names one.
DELAY_ACTIONS = ("draw_delay", "draw_costly_delay", "retry_at_once")


@dataclass(frozen=True)
class Row:
    """One row of the transition table.

    Attributes:
        source: the state the row applies to.
        input: the input it reacts to.
        dest: the next state, or None to stay (no exit or entry actions run).
        guard: name of a guard that must hold, ``"!name"`` for its negation,
            or None. Rows of the same (source, input) are tried in order.
        actions: names of :data:`ACTIONS`, in the order they run.
        note: why; for a row that ignores its input, the reason that is logged.
    """

    source: ConnectionState
    input: InputKind
    dest: ConnectionState | None
    guard: str | None = None
    actions: tuple[str, ...] = ()
    note: str = ""

    @property
    def ignored(self) -> bool:
        """True when the row neither moves nor acts: the input is dropped."""
        return self.dest is None and not self.actions

    def actions_in(self, phase: Phase) -> tuple[str, ...]:
        """Return the row's actions that run in ``phase``, in order."""
        return tuple(name for name in self.actions if ACTIONS[name].phase is phase)


def _rows(
    sources: Iterable[ConnectionState],
    inp: InputKind,
    dest: ConnectionState | None,
    note: str,
    guard: str | None = None,
    actions: tuple[str, ...] = (),
) -> list[Row]:
    """Expand one rule over several source states."""
    return [Row(s, inp, dest, guard, actions, note) for s in sources]


#: Actions of a row whose attempt produced a session.
_ON_SESSION_UP = ("reset_backoff", "select_account", "restore_subscriptions", "start_heartbeat")
_ATTEMPT_STATES = (_S.CONNECTING, *SESSION_STATES)

#: The transition table. Order matters only among rows of the same
#: (source, input): the first whose guard holds is taken.
TABLE: tuple[Row, ...] = tuple(
    # -- user requests ---------------------------------------------------------
    _rows([_S.DISCONNECTED, _S.FAILED], _I.CONNECT, _S.CONNECTING,
          "the user asked for a connection", actions=("first_attempt",))
    + _rows([_S.CONNECTING, *SESSION_STATES, _S.BACKOFF], _I.CONNECT, None,
            "a connection is already wanted")
    + _rows([s for s in _ALL_STATES if s is not _S.DISCONNECTED], _I.DISCONNECT,
            _S.DISCONNECTED, "the user asked to disconnect")
    + [Row(_S.DISCONNECTED, _I.DISCONNECT, None, note="already disconnected")]
    # -- attempt results -------------------------------------------------------
    + [
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.LOST, "link_down", _ON_SESSION_UP,
            "session up, but TWS reported 1100 during the attempt"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.DEGRADED, "farms_broken", _ON_SESSION_UP,
            "session up with a broken data farm"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.CONNECTED, None, _ON_SESSION_UP,
            "session up: handshake, startup sync and account check done"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.CONNECTING], _I.ATTEMPT_SUCCEEDED, None,
            "stale result of an attempt that was cancelled")
    + [
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.BACKOFF, "retries_left", ("draw_delay",),
            "retry after the backoff delay"),
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.FAILED, note="no attempts left"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.CONNECTING], _I.ATTEMPT_FAILED, None,
            "stale result of an attempt that was cancelled")
    + _rows([*_ATTEMPT_STATES, _S.BACKOFF], _I.FATAL_ERROR, _S.FAILED,
            "retrying cannot fix this")
    + _rows([_S.DISCONNECTED, _S.FAILED], _I.FATAL_ERROR, None,
            "no connection is wanted; nothing to give up")
    # -- socket and timers -----------------------------------------------------
    + [Row(_S.CONNECTING, _I.SOCKET_CLOSED, None,
           note="the attempt reports the close itself, classified (attempt_failed or "
                "fatal_error)")]
    + _rows(SESSION_STATES, _I.SOCKET_CLOSED, _S.BACKOFF, "the API socket closed: reconnect",
            actions=("draw_delay",))
    + _rows(_NO_SESSION, _I.SOCKET_CLOSED, None, "the socket is already down")
    + [Row(_S.BACKOFF, _I.RETRY_DUE, _S.CONNECTING, actions=("count_attempt",),
           note="the backoff delay is over")]
    + _rows([s for s in _ALL_STATES if s is not _S.BACKOFF], _I.RETRY_DUE, None,
            "stale retry timer")
    + _rows(SESSION_STATES, _I.HEARTBEAT_MISSED, _S.BACKOFF,
            "the gateway did not answer the heartbeat: it is hung",
            actions=("draw_costly_delay",))
    + _rows([_S.CONNECTING, *_NO_SESSION], _I.HEARTBEAT_MISSED, None, "stale heartbeat")
    + [Row(_S.LOST, _I.RESTORE_TIMEOUT, _S.BACKOFF, actions=("draw_costly_delay",),
           note="TWS did not restore its link to IB in time: reconnect from scratch")]
    + _rows([s for s in _ALL_STATES if s is not _S.LOST], _I.RESTORE_TIMEOUT, None,
            "stale restore timer")
    # -- IB codes: TWS's link to IB ------------------------------------------------
    + _rows(USABLE_STATES, _I.CONNECTIVITY_LOST, _S.LOST,
            "1100: TWS lost IB; wait for it to restore", actions=("note_link_lost",))
    + [
        Row(_S.CONNECTING, _I.CONNECTIVITY_LOST, None, actions=("note_link_lost",),
            note="remembered: the attempt will end in lost"),
        Row(_S.LOST, _I.CONNECTIVITY_LOST, None, note="already lost"),
    ]
    + _rows(_NO_SESSION, _I.CONNECTIVITY_LOST, None, "no session")
    + [
        Row(_S.LOST, _I.RESTORED_DATA_LOST, _S.DEGRADED, "farms_broken",
            ("note_link_restored", "restore_subscriptions"),
            "1101: restored, data lost; a farm is still broken"),
        Row(_S.LOST, _I.RESTORED_DATA_LOST, _S.CONNECTED, None,
            ("note_link_restored", "restore_subscriptions"),
            "1101: restored, data lost: re-subscribe"),
        Row(_S.CONNECTED, _I.RESTORED_DATA_LOST, None, None, ("restore_subscriptions",),
            "1101: data lost: re-subscribe"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_LOST, None, "farms_broken",
            ("note_link_restored", "restore_subscriptions"),
            "1101: data lost: re-subscribe; a farm is still broken"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_LOST, _S.CONNECTED, None,
            ("note_link_restored", "restore_subscriptions"),
            "1101: TWS's server link is back; data lost: re-subscribe"),
        Row(_S.CONNECTING, _I.RESTORED_DATA_LOST, None, actions=("note_link_restored",),
            note="remembered; the attempt subscribes everything anyway"),
    ]
    + _rows(_NO_SESSION, _I.RESTORED_DATA_LOST, None, "no session")
    + [
        Row(_S.LOST, _I.RESTORED_DATA_KEPT, _S.DEGRADED, "farms_broken",
            ("note_link_restored",), "1102: restored, data kept; a farm is still broken"),
        Row(_S.LOST, _I.RESTORED_DATA_KEPT, _S.CONNECTED, None, ("note_link_restored",),
            "1102: restored, data kept: nothing to re-subscribe"),
        Row(_S.CONNECTED, _I.RESTORED_DATA_KEPT, None, note="1102: nothing was lost"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_KEPT, None, "farms_broken", ("note_link_restored",),
            "1102: a farm is still broken"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_KEPT, _S.CONNECTED, None, ("note_link_restored",),
            "1102: TWS's server link is back"),
        Row(_S.CONNECTING, _I.RESTORED_DATA_KEPT, None, actions=("note_link_restored",),
            note="remembered: TWS's link to IB is up"),
    ]
    + _rows(_NO_SESSION, _I.RESTORED_DATA_KEPT, None, "no session")
    + [Row(_S.CONNECTED, _I.SERVER_LINK_BROKEN, _S.DEGRADED, actions=("note_server_link_broken",),
           note="2110: TWS's link to its server is broken")]
    + _rows([_S.CONNECTING, _S.DEGRADED, _S.LOST], _I.SERVER_LINK_BROKEN, None,
            "remembered until 1101/1102", actions=("note_server_link_broken",))
    + _rows(_NO_SESSION, _I.SERVER_LINK_BROKEN, None, "no session")
    # -- IB codes: data farms ----------------------------------------------------
    + [Row(_S.CONNECTED, _I.FARM_BROKEN, _S.DEGRADED, actions=("note_farm_broken",),
           note="a data farm is broken")]
    + _rows([_S.CONNECTING, _S.DEGRADED, _S.LOST], _I.FARM_BROKEN, None,
            "farm remembered as broken", actions=("note_farm_broken",))
    + _rows(_NO_SESSION, _I.FARM_BROKEN, None, "no session")
    + [
        Row(_S.DEGRADED, _I.FARM_OK, None, "farms_broken", ("note_farm_ok",),
            "farm OK; another is still broken"),
        Row(_S.DEGRADED, _I.FARM_OK, _S.CONNECTED, None, ("note_farm_ok",),
            "every broken farm is OK again"),
        Row(_S.CONNECTED, _I.FARM_OK, None, note="farm OK notices are routine at connect"),
    ]
    + _rows([_S.CONNECTING, _S.LOST], _I.FARM_OK, None, "farm remembered as OK",
            actions=("note_farm_ok",))
    + _rows(_NO_SESSION, _I.FARM_OK, None, "no session")
    # -- IB codes: the API itself --------------------------------------------------
    + _rows(_ATTEMPT_STATES, _I.PORT_RESET, _S.BACKOFF,
            "1300: the API port was reset; reconnect at once on the new port",
            actions=("note_port", "retry_at_once"))
    + _rows(_NO_SESSION, _I.PORT_RESET, None, "the next attempt uses the new port",
            actions=("note_port",))
    + [
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.BACKOFF, "retries_left",
            ("draw_costly_delay", "next_client_id"),
            "326: client id in use; retry after a delay"),
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.FAILED, note="326 and no attempts left"),
    ]
    + _rows(SESSION_STATES, _I.CLIENT_ID_IN_USE, None,
            "326 refers to a connect attempt; this session is up")
    + _rows(_NO_SESSION, _I.CLIENT_ID_IN_USE, None, "no attempt is running")
    + [
        Row(_S.CONNECTING, _I.NOT_CONNECTED, _S.BACKOFF, "retries_left", ("draw_delay",),
            "502/504 during the attempt"),
        Row(_S.CONNECTING, _I.NOT_CONNECTED, _S.FAILED, note="502/504 and no attempts left"),
    ]
    + _rows(SESSION_STATES, _I.NOT_CONNECTED, _S.BACKOFF,
            "502/504: the API says it is not connected; reconnect", actions=("draw_delay",))
    + _rows(_NO_SESSION, _I.NOT_CONNECTED, None, "the socket is already down")
)

#: The guards a row may name, and what each asks.
GUARDS = {
    "retries_left": "the policy allows another attempt (``max_attempts``)",
    "farms_broken": "a data farm, or TWS's link to its server, is noted as broken",
    "link_down": "a 1100 was noted and no 1101/1102 since",
}


def outcome(state: ConnectionState, kind: InputKind) -> list[Row]:
    """Return the rows declared for (state, input), in the order they are tried."""
    return [row for row in TABLE if row.source is state and row.input is kind]


def check_table(table: Sequence[Row] = TABLE) -> list[str]:
    """Return every way ``table`` breaks the rules the machine relies on (none: ``[]``).

    Every (state, input) has rows, and its last row has no guard (the table is
    total); guards and actions are declared; a row lists its actions phase by
    phase; the rows of one (state, input) note the same facts; a row into
    ``backoff`` sets the delay with exactly one of :data:`DELAY_ACTIONS` and no
    other row does; a row into ``connecting`` counts its attempt.
    """
    problems = []
    order = list(Phase)
    for state in ConnectionState:
        for kind in InputKind:
            rows = [row for row in table if row.source is state and row.input is kind]
            where = f"{state.value} + {kind.value}"
            if not rows:
                problems.append(f"{where}: no row")
                continue
            if rows[-1].guard is not None:
                problems.append(f"{where}: the last row has a guard")
            if len({row.actions_in(Phase.NOTE) for row in rows if
                    all(a in ACTIONS for a in row.actions)}) > 1:
                problems.append(f"{where}: rows note different facts")
    for row in table:
        where = f"{row.source.value} + {row.input.value}"
        if row.guard is not None and row.guard.lstrip("!") not in GUARDS:
            problems.append(f"{where}: unknown guard {row.guard}")
        unknown = [a for a in row.actions if a not in ACTIONS]
        if unknown:
            problems.append(f"{where}: unknown action(s) {', '.join(unknown)}")
            continue
        phases = [order.index(ACTIONS[a].phase) for a in row.actions]
        if phases != sorted(phases):
            problems.append(f"{where}: actions not listed phase by phase")
        delays = [a for a in row.actions if a in DELAY_ACTIONS]
        if row.dest is _S.BACKOFF and len(delays) != 1:
            problems.append(f"{where}: a move into backoff needs one of {DELAY_ACTIONS}")
        if row.dest is not _S.BACKOFF and delays:
            problems.append(f"{where}: {delays[0]} outside a move into backoff")
        counts = {"first_attempt", "count_attempt"} & set(row.actions)
        if (row.dest is _S.CONNECTING) != bool(counts):
            problems.append(f"{where}: only a move into connecting counts an attempt")
    return problems


_PROBLEMS = check_table()
if _PROBLEMS:  # pragma: no cover - guards the table itself
    raise RuntimeError("ibkr_connection.machine.TABLE: " + "; ".join(_PROBLEMS))

#: A state's value (what the ``transitions`` machine holds) to the state.
_STATE_BY_VALUE = {state.value: state for state in ConnectionState}


@dataclass
class _Session:
    """Facts about the current session (or the attempt building it), noted by rows."""

    broken_farms: set[str] = field(default_factory=set)
    server_link_broken: bool = False
    link_down: bool = False


class _Model:
    """What ``transitions`` drives: it holds the current state's value.

    A plain string: transitions would otherwise go through Enum's slow
    ``name`` property on every lookup. Triggers and ``is_*`` helpers that
    transitions binds land here, never on :class:`ConnectionMachine`.
    """

    state: str


class ConnectionMachine:
    """The connection state machine: feed it inputs, it asks effects to act.

    Every input goes through ``transitions``: the rows of :data:`TABLE` are
    its transitions, each row's actions its callbacks (``prepare`` for the
    notes, ``before`` and ``after`` for the rest).

    Args:
        effects: the port through which actions are performed.
        clock: the injected clock (only ``monotonic`` and ``wall`` are read).
        port: the gateway's API port for the first attempt.
        client_ids: the client id to use, then the fallbacks for 326, in order.
        policy: backoff, restore patience, reset windows.
        record_journal: keep every handled input in :attr:`journal` (the
            manager turns it on only when it writes a journal, and drains it).
        transcript_limit: the transcript keeps at most this many of the most
            recent transitions (None: all), so a bot running for months does
            not grow without limit.

    Raises:
        UsageError: if no client id is given.
    """

    def __init__(
        self,
        effects: Effects,
        clock: Clock,
        *,
        port: int,
        client_ids: Sequence[int],
        policy: RecoveryPolicy | None = None,
        record_journal: bool = True,
        transcript_limit: int | None = 10_000,
    ) -> None:
        if not client_ids:
            raise UsageError("at least one client id is required")
        self._effects = effects
        self._clock = clock
        self.policy = policy or RecoveryPolicy()
        self._rng = random.Random(self.policy.seed)
        self.port = port
        self.client_ids = tuple(client_ids)
        self._client_index = 0
        self._same_id_failures = 0
        self.attempt = 0
        self._failures = 0
        self._session = _Session()
        self._retry_delay = 0.0
        self.transcript: list[Transition] = []
        self.journal: list[JournalEntry] = []
        self.record_journal = record_journal
        self.transcript_limit = transcript_limit
        #: The table row that handled the last input (for tests and logs).
        self.last_row: Row | None = None
        self._listeners: list[Callable[[Transition], None]] = []
        self._model = _Model()
        fsm = Machine(
            model=self._model,
            states=[state.value for state in ConnectionState],
            initial=ConnectionState.DISCONNECTED.value,
            transitions=self._specs(),
            auto_transitions=False,
            queued=True,
            send_event=True,
            ignore_invalid_triggers=False,
        )
        for state in ConnectionState:
            entry = getattr(self, f"_enter_{state.value}", None)
            if entry is not None:
                fsm.get_state(state.value).add_callback("enter", entry)
            leave = getattr(self, f"_exit_{state.value}", None)
            if leave is not None:
                fsm.get_state(state.value).add_callback("exit", leave)
        #: Each input's ``transitions`` event, by the input's value.
        self._events = {kind.value: fsm.events[kind.value] for kind in InputKind}

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return _STATE_BY_VALUE[self._model.state]

    # -- public ------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """The client id the next (or current) attempt uses."""
        return self.client_ids[self._client_index]

    @property
    def broken_farms(self) -> frozenset[str]:
        """The data farms noted as broken in this session."""
        return frozenset(self._session.broken_farms)

    def add_listener(self, listener: Callable[[Transition], None]) -> None:
        """Call ``listener`` after every change of state."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Transition], None]) -> None:
        """Stop calling ``listener``."""
        self._listeners.remove(listener)

    def handle(self, inp: Input) -> ConnectionState:
        """Feed one input; return the state once it (and what it queued) ran.

        Args:
            inp: the input.

        Returns:
            The state after the input was processed.

        Raises:
            UsageError: if ``inp`` is not an :class:`Input`.
        """
        if not isinstance(inp, Input) or not isinstance(inp.kind, InputKind):
            raise UsageError(f"not a machine input: {inp!r}")
        self._events[inp.kind._value_].trigger(self._model, inp=inp)
        return _STATE_BY_VALUE[self._model.state]

    def fire(self, kind: InputKind, message: str = "", **fields: Any) -> ConnectionState:
        """Shorthand for ``handle(Input(kind, message=message, **fields))``."""
        return self.handle(Input(kind, message=message, **fields))

    # -- derived from the table ---------------------------------------------------

    def _specs(self) -> list[dict[str, Any]]:
        """The table as ``transitions`` transitions; actions become callbacks."""
        specs = []
        tried: set[tuple[ConnectionState, InputKind]] = set()
        for row in TABLE:
            def callbacks(phase: Phase, row: Row = row) -> list[Callable[[EventData], None]]:
                return [getattr(self, f"_do_{name}") for name in row.actions_in(phase)]

            # The notes are the same on every row of a (state, input): noting
            # them before the first row's guard is enough.
            first = (row.source, row.input) not in tried
            tried.add((row.source, row.input))
            spec: dict[str, Any] = {
                "trigger": row.input.value,
                "source": row.source.value,
                "dest": None if row.dest is None else row.dest.value,
                "prepare": callbacks(Phase.NOTE) if first else [],
                "before": [*callbacks(Phase.BEFORE), partial(self._record, row)],
                "after": callbacks(Phase.AFTER)
                + ([self._notify] if row.dest is not None else []),
            }
            if row.guard is not None:
                name = row.guard.lstrip("!")
                spec["unless" if row.guard.startswith("!") else "conditions"] = [
                    getattr(self, f"_guard_{name}")
                ]
            specs.append(spec)
        return specs

    # -- guards ---------------------------------------------------------------------

    def _guard_retries_left(self, event: EventData) -> bool:
        return not self.policy.backoff.exhausted(self.attempt)

    def _guard_farms_broken(self, event: EventData) -> bool:
        return bool(self._session.broken_farms) or self._session.server_link_broken

    def _guard_link_down(self, event: EventData) -> bool:
        return self._session.link_down

    # -- recording --------------------------------------------------------------------

    def _record(self, row: Row, event: EventData) -> None:
        """Journal the input and, for a move, record and log the transition."""
        inp: Input = event.kwargs["inp"]
        self.last_row = row
        now = self._clock.monotonic()
        if self.record_journal:
            dest = row.dest if row.dest is not None else self.state
            self.journal.append(JournalEntry(now, inp, dest))
        if row.dest is None:
            # Farm notices take this path at every connect: build nothing
            # unless the line is wanted.
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s in %s: %s%s", inp.kind.value, self._model.state,
                             "ignored, " if row.ignored else "", row.note)
            return
        cause = inp.message or row.note
        delay = self._retry_delay if row.dest is ConnectionState.BACKOFF else None
        transition = Transition(
            source=self.state, dest=row.dest, trigger=inp.kind, at=now,
            cause=cause, code=inp.code, attempt=self.attempt, delay=delay,
        )
        self.transcript.append(transition)
        limit = self.transcript_limit
        if limit is not None and len(self.transcript) > limit:
            # Trim in chunks so the cost per transition stays constant.
            del self.transcript[: len(self.transcript) - limit // 2]
        if not logger.isEnabledFor(logging.INFO):
            return
        logger.info(
            "connection %s -> %s on %s%s (attempt %d%s): %s",
            transition.source.value, transition.dest.value, transition.trigger.value,
            f" [{inp.code}]" if inp.code is not None else "",
            transition.attempt,
            f", retry in {delay:.3f}s" if delay is not None else "",
            cause,
            extra={"ibkr": transition.to_json()},
        )

    def _notify(self, event: EventData) -> None:
        """Tell the listeners about the transition just made (after its actions)."""
        transition = self.transcript[-1]
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                logger.exception("state change listener %r failed", listener)

    def _effect(self, name: str, *args: Any) -> None:
        try:
            getattr(self._effects, name)(*args)
        except Exception:
            logger.exception("effect %s failed (effects must not raise)", name)

    # -- actions named in the table: notes ----------------------------------------------

    def _do_note_farm_broken(self, event: EventData) -> None:
        farm = event.kwargs["inp"].farm
        if farm:
            self._session.broken_farms.add(farm)

    def _do_note_farm_ok(self, event: EventData) -> None:
        farm = event.kwargs["inp"].farm
        if farm:
            self._session.broken_farms.discard(farm)

    def _do_note_server_link_broken(self, event: EventData) -> None:
        self._session.server_link_broken = True

    def _do_note_link_lost(self, event: EventData) -> None:
        self._session.link_down = True

    def _do_note_link_restored(self, event: EventData) -> None:
        self._session.link_down = False
        self._session.server_link_broken = False

    def _do_note_port(self, event: EventData) -> None:
        port = event.kwargs["inp"].port
        if port is None:
            return
        if port != self.port:
            logger.warning("API port reset: next attempt uses port %d (was %d)", port, self.port)
        self.port = port

    # -- actions named in the table: attempts and delays ----------------------------------

    def _do_first_attempt(self, event: EventData) -> None:
        self._reset_counters()
        self.attempt = 1

    def _do_count_attempt(self, event: EventData) -> None:
        self.attempt += 1

    def _do_draw_delay(self, event: EventData) -> None:
        self._draw(costly=event.kwargs["inp"].costly)

    def _do_draw_costly_delay(self, event: EventData) -> None:
        self._draw(costly=True)

    def _draw(self, costly: bool) -> None:
        self._failures += 1
        self._retry_delay = self.policy.backoff.delay(self._failures, costly, self._rng)

    def _do_retry_at_once(self, event: EventData) -> None:
        self._retry_delay = 0.0

    def _do_reset_backoff(self, event: EventData) -> None:
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.attempt = 0
        self._failures = 0
        self._same_id_failures = 0

    def _do_next_client_id(self, event: EventData) -> None:
        self._same_id_failures += 1
        if self._same_id_failures <= self.policy.same_client_id_retries:
            logger.warning("client id %d in use: retrying the same id", self.client_id)
            return
        self._same_id_failures = 0
        if len(self.client_ids) == 1:
            logger.warning("client id %d in use and no fallback ids configured", self.client_id)
            return
        old = self.client_id
        self._client_index = (self._client_index + 1) % len(self.client_ids)
        logger.warning("client id %d in use: falling back to client id %d", old, self.client_id)

    # -- actions named in the table: effects -----------------------------------------------

    def _do_select_account(self, event: EventData) -> None:
        self._effect("select_account")

    def _do_restore_subscriptions(self, event: EventData) -> None:
        self._effect("restore_subscriptions")

    def _do_start_heartbeat(self, event: EventData) -> None:
        self._effect("start_heartbeat")

    # -- entry and exit actions -------------------------------------------------------

    def _enter_disconnected(self, event: EventData) -> None:
        self._stop_everything()

    def _enter_failed(self, event: EventData) -> None:
        self._stop_everything()

    def _stop_everything(self) -> None:
        self._effect("cancel_retry")
        self._effect("cancel_restore_timer")
        self._effect("stop_heartbeat")
        self._effect("tear_down")

    def _enter_connecting(self, event: EventData) -> None:
        self._session = _Session()
        self._effect("start_attempt", self.attempt, self.client_id, self.port)

    def _enter_backoff(self, event: EventData) -> None:
        self._effect("stop_heartbeat")
        self._effect("tear_down")
        self._effect("schedule_retry", self._retry_delay)

    def _exit_backoff(self, event: EventData) -> None:
        self._effect("cancel_retry")

    def _enter_lost(self, event: EventData) -> None:
        policy = self.policy
        if policy.in_reset_window(self._clock.wall()):
            timeout = policy.maintenance_restore_timeout
            logger.warning(
                "TWS lost IB inside a scheduled reset window: expected maintenance, "
                "waiting up to %.0fs for it to restore", timeout,
            )
        else:
            timeout = policy.restore_timeout
            logger.warning("TWS lost IB: waiting up to %.0fs for it to restore", timeout)
        self._effect("start_restore_timer", timeout)

    def _exit_lost(self, event: EventData) -> None:
        self._effect("cancel_restore_timer")


__all__ = [
    "ACTIONS",
    "DELAY_ACTIONS",
    "GUARDS",
    "SESSION_STATES",
    "TABLE",
    "USABLE_STATES",
    "Action",
    "ConnectionMachine",
    "ConnectionState",
    "Effects",
    "Input",
    "InputKind",
    "JournalEntry",
    "Phase",
    "Row",
    "Transition",
    "check_table",
    "outcome",
]
