"""The connection state machine: the table of :mod:`ibkr_connection.table`, run by ``transitions``.

:class:`ConnectionMachine` builds a ``transitions`` machine whose transitions
are the rows of :data:`~ibkr_connection.table.TABLE` and whose callbacks are
the rows' actions (:data:`~ibkr_connection.table.ACTIONS`): notes as
``prepare`` callbacks, counting and drawing delays as ``before`` callbacks,
effects as ``after`` callbacks. Every input goes through ``transitions``. The
machine records a transcript of the changes of state and a journal of the
inputs, and tells its listeners about each change.

The machine is sans-IO: it never touches a socket, a clock or asyncio. It reads
time from an injected :class:`~ibkr_connection.clock.Clock` and asks an
:class:`~ibkr_connection.outputs.Effects` port to do things; the asyncio driver
(:mod:`ibkr_connection.driver`, owned by
:class:`~ibkr_connection.manager.ConnectionManager`) performs them and feeds
the results back in as :class:`~ibkr_connection.inputs.Input`.

The machine layer, for reviewers and tools, is importable from here: the
tables and states (re-exported from :mod:`ibkr_connection.table`),
:class:`ConnectionMachine`, :class:`~ibkr_connection.inputs.Input` and
:class:`~ibkr_connection.inputs.InputKind`, :class:`~ibkr_connection.outputs.Effects`,
:class:`~ibkr_connection.outputs.Transition` and
:class:`~ibkr_connection.outputs.JournalEntry`;
:func:`ibkr_connection.journal.replay_journal` re-feeds a journal into it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

from transitions import EventData, Machine
from transitions import Transition as _Transition

from ibkr_connection.clock import Clock
from ibkr_connection.errors import UsageError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.outputs import Effects, JournalEntry, Transition
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import (
    ACTIONS,
    DELAY_ACTIONS,
    GUARDS,
    SESSION_STATES,
    TABLE,
    USABLE_STATES,
    Action,
    ConnectionState,
    Phase,
    Row,
    check_table,
    outcome,
)

if TYPE_CHECKING:
    from transitions.core import Callback

    from ibkr_connection.journal import replay_journal

logger = logging.getLogger(__name__)

# transitions logs every callback at INFO; our own log has one line per
# transition. Quieten it unless the application configured it.
_transitions_logger = logging.getLogger("transitions")
if _transitions_logger.level == logging.NOTSET:
    _transitions_logger.setLevel(logging.WARNING)


#: A state's value (what the ``transitions`` machine holds) to the state.
_STATE_BY_VALUE = {state.value: state for state in ConnectionState}


@dataclass
class _Session:
    """Facts about the current session (or the attempt building it), noted by rows."""

    broken_farms: set[str] = field(default_factory=set)
    server_link_broken: bool = False
    link_lost: bool = False


class _RowTransition(_Transition):
    """A row as a ``transitions`` transition: the same steps, without the DEBUG lines.

    transitions' ``Transition.execute`` writes four DEBUG lines for every row
    it tries, which cost a quarter of a pass even when nothing logs; this is
    its body without them: prepare (the notes), conditions (the guard),
    before, the move (exit, state, entry), after.
    """

    def execute(self, event_data: EventData) -> bool:
        machine = event_data.machine
        machine.callbacks(self.prepare, event_data)
        if not self._eval_conditions(event_data):
            return False
        machine.callbacks(chain(machine.before_state_change, self.before), event_data)
        if self.dest:
            self._change_state(event_data)
        machine.callbacks(chain(self.after, machine.after_state_change), event_data)
        return True


class _TableMachine(Machine):
    """transitions' ``Machine``, running rows as :class:`_RowTransition`, callbacks directly.

    Every callback the machine registers is a callable that takes the
    ``EventData``; transitions' own ``callbacks`` would also resolve each by
    name and log each call at INFO.
    """

    transition_cls = _RowTransition

    def callbacks(self, funcs: Iterable[Callback], event_data: EventData) -> None:
        for func in funcs:
            func(event_data)  # type: ignore[operator]


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
        controller_configured: a controller (IBC, a command) can restart the
            gateway; without one nothing escalates.
        host: the gateway's host, for the log lines that name the endpoint.

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
        controller_configured: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        if not client_ids:
            raise UsageError("at least one client id is required")
        self._effects = effects
        self._clock = clock
        self.policy = policy or RecoveryPolicy()
        self._rng = random.Random(self.policy.seed)
        self.port = port
        self.host = host
        #: A session came up on host:port (and it neither refused a connect nor
        #: was restarted since): silence there is a wedge sign, not a wrong port.
        self.endpoint_proven = False
        #: The "not a TWS API port?" warning was logged in this series.
        self._warned_not_api = False
        self.client_ids = tuple(client_ids)
        self._client_index = 0
        self._same_id_failures = 0
        self.attempt = 0
        self._failures = 0
        self._session = _Session()
        self._retry_delay = 0.0
        self.controller_configured = controller_configured
        #: Consecutive signs of a wedged gateway (see the action note_wedge_sign).
        self.wedge_signs = 0
        #: How many restarts the machine asked for.
        self.restarts = 0
        self._last_restart_at: float | None = None
        #: The transition being made, for the listeners (the transcript may
        #: have trimmed it already when its limit is tiny).
        self._made: Transition | None = None
        self.transcript: list[Transition] = []
        self.journal: list[JournalEntry] = []
        self.record_journal = record_journal
        self.transcript_limit = transcript_limit
        #: The table row that handled the last input (for tests and logs).
        self.last_row: Row | None = None
        self._listeners: list[Callable[[Transition], None]] = []
        self._model = _Model()
        fsm = _TableMachine(
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

    def _guard_link_lost(self, event: EventData) -> bool:
        return self._session.link_lost

    def _guard_controller_configured(self, event: EventData) -> bool:
        return self.controller_configured

    def _cooldown_over(self) -> bool:
        last = self._last_restart_at
        return last is None or (
            self._clock.monotonic() - last >= self.policy.restart_cooldown)

    def _guard_wedged(self, event: EventData) -> bool:
        return (self.controller_configured and self.endpoint_proven
                and self.wedge_signs >= self.policy.restart_after and self._cooldown_over())

    def _guard_silent_unproven(self, event: EventData) -> bool:
        return (event.kwargs["inp"].costly and not self.endpoint_proven
                and not self._warned_not_api)

    def _guard_link_stuck(self, event: EventData) -> bool:
        return (self.controller_configured and self._cooldown_over()
                and not self.policy.in_reset_window(self._clock.wall()))

    # -- recording --------------------------------------------------------------------

    def _record(self, row: Row, event: EventData) -> None:
        """Journal the input and, for a move, record and log the transition."""
        inp: Input = event.kwargs["inp"]
        self.last_row = row
        now = self._clock.monotonic()
        source = _STATE_BY_VALUE[self._model.state]
        if self.record_journal:
            self.journal.append(JournalEntry(now, inp, row.dest or source))
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
            source=source, dest=row.dest, trigger=inp.kind, at=now,
            cause=cause, code=inp.code, attempt=self.attempt, delay=delay,
        )
        self._made = transition
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
        transition = self._made
        if transition is None:  # pragma: no cover - _record runs before every move
            return
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
        self._session.link_lost = True

    def _do_note_link_restored(self, event: EventData) -> None:
        self._session.link_lost = False
        self._session.server_link_broken = False

    def _do_note_wedge_sign(self, event: EventData) -> None:
        inp: Input = event.kwargs["inp"]
        if inp.kind is InputKind.HEARTBEAT_MISSED or inp.costly:
            self.wedge_signs += 1
        else:
            # Refused: the gateway is down (restarting already), not wedged;
            # the one that comes up must give a session before it counts as
            # proven (it may sit at its login, 2FA pending, for minutes).
            self.wedge_signs = 0
            self.endpoint_proven = False

    def _do_note_port(self, event: EventData) -> None:
        port = event.kwargs["inp"].port
        if port is None:
            return
        if port != self.port:
            logger.warning("API port reset: next attempt uses port %d (was %d)", port, self.port)
            # A new endpoint: no session was had on it yet.
            self.endpoint_proven = False
        self.port = port

    # -- actions named in the table: attempts and delays ----------------------------------

    def _do_first_attempt(self, event: EventData) -> None:
        self._reset_counters()
        self.attempt = 1

    def _do_count_attempt(self, event: EventData) -> None:
        self.attempt += 1

    def _do_warn_not_an_api_port(self, event: EventData) -> None:
        self._warned_not_api = True
        logger.warning(
            "%s:%d accepts connections but did not answer the API handshake: not a TWS API "
            "port? (%s) The gateway is not restarted: this manager never had a session on "
            "%s:%d. Check the port (TWS 7497/7496, IB Gateway 4002/4001) and that the API "
            "is enabled; a gateway still logging in (2FA) answers once logged in.",
            self.host, self.port, event.kwargs["inp"].message or "no handshake",
            self.host, self.port)

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
        self._warned_not_api = False
        self.attempt = 0
        self._failures = 0
        self._same_id_failures = 0

    def _do_forget_wedge_signs(self, event: EventData) -> None:
        self.wedge_signs = 0

    def _do_note_endpoint_proven(self, event: EventData) -> None:
        self.endpoint_proven = True

    def _do_forget_endpoint(self, event: EventData) -> None:
        self.endpoint_proven = False

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

    def _do_issue_new_subscriptions(self, event: EventData) -> None:
        self._effect("issue_new_subscriptions")

    def _do_start_heartbeat(self, event: EventData) -> None:
        self._effect("start_heartbeat")

    def _do_probe_gateway(self, event: EventData) -> None:
        self._effect("probe_gateway", self.port, self.policy.backoff.max_delay)

    def _do_reconnect_data(self, event: EventData) -> None:
        logger.warning("a data farm has been broken for %.0fs (%s): asking the controller "
                       "to reconnect the data farms", self.policy.farm_reconnect_after,
                       ", ".join(sorted(self._session.broken_farms)) or "server link")
        self._effect("send_reconnect_data")

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

    def _enter_restarting(self, event: EventData) -> None:
        self.restarts += 1
        self._last_restart_at = self._clock.monotonic()
        signs, self.wedge_signs = self.wedge_signs, 0
        row = self.last_row
        logger.warning(
            "restarting the gateway through its controller (restart %d): %s "
            "(%d consecutive wedge sign(s)); waiting up to %.0fs for it to come back",
            self.restarts, row.note if row is not None else "", signs,
            self.policy.restart_wait,
        )
        self._effect("stop_heartbeat")
        self._effect("tear_down")
        self._effect("start_restart_timer", self.policy.restart_wait)
        self._effect("send_restart")

    def _exit_restarting(self, event: EventData) -> None:
        self._effect("cancel_restart_timer")
        self._effect("cancel_probe")

    def _enter_degraded(self, event: EventData) -> None:
        if self.controller_configured:
            self._effect("start_farm_timer", self.policy.farm_reconnect_after)

    def _exit_degraded(self, event: EventData) -> None:
        if self.controller_configured:
            self._effect("cancel_farm_timer")

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


def __getattr__(name: str) -> Any:
    """Serve :func:`~ibkr_connection.journal.replay_journal` from here too.

    The journal module builds machines, so it imports this one: importing it
    back at the top would be circular.
    """
    if name == "replay_journal":
        from ibkr_connection.journal import replay_journal

        return replay_journal
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "replay_journal",
]
