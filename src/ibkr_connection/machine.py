"""The connection state machine: states, the transition table, and nothing else.

Everything that affects the connection's state lives in this file. The table
:data:`TABLE` is plain data: one :class:`Row` per (state, input[, guard]). The
``transitions`` machine, the diagrams in ``diagrams/`` and the docs table are all
derived from it. The machine is sans-IO: it never touches a socket, a clock or
asyncio. It reads time from an injected :class:`~ibkr_connection.clock.Clock`
and asks an :class:`Effects` port to do things; the asyncio driver
(:class:`~ibkr_connection.manager.ConnectionManager`) performs them and feeds
the results back in as :class:`~ibkr_connection.inputs.Input`.

The table is total: every (state, input) pair has a declared outcome, either a
move, a stay with an action, or an ignore with a logged reason. IB can send any
code at any time, so no input ever raises.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, Protocol

from transitions import EventData, Machine

from ibkr_connection.clock import Clock
from ibkr_connection.errors import UsageError
from ibkr_connection.inputs import Input, InputKind
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
    #: heartbeat, tear the socket down, schedule the retry with the backoff
    #: delay (immediately after a 1300 port reset); exit: cancel the retry.
    BACKOFF = "backoff"
    #: Gave up: attempts exhausted or a fatal error (e.g. unknown account).
    #: Entry: as for ``disconnected``. Only a connect request (to ``connecting``)
    #: or a disconnect (to ``disconnected``) leaves it.
    FAILED = "failed"


#: States in which the API socket is up and a session exists.
SESSION_STATES = (ConnectionState.CONNECTED, ConnectionState.DEGRADED, ConnectionState.LOST)

_S = ConnectionState
_I = InputKind
_ALL_STATES = tuple(ConnectionState)
_NO_SESSION = (_S.DISCONNECTED, _S.BACKOFF, _S.FAILED)
_UP = (_S.CONNECTED, _S.DEGRADED, _S.LOST)


@dataclass(frozen=True)
class Row:
    """One row of the transition table.

    Attributes:
        source: the state the row applies to.
        input: the input it reacts to.
        dest: the next state, or None to stay (no exit or entry actions run).
        guard: name of a guard that must hold, ``"!name"`` for its negation,
            or None. Rows of the same (source, input) are tried in order.
        actions: names of :class:`ConnectionMachine` actions run after the move.
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


#: Actions run when an attempt has produced a session.
_SESSION_UP = ("reset_backoff", "select_account", "restore_subscriptions", "start_heartbeat")

#: The transition table. Order matters only among rows of the same
#: (source, input): the first whose guard holds is taken.
TABLE: tuple[Row, ...] = tuple(
    # -- user requests ---------------------------------------------------------
    _rows([_S.DISCONNECTED, _S.FAILED], _I.CONNECT, _S.CONNECTING,
          "the user asked for a connection", actions=())
    + _rows([_S.CONNECTING, _S.CONNECTED, _S.DEGRADED, _S.LOST, _S.BACKOFF], _I.CONNECT, None,
            "a connection is already wanted")
    + _rows([s for s in _ALL_STATES if s is not _S.DISCONNECTED], _I.DISCONNECT,
            _S.DISCONNECTED, "the user asked to disconnect")
    + [Row(_S.DISCONNECTED, _I.DISCONNECT, None, note="already disconnected")]
    # -- attempt results -------------------------------------------------------
    + [
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.LOST, "link_down", _SESSION_UP,
            "session up, but TWS reported 1100 during the attempt"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.DEGRADED, "farms_broken", _SESSION_UP,
            "session up with a broken data farm"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.CONNECTED, None, _SESSION_UP,
            "session up: handshake, startup sync and account check done"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.CONNECTING], _I.ATTEMPT_SUCCEEDED, None,
            "stale result of an attempt that was cancelled")
    + [
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.BACKOFF, "retries_left",
            note="retry after the backoff delay"),
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.FAILED, note="no attempts left"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.CONNECTING], _I.ATTEMPT_FAILED, None,
            "stale result of an attempt that was cancelled")
    + _rows([_S.CONNECTING, _S.CONNECTED, _S.DEGRADED, _S.LOST, _S.BACKOFF], _I.FATAL_ERROR,
            _S.FAILED, "retrying cannot fix this")
    + _rows([_S.DISCONNECTED, _S.FAILED], _I.FATAL_ERROR, None,
            "no connection is wanted; nothing to give up")
    # -- socket and timers -----------------------------------------------------
    + [
        Row(_S.CONNECTING, _I.SOCKET_CLOSED, _S.BACKOFF, "retries_left",
            note="the gateway closed the socket during the attempt"),
        Row(_S.CONNECTING, _I.SOCKET_CLOSED, _S.FAILED, note="no attempts left"),
    ]
    + _rows(_UP, _I.SOCKET_CLOSED, _S.BACKOFF, "the API socket closed: reconnect")
    + _rows(_NO_SESSION, _I.SOCKET_CLOSED, None, "the socket is already down")
    + [Row(_S.BACKOFF, _I.RETRY_DUE, _S.CONNECTING, note="the backoff delay is over")]
    + _rows([s for s in _ALL_STATES if s is not _S.BACKOFF], _I.RETRY_DUE, None,
            "stale retry timer")
    + _rows(_UP, _I.HEARTBEAT_MISSED, _S.BACKOFF,
            "the gateway did not answer the heartbeat: it is hung")
    + _rows([_S.CONNECTING, *_NO_SESSION], _I.HEARTBEAT_MISSED, None, "stale heartbeat")
    + [Row(_S.LOST, _I.RESTORE_TIMEOUT, _S.BACKOFF,
           note="TWS did not restore its link to IB in time: reconnect from scratch")]
    + _rows([s for s in _ALL_STATES if s is not _S.LOST], _I.RESTORE_TIMEOUT, None,
            "stale restore timer")
    # -- IB codes: TWS's link to IB ------------------------------------------------
    + _rows([_S.CONNECTED, _S.DEGRADED], _I.CONNECTIVITY_LOST, _S.LOST,
            "1100: TWS lost IB; wait for it to restore")
    + [
        Row(_S.CONNECTING, _I.CONNECTIVITY_LOST, None, actions=("note_fact",),
            note="remembered: the attempt will end in lost"),
        Row(_S.LOST, _I.CONNECTIVITY_LOST, None, note="already lost"),
    ]
    + _rows(_NO_SESSION, _I.CONNECTIVITY_LOST, None, "no session")
    + [
        Row(_S.LOST, _I.RESTORED_DATA_LOST, _S.DEGRADED, "farms_broken",
            ("restore_subscriptions",), "1101: restored, data lost; a farm is still broken"),
        Row(_S.LOST, _I.RESTORED_DATA_LOST, _S.CONNECTED, None,
            ("restore_subscriptions",), "1101: restored, data lost: re-subscribe"),
        Row(_S.CONNECTED, _I.RESTORED_DATA_LOST, None, None, ("restore_subscriptions",),
            "1101: data lost: re-subscribe"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_LOST, None, "farms_broken", ("restore_subscriptions",),
            "1101: data lost: re-subscribe; a farm is still broken"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_LOST, _S.CONNECTED, None, ("restore_subscriptions",),
            "1101: TWS's server link is back; data lost: re-subscribe"),
        Row(_S.CONNECTING, _I.RESTORED_DATA_LOST, None, actions=("note_fact",),
            note="remembered; the attempt subscribes everything anyway"),
    ]
    + _rows(_NO_SESSION, _I.RESTORED_DATA_LOST, None, "no session")
    + [
        Row(_S.LOST, _I.RESTORED_DATA_KEPT, _S.DEGRADED, "farms_broken",
            note="1102: restored, data kept; a farm is still broken"),
        Row(_S.LOST, _I.RESTORED_DATA_KEPT, _S.CONNECTED,
            note="1102: restored, data kept: nothing to re-subscribe"),
        Row(_S.CONNECTED, _I.RESTORED_DATA_KEPT, None, note="1102: nothing was lost"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_KEPT, None, "farms_broken", ("note_fact",),
            "1102: a farm is still broken"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_KEPT, _S.CONNECTED,
            note="1102: TWS's server link is back"),
        Row(_S.CONNECTING, _I.RESTORED_DATA_KEPT, None, actions=("note_fact",),
            note="remembered: TWS's link to IB is up"),
    ]
    + _rows(_NO_SESSION, _I.RESTORED_DATA_KEPT, None, "no session")
    + [Row(_S.CONNECTED, _I.SERVER_LINK_BROKEN, _S.DEGRADED,
           note="2110: TWS's link to its server is broken")]
    + _rows([_S.CONNECTING, _S.DEGRADED, _S.LOST], _I.SERVER_LINK_BROKEN, None,
            "remembered until 1101/1102", actions=("note_fact",))
    + _rows(_NO_SESSION, _I.SERVER_LINK_BROKEN, None, "no session")
    # -- IB codes: data farms ----------------------------------------------------
    + [Row(_S.CONNECTED, _I.FARM_BROKEN, _S.DEGRADED, note="a data farm is broken")]
    + _rows([_S.CONNECTING, _S.DEGRADED, _S.LOST], _I.FARM_BROKEN, None,
            "farm remembered as broken", actions=("note_fact",))
    + _rows(_NO_SESSION, _I.FARM_BROKEN, None, "no session")
    + [
        Row(_S.DEGRADED, _I.FARM_OK, None, "farms_broken", ("note_fact",),
            "farm OK; another is still broken"),
        Row(_S.DEGRADED, _I.FARM_OK, _S.CONNECTED, note="every broken farm is OK again"),
        Row(_S.CONNECTED, _I.FARM_OK, None, note="farm OK notices are routine at connect"),
    ]
    + _rows([_S.CONNECTING, _S.LOST], _I.FARM_OK, None, "farm remembered as OK",
            actions=("note_fact",))
    + _rows(_NO_SESSION, _I.FARM_OK, None, "no session")
    # -- IB codes: the API itself --------------------------------------------------
    + _rows([_S.CONNECTING, *_UP], _I.PORT_RESET, _S.BACKOFF,
            "1300: the API port was reset; reconnect at once on the new port")
    + _rows(_NO_SESSION, _I.PORT_RESET, None, "the next attempt uses the new port",
            actions=("note_fact",))
    + [
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.BACKOFF, "retries_left",
            ("next_client_id",), "326: client id in use; retry after a delay"),
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.FAILED, note="326 and no attempts left"),
    ]
    + _rows(_UP, _I.CLIENT_ID_IN_USE, None,
            "326 refers to a connect attempt; this session is up")
    + _rows(_NO_SESSION, _I.CLIENT_ID_IN_USE, None, "no attempt is running")
    + [
        Row(_S.CONNECTING, _I.NOT_CONNECTED, _S.BACKOFF, "retries_left",
            note="502/504 during the attempt"),
        Row(_S.CONNECTING, _I.NOT_CONNECTED, _S.FAILED, note="502/504 and no attempts left"),
    ]
    + _rows(_UP, _I.NOT_CONNECTED, _S.BACKOFF,
            "502/504: the API says it is not connected; reconnect")
    + _rows(_NO_SESSION, _I.NOT_CONNECTED, None, "the socket is already down")
)


def _quiet_rows() -> dict[tuple[str, str], Row]:
    """The (state, input) pairs whose only row neither moves, guards nor acts.

    Keyed by the members' values: plain strings hash and compare at C speed.
    """
    quiet = {}
    for state in ConnectionState:
        for kind in InputKind:
            rows = [r for r in TABLE if r.source is state and r.input is kind]
            if (len(rows) == 1 and rows[0].dest is None and rows[0].guard is None
                    and set(rows[0].actions) <= {"note_fact"}):
                quiet[(state.value, kind.value)] = rows[0]
    return quiet


_QUIET_ROWS = _quiet_rows()

#: A state's value (what the ``transitions`` machine holds) to the state.
_STATE_BY_VALUE = {state.value: state for state in ConnectionState}


@dataclass(frozen=True)
class _Event:
    """The part of transitions' EventData that the recording callback reads."""

    kwargs: dict[str, Any]


class Effects(Protocol):
    """What the machine's actions ask the outside world to do.

    The driver implements it. Every method starts work and returns at once;
    results come back as inputs. Implementations must not raise.
    """

    def start_attempt(self, attempt: int, client_id: int, port: int) -> None:
        """Start connection attempt number ``attempt``."""

    def schedule_retry(self, delay: float) -> None:
        """Feed ``retry_due`` after ``delay`` seconds."""

    def cancel_retry(self) -> None:
        """Cancel a scheduled retry, if any."""

    def start_restore_timer(self, timeout: float) -> None:
        """Feed ``restore_timeout`` after ``timeout`` seconds."""

    def cancel_restore_timer(self) -> None:
        """Cancel the restore timer, if any."""

    def select_account(self) -> None:
        """Apply the account chosen during the attempt (account updates etc.)."""

    def restore_subscriptions(self) -> None:
        """(Re-)issue every subscription the bot registered."""

    def start_heartbeat(self) -> None:
        """Start probing the gateway when it is quiet."""

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat."""

    def tear_down(self) -> None:
        """Cancel the running attempt and close the socket."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state, as recorded in the transcript.

    Attributes:
        source: the state before.
        dest: the state after.
        trigger: the input that caused it.
        at: the injected clock's monotonic reading.
        cause: a human-readable cause (IB's message, the failure, the note).
        code: the IB code behind it, if any.
        attempt: the attempt number at the time.
        delay: for a move to ``backoff``, the delay before the next attempt.
    """

    source: ConnectionState
    dest: ConnectionState
    trigger: InputKind
    at: float
    cause: str = ""
    code: int | None = None
    attempt: int = 0
    delay: float | None = None

    def __str__(self) -> str:
        """``connected -> lost (connectivity_lost, 1100)``: how a bot prints it."""
        why = self.trigger.value if self.code is None else f"{self.trigger.value}, {self.code}"
        return f"{self.source.value} -> {self.dest.value} ({why})"

    def to_json(self) -> dict[str, object]:
        """Return the transition as a JSON-ready dict."""
        return {
            "source": self.source.value,
            "dest": self.dest.value,
            "trigger": self.trigger.value,
            "at": round(self.at, 6),
            "cause": self.cause,
            "code": self.code,
            "attempt": self.attempt,
            "delay": None if self.delay is None else round(self.delay, 6),
        }


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One handled input: what came in, when, and the state it left."""

    at: float
    input: Input
    state: ConnectionState


@dataclass
class _Session:
    """Facts about the current session, learnt from IB codes."""

    broken_farms: set[str] = field(default_factory=set)
    server_link_broken: bool = False
    link_down: bool = False


class ConnectionMachine:
    """The connection state machine: feed it inputs, it asks effects to act.

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
        self._last_delay: float | None = None
        #: The ``transitions`` machine's state: the value of a ConnectionState.
        #: Plain strings keep transitions off Enum's slow ``name`` property.
        self.fsm_state: str = ConnectionState.DISCONNECTED.value
        self.transcript: list[Transition] = []
        self.journal: list[JournalEntry] = []
        self._busy = 0
        self.record_journal = record_journal
        self.transcript_limit = transcript_limit
        #: The table row that handled the last input (for tests and logs).
        self.last_row: Row | None = None
        self._listeners: list[Callable[[Transition], None]] = []
        self._fsm = Machine(
            model=self,
            states=[state.value for state in ConnectionState],
            initial=ConnectionState.DISCONNECTED.value,
            transitions=[self._spec(row) for row in TABLE],
            auto_transitions=False,
            queued=True,
            send_event=True,
            ignore_invalid_triggers=False,
            model_attribute="fsm_state",
        )
        for state in ConnectionState:
            entry = getattr(self, f"_enter_{state.value}", None)
            if entry is not None:
                self._fsm.get_state(state.value).add_callback("enter", entry)
            leave = getattr(self, f"_exit_{state.value}", None)
            if leave is not None:
                self._fsm.get_state(state.value).add_callback("exit", leave)

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return _STATE_BY_VALUE[self.fsm_state]

    # -- public ------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """The client id the next (or current) attempt uses."""
        return self.client_ids[self._client_index]

    @property
    def broken_farms(self) -> frozenset[str]:
        """The data farms currently reported broken."""
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
        self._absorb(inp)
        trigger = inp.kind._value_
        quiet = _QUIET_ROWS.get((self.fsm_state, trigger))
        if quiet is not None and not self._busy:
            # A row that neither moves, guards nor acts (an ignore, or a fact
            # already absorbed): same outcome, without a pass through
            # transitions. Farm notices arrive at every connect.
            self._record(quiet, _Event({"inp": inp}))
            return self.state
        self._busy += 1
        try:
            self.trigger(trigger, inp=inp)  # type: ignore[attr-defined]
        finally:
            self._busy -= 1
        return self.state

    def fire(self, kind: InputKind, message: str = "", **fields: Any) -> ConnectionState:
        """Shorthand for ``handle(Input(kind, message=message, **fields))``."""
        return self.handle(Input(kind, message=message, **fields))

    # -- derived from the table ---------------------------------------------------

    def _spec(self, row: Row) -> dict[str, Any]:
        actions = tuple(getattr(self, f"_do_{action}") for action in row.actions)
        spec: dict[str, Any] = {
            "trigger": row.input.value,
            "source": row.source.value,
            "dest": None if row.dest is None else row.dest.value,
            "before": [partial(self._record, row)],
            "after": [partial(self._act, row, actions)],
        }
        if row.guard is not None:
            name = row.guard.lstrip("!")
            spec["unless" if row.guard.startswith("!") else "conditions"] = [
                getattr(self, f"_guard_{name}")
            ]
        return spec

    # -- guards ---------------------------------------------------------------------

    def _guard_retries_left(self, event: EventData) -> bool:
        return not self.policy.backoff.exhausted(self.attempt)

    def _guard_farms_broken(self, event: EventData) -> bool:
        return bool(self._session.broken_farms) or self._session.server_link_broken

    def _guard_link_down(self, event: EventData) -> bool:
        return self._session.link_down

    # -- facts, recorded before the table is consulted --------------------------------

    def _absorb(self, inp: Input) -> None:
        session = self._session
        kind = inp.kind
        if kind is InputKind.FARM_BROKEN and inp.farm:
            session.broken_farms.add(inp.farm)
        elif kind is InputKind.FARM_OK and inp.farm:
            session.broken_farms.discard(inp.farm)
        elif kind is InputKind.SERVER_LINK_BROKEN:
            session.server_link_broken = True
        elif kind is InputKind.CONNECTIVITY_LOST:
            session.link_down = True
        elif kind in (InputKind.RESTORED_DATA_LOST, InputKind.RESTORED_DATA_KEPT):
            session.link_down = False
            session.server_link_broken = False
        elif kind is InputKind.PORT_RESET and inp.port is not None:
            if inp.port != self.port:
                logger.warning("API port reset: next attempt uses port %d (was %d)",
                               inp.port, self.port)
            self.port = inp.port

    # -- transition callbacks -----------------------------------------------------

    def _record(self, row: Row, event: EventData | _Event) -> None:
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
                logger.debug("%s in %s: %s%s", inp.kind.value, self.fsm_state,
                             "ignored, " if row.ignored else "", row.note)
            return
        cause = inp.message or row.note
        if row.dest is ConnectionState.CONNECTING:
            # The attempt counter moves when the attempt starts, so it is
            # visible in the transition that starts it. A user's connect
            # starts a fresh series.
            if inp.kind is InputKind.CONNECT:
                self._do_reset_backoff()
            self.attempt += 1
        delay = None
        if row.dest is ConnectionState.BACKOFF:
            delay = self._next_delay(inp)
        self._last_delay = delay
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

    def _act(self, row: Row, actions: tuple[Callable[[], None], ...], event: EventData) -> None:
        for action in actions:
            action()
        if row.dest is not None and self.transcript:
            transition = self.transcript[-1]
            for listener in list(self._listeners):
                try:
                    listener(transition)
                except Exception:
                    logger.exception("state change listener %r failed", listener)

    def _next_delay(self, inp: Input) -> float:
        if inp.kind is InputKind.PORT_RESET:
            return 0.0
        self._failures += 1
        costly = inp.costly or inp.kind in (
            InputKind.CLIENT_ID_IN_USE, InputKind.HEARTBEAT_MISSED, InputKind.RESTORE_TIMEOUT,
        )
        return self.policy.backoff.delay(self._failures, costly, self._rng)

    def _effect(self, name: str, *args: Any) -> None:
        try:
            getattr(self._effects, name)(*args)
        except Exception:
            logger.exception("effect %s failed (effects must not raise)", name)

    # -- actions named in the table ---------------------------------------------------

    def _do_reset_backoff(self) -> None:
        self.attempt = 0
        self._failures = 0
        self._same_id_failures = 0

    def _do_select_account(self) -> None:
        self._effect("select_account")

    def _do_restore_subscriptions(self) -> None:
        self._effect("restore_subscriptions")

    def _do_start_heartbeat(self) -> None:
        self._effect("start_heartbeat")

    def _do_note_fact(self) -> None:
        """The fact was recorded by ``_absorb``; the row only documents it."""

    def _do_next_client_id(self) -> None:
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
        self._effect("schedule_retry", self._last_delay or 0.0)

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


def outcome(state: ConnectionState, kind: InputKind) -> list[Row]:
    """Return the rows declared for (state, input), in the order they are tried."""
    return [row for row in TABLE if row.source is state and row.input is kind]
