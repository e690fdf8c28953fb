"""The connection state machine: the table of :mod:`ibkr_connection.table`, run by ``transitions``.

:class:`ConnectionMachine` runs on a ``transitions`` machine whose transitions
are the rows of :data:`~ibkr_connection.table.TABLE` and whose callbacks are
the rows' actions (:data:`~ibkr_connection.table.ACTIONS`): notes as
``prepare`` callbacks, counting and drawing delays as ``before`` callbacks,
the rest as ``after`` callbacks; the states' entry and exit actions
(:data:`~ibkr_connection.table.ENTRY`, :data:`~ibkr_connection.table.EXIT`)
as the states' ``on_enter`` and ``on_exit`` callbacks. Every callback and
guard is a function registered from an explicit name -> function table
(:data:`ACTION_FUNCTIONS`, :data:`GUARD_FUNCTIONS`; a row guarded by several
terms gets one ``conditions`` callable asking them in turn), through
``transitions``' public API only. That machine is built once and shared: each
:class:`ConnectionMachine` adds its own model to it (``add_model``) and passes
itself to ``trigger``, so every callback and guard receives the connection
machine and the input.
A stay (a row that is alone for its state and input, unguarded, with no
next state and only notes: three farm notices come with every connect) has
nothing for ``transitions`` to do but call those notes and the record:
:meth:`~ConnectionMachine.handle` calls them itself.

The machine is sans-IO and calls nothing outside itself: :meth:`~ConnectionMachine.handle`
returns a :class:`~ibkr_connection.outputs.Step`, the transition made and the
effects asked for as plain data; the asyncio driver
(:mod:`ibkr_connection.driver`, owned by
:class:`~ibkr_connection.manager.ConnectionManager`) carries them out after the
step and feeds what comes of them back in, queued: ``handle`` is never entered
while another ``handle`` runs. Time is read from an injected
:class:`~ibkr_connection.clock.Clock`.
"""

from __future__ import annotations

import logging
import math
import random
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from transitions import Machine, State

from ibkr_connection.clock import Clock
from ibkr_connection.config import mask_account
from ibkr_connection.errors import ReentrantHandleError, UsageError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.outputs import Effect, JournalEntry, Step, Transcript, Transition
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import ACTIONS as _ACTIONS
from ibkr_connection.table import (
    ENTRY,
    EXIT,
    TABLE,
    ConnectionState,
    Phase,
    Row,
    StateAction,
    guard_terms,
)

logger = logging.getLogger(__name__)

# transitions logs every callback at INFO/DEBUG; our own log has one line per
# transition. Quieten it unless the application configured it.
_transitions_logger = logging.getLogger("transitions")
if _transitions_logger.level == logging.NOTSET:
    _transitions_logger.setLevel(logging.WARNING)


#: A state's value (what the ``transitions`` machine holds) to the state.
_STATE_BY_VALUE = {state.value: state for state in ConnectionState}
#: The inputs whose transitions _quiet_retry may quiet.
_RETRY_INPUTS = frozenset((InputKind.RETRY_DUE, InputKind.ATTEMPT_FAILED))
#: Seconds between the INFO lines of a refused series (see _quiet_retry).
_SERIES_LINE_EVERY = 60.0


@dataclass
class _Session:
    """Facts about the current session (or the attempt building it), noted by rows."""

    broken_farms: set[str] = field(default_factory=set)
    server_link_broken: bool = False
    link_lost: bool = False


class _Model:
    """What ``transitions`` drives: it holds the current state's value.

    A plain string: transitions would otherwise go through Enum's slow
    ``name`` property on every lookup. The state (a slot) is all it keeps: the
    conveniences transitions binds to each model it is given (a method per
    trigger, ``may_<trigger>``, ``is_<state>``) land in its ``__dict__``,
    which :meth:`drop_conveniences` empties once the model is added.
    """

    __slots__ = ("__dict__", "__weakref__", "state")
    state: str

    def drop_conveniences(self) -> None:
        """Forget what ``add_model`` bound; keep the state.

        ~60 conveniences (a partial over a bound method and its argument tuple
        each, ~180 objects the garbage collector tracks): handle() calls the
        events itself and uses none of them. Kept, they lived as long as the
        machine, and a bot's manager paid a young-generation collection for
        about every four of them being built (issue 19: start()'s time).
        Dropped, they die at once. The state is a slot, not in the
        ``__dict__``, so setting it (each move) calls no Python method.
        """
        self.__dict__.clear()


class ConnectionMachine:
    """The connection state machine: feed it inputs, it returns what to do.

    Every input that moves or asks for an effect goes through ``transitions``:
    the rows of the table are its transitions, each row's actions its
    callbacks, the states' entry and exit actions the states' callbacks. A stay
    (the one row of its state and input, unguarded, notes only) is run without
    it, as ``transitions`` would run it: its notes, then its record. The
    actions note facts, count, draw delays and append effects to the step
    being built; nothing is called outside.

    Args:
        clock: the injected clock (only ``monotonic`` and ``wall`` are read).
        port: the gateway's API port for the first attempt.
        client_ids: the client id to use, then the fallbacks for 326, in order.
        policy: backoff, restore patience, reset windows.
        record_journal: keep every handled input, with its state and effects,
            in :attr:`journal` (the manager turns it on only when it writes a
            journal, and drains it).
        transcript_limit: the transcript keeps at most this many of the most
            recent transitions (None: all), so a bot running for months does
            not grow without limit.
        controller_configured: a controller (IBC, a command) can restart the
            gateway; without one nothing escalates.
        host: the gateway's host, for the log lines that name the endpoint.
        table: the rows to run (:data:`~ibkr_connection.table.TABLE`; a test
            may pass a changed table).
        entry_actions: the states' entry actions (:data:`~ibkr_connection.table.ENTRY`).
        exit_actions: the states' exit actions (:data:`~ibkr_connection.table.EXIT`).
        account: the configured account ('' for none); the table checks it
            against the accounts a successful attempt reports.
        account_fallback: with no account and several managed ones, "first"
            takes the first, "error" refuses them.
        mask_accounts: mask account ids in the refusal messages.
        fast_stays: run a stay (see :func:`_stay_rows`) without ``transitions``:
            its notes, then its record, as ``transitions`` would call them.
            False: every input through ``transitions`` (the test comparing the
            two paths uses it).

    Raises:
        UsageError: if no client id is given.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        port: int,
        client_ids: Sequence[int],
        policy: RecoveryPolicy | None = None,
        record_journal: bool = True,
        transcript_limit: int | None = 10_000,
        controller_configured: bool = False,
        host: str = "127.0.0.1",
        table: Sequence[Row] = TABLE,
        entry_actions: dict[ConnectionState, tuple[StateAction, ...]] | None = None,
        exit_actions: dict[ConnectionState, tuple[StateAction, ...]] | None = None,
        account: str = "",
        account_fallback: str = "error",
        mask_accounts: bool = True,
        fast_stays: bool = True,
    ) -> None:
        if not client_ids:
            raise UsageError("at least one client id is required")
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
        #: The attempt budget the user's connect gave this series (None: the policy's).
        self._budget: int | None = None
        self._failures = 0
        self._session = _Session()
        self._retry_delay = 0.0
        #: The last delay drawn was the costly schedule's.
        self._retry_costly = False
        #: When a refused series last logged a line at INFO (see _quiet_retry).
        self._series_line_at = -math.inf
        self.controller_configured = controller_configured
        #: The configured account ('' for none), and what to do without one.
        self.account = account
        self.account_fallback = account_fallback
        self.mask_accounts = mask_accounts
        #: The cause a ``before`` action gave the move being made (else the input's).
        self._cause = ""
        #: Consecutive signs of a wedged gateway (see the action note_wedge_sign).
        self.wedge_signs = 0
        #: How many restarts the machine asked for.
        self.restarts = 0
        self._last_restart_at: float | None = None
        #: The transition made by the input being handled.
        self._made: Transition | None = None
        #: The effects asked for by the input being handled, in order.
        self._out: list[Effect] = []
        self._handling = False
        self.transcript = Transcript()
        self.journal: list[JournalEntry] = []
        self.record_journal = record_journal
        self.transcript_limit = transcript_limit
        #: The table row that handled the last input (for tests and logs).
        self.last_row: Row | None = None
        #: The value of the state the last input found (read if handling it raised).
        self.handled_in = ConnectionState.DISCONNECTED.value
        self._model = _Model()
        fsm, events, stays = _shared_machine(
            table, ENTRY if entry_actions is None else entry_actions,
            EXIT if exit_actions is None else exit_actions)
        fsm.add_model(self._model)
        self._model.drop_conveniences()
        # The shared machine holds the model only while this machine lives:
        # nothing of the shared machine refers to this one.
        weakref.finalize(self, fsm.remove_model, self._model).atexit = False
        #: Each input's ``transitions`` event, by the input's value.
        self._events = events
        #: The stays run without ``transitions``, by (state value, input value):
        #: the row and its notes.
        self._stays: dict[tuple[str, str], tuple[Row, tuple[_Callback, ...]]] = (
            stays if fast_stays else {})

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

    def handle(self, inp: Input) -> Step:
        """Feed one input; return what it did and what the driver is to do now.

        Args:
            inp: the input.

        Returns:
            The step: the transition made (or None), the effects in order, the
            state after it.

        Raises:
            UsageError: if ``inp`` is not an :class:`Input`.
            ReentrantHandleError: if called while another input is being handled
                (the shell must queue it and feed it after the step).
        """
        if not isinstance(inp, Input):
            raise UsageError(f"not a machine input: {inp!r}")
        if self._handling:
            raise ReentrantHandleError(
                f"handle({inp.kind.value}) entered while another input is being handled: "
                "queue it and feed it after the current step")
        self._handling = True
        self._made = None
        out: list[Effect] = []
        self._out = out
        kind = inp.kind._value_
        found = self.handled_in = self._model.state
        stay = self._stays.get((found, kind))
        try:
            if stay is None:
                self._events[kind].trigger(self._model, self, inp)
            else:
                # A stay changes no state and asks for nothing: all transitions
                # would do is call its notes and its record (the row's one
                # ``before`` callback, see _specs), which is what this does,
                # with the record's part for a stay written out (three farm
                # notices take this path at every connect).
                row = stay[0]
                for note in stay[1]:
                    note(self, inp)
                self.last_row = row
                if logger.isEnabledFor(logging.DEBUG):
                    self._log_stay(inp, row)
        finally:
            self._handling = False
        state = _STATE_BY_VALUE[self._model.state]
        effects = tuple(out)
        if self.record_journal:
            self.journal.append(JournalEntry(self._clock.monotonic(), inp, state, effects))
        return Step(inp, self._made, effects, state)

    # -- guards ---------------------------------------------------------------------

    def _retries_left(self, inp: Input) -> bool:
        budget = self._budget
        if budget is not None and self.attempt >= budget:
            return False
        return not self.policy.backoff.exhausted(self.attempt)

    def _farms_broken(self, inp: Input) -> bool:
        return bool(self._session.broken_farms) or self._session.server_link_broken

    def _link_lost(self, inp: Input) -> bool:
        return self._session.link_lost

    def _all_clear(self, inp: Input) -> bool:
        session = self._session
        return not (session.link_lost or session.broken_farms or session.server_link_broken)

    def _controller_configured(self, inp: Input) -> bool:
        return self.controller_configured

    def _cooldown_over(self) -> bool:
        last = self._last_restart_at
        return last is None or (
            self._clock.monotonic() - last >= self.policy.restart_cooldown)

    def _wedged(self, inp: Input) -> bool:
        # Asked only by the rows of a wedge sign, before they count it.
        return (self.controller_configured and self.endpoint_proven
                and self.wedge_signs + 1 >= self.policy.restart_after
                and self._cooldown_over())

    def _silent_unproven(self, inp: Input) -> bool:
        return inp.costly and not self.endpoint_proven and not self._warned_not_api

    def _link_stuck(self, inp: Input) -> bool:
        return (self.controller_configured and self._cooldown_over()
                and not self.policy.in_reset_window(self._clock.wall()))

    def _same_client_id_again(self, inp: Input) -> bool:
        return (self._retries_left(inp)
                and self._same_id_failures < self.policy.same_client_id_retries)

    def _fallback_client_id(self, inp: Input) -> bool:
        return self._retries_left(inp) and len(self.client_ids) > 1

    def _costly(self, inp: Input) -> bool:
        return inp.costly

    def _in_reset_window(self, inp: Input) -> bool:
        return self.policy.in_reset_window(self._clock.wall())

    # An attempt that reported no accounts (None) passed the account check.

    def _account_not_managed(self, inp: Input) -> bool:
        return (bool(self.account) and inp.accounts is not None
                and self.account not in inp.accounts)

    def _no_managed_accounts(self, inp: Input) -> bool:
        return not self.account and inp.accounts == ()

    def _accounts_ambiguous(self, inp: Input) -> bool:
        accounts = inp.accounts
        return (not self.account and accounts is not None and len(accounts) > 1
                and self.account_fallback != "first")

    def _account_usable(self, inp: Input) -> bool:
        accounts = inp.accounts
        if accounts is None:
            return True
        if self.account:
            return self.account in accounts
        return len(accounts) == 1 or (len(accounts) > 1 and self.account_fallback == "first")

    # -- recording --------------------------------------------------------------------

    def _record(self, inp: Input, row: Row, actions: Sequence[_Callback] = ()) -> None:
        """Run a row's ``before`` actions, then record and log its move (a stay at DEBUG).

        A row's ``before`` callback (``row`` and ``actions`` bound by keyword):
        the actions run here, in order, rather than through a wrapper calling
        them and then this: one call fewer for every input.
        """
        for action in actions:
            action(self, inp)
        self.last_row = row
        if row.dest is None:
            # Build nothing unless the line is wanted.
            if logger.isEnabledFor(logging.DEBUG):
                self._log_stay(inp, row)
            return
        source = _STATE_BY_VALUE[self._model.state]
        cause = self._cause or inp.message or row.note
        self._cause = ""
        delay = self._retry_delay if row.dest is ConnectionState.BACKOFF else None
        transition = Transition(
            source=source, dest=row.dest, trigger=inp.kind, at=self._clock.monotonic(),
            cause=cause, code=inp.code, attempt=self.attempt, delay=delay,
        )
        self._made = transition
        kept = self.transcript.append(transition)
        limit = self.transcript_limit
        if limit is not None and kept > limit:
            # Trim in chunks so the cost per transition stays constant.
            self.transcript.keep_last(limit // 2)
        # The end of a stopped manager is the bot's own doing, said by the
        # disconnect before it: DEBUG (a manager stopped unused logs nothing).
        level = logging.DEBUG if row.dest is ConnectionState.STOPPED else logging.INFO
        # Only a retry's line may be quieted: the others skip the call.
        if inp.kind in _RETRY_INPUTS and self._quiet_retry(transition):
            level = logging.DEBUG
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "connection %s -> %s on %s%s (attempt %d%s): %s",
            transition.source.value, transition.dest.value, transition.trigger.value,
            f" [{inp.code}]" if inp.code is not None else "",
            transition.attempt,
            f", retry in {delay:.3f}s" if delay is not None else "",
            cause,
            extra={"ibkr": transition.to_json()},
        )

    def _log_stay(self, inp: Input, row: Row) -> None:
        logger.debug("%s in %s: %s%s", inp.kind.value, self._model.state,
                     "ignored, " if row.ignored else "", row.note)

    def _effect(self, name: str, *args: float | str) -> None:
        self._out.append(Effect(name, args) if args else _BARE[name])

    # -- actions: notes -------------------------------------------------------------------

    def _note_farm_broken(self, inp: Input) -> None:
        if inp.farm:
            self._session.broken_farms.add(inp.farm)

    def _note_farm_ok(self, inp: Input) -> None:
        if inp.farm:
            self._session.broken_farms.discard(inp.farm)

    def _note_server_link_broken(self, inp: Input) -> None:
        self._session.server_link_broken = True

    def _note_link_lost(self, inp: Input) -> None:
        self._session.link_lost = True

    def _note_link_restored(self, inp: Input) -> None:
        self._session.link_lost = False
        self._session.server_link_broken = False

    def _note_wedge_sign(self, inp: Input) -> None:
        self.wedge_signs += 1

    def _note_gateway_down(self, inp: Input) -> None:
        # Refused: the gateway is down (restarting already), not wedged; the
        # one that comes up must give a session before it counts as proven
        # (it may sit at its login, 2FA pending, for minutes).
        self.wedge_signs = 0
        self.endpoint_proven = False

    def _note_port(self, inp: Input) -> None:
        port = inp.port
        if port is None:
            return
        if port != self.port:
            logger.warning("API port reset: next attempt uses port %d (was %d)", port, self.port)
            # A new endpoint: no session was had on it yet.
            self.endpoint_proven = False
        self.port = port

    # -- actions: attempts and delays ----------------------------------------------------

    def _first_attempt(self, inp: Input) -> None:
        # The series' counters start again (as reset_backoff), written out: every
        # connect runs this, and a helper would be a call more.
        self._warned_not_api = False
        self._failures = 0
        self._same_id_failures = 0
        self._budget = inp.attempts
        self.attempt = 1

    def _count_attempt(self, inp: Input) -> None:
        self.attempt += 1

    def _warn_not_an_api_port(self, inp: Input) -> None:
        self._warned_not_api = True
        logger.warning(
            "%s:%d accepts connections but did not answer the API handshake: not a TWS API "
            "port? (%s) The gateway is not restarted: this manager never had a session on "
            "%s:%d. Check the port (TWS 7497/7496, IB Gateway 4002/4001) and that the API "
            "is enabled; a gateway still logging in (2FA) answers once logged in.",
            self.host, self.port, inp.message or "no handshake", self.host, self.port)

    def _draw_delay(self, inp: Input) -> None:
        self._draw(costly=False)

    def _draw_costly_delay(self, inp: Input) -> None:
        self._draw(costly=True)

    def _draw(self, costly: bool) -> None:
        self._failures += 1
        self._retry_costly = costly
        self._retry_delay = self.policy.backoff.delay(self._failures, costly, self._rng)

    def _quiet_retry(self, transition: Transition) -> bool:
        """True for a line of a refused series within a minute of its last INFO line.

        A gateway down for hours (the weekly login) is retried every 2 s: two
        transitions each time. The series' first failure, one line a minute
        and the recovery are logged at INFO; the rest at DEBUG (all of them
        stay in the transcript).
        """
        retry = (transition.trigger is InputKind.RETRY_DUE
                 or (transition.trigger is InputKind.ATTEMPT_FAILED
                     and transition.dest is ConnectionState.BACKOFF))
        if not retry or self._retry_costly:
            return False
        if self._failures > 1 and transition.at - self._series_line_at < _SERIES_LINE_EVERY:
            return True
        self._series_line_at = transition.at
        return False

    def _retry_at_once(self, inp: Input) -> None:
        self._retry_delay = 0.0

    def _show(self, account: str) -> str:
        return mask_account(account) if self.mask_accounts else account

    def _refuse(self, message: str) -> None:
        self._cause = message
        self._effect("refuse_account", message)

    def _refuse_unmanaged_account(self, inp: Input) -> None:
        managed = ", ".join(self._show(a) for a in inp.accounts or ()) or "none"
        self._refuse(f"account {self._show(self.account)} is not managed by this login "
                     f"(managed: {managed})")

    def _refuse_no_account(self, inp: Input) -> None:
        self._refuse("the gateway reported no managed accounts")

    def _refuse_ambiguous_accounts(self, inp: Input) -> None:
        accounts = inp.accounts or ()
        self._refuse(
            f"this login manages {len(accounts)} accounts "
            f"({', '.join(self._show(a) for a in accounts)}); set the account "
            "(IBKR_ACCOUNT) or account_fallback='first'")

    def _reset_backoff(self, inp: Input) -> None:
        # Written out in both actions (not a shared helper): a call fewer per session.
        self._budget = None
        self._warned_not_api = False
        self.attempt = 0
        self._failures = 0
        self._same_id_failures = 0

    def _forget_wedge_signs(self, inp: Input) -> None:
        self.wedge_signs = 0

    def _note_endpoint_proven(self, inp: Input) -> None:
        self.endpoint_proven = True

    def _forget_endpoint(self, inp: Input) -> None:
        self.endpoint_proven = False

    def _retry_same_client_id(self, inp: Input) -> None:
        self._same_id_failures += 1
        logger.warning("client id %d in use: retrying the same id", self.client_id)

    def _next_client_id(self, inp: Input) -> None:
        self._same_id_failures = 0
        old = self.client_id
        self._client_index = (self._client_index + 1) % len(self.client_ids)
        logger.warning("client id %d in use: falling back to client id %d", old, self.client_id)

    def _keep_client_id(self, inp: Input) -> None:
        self._same_id_failures = 0
        logger.warning("client id %d in use and no fallback ids configured", self.client_id)

    # -- actions: effects of a row -------------------------------------------------------

    def _select_account(self, inp: Input) -> None:
        # The rows before this one refused every other case: the configured
        # account is managed; without one, the first is the only one or the
        # fallback's.
        accounts = inp.accounts
        # Built here rather than through _effect: every session asks for it.
        self._out.append(Effect(
            "select_account", (self.account or (accounts[0] if accounts else ""),)))

    def _probe_gateway(self, inp: Input) -> None:
        self._effect("probe_gateway", self.port, self.policy.backoff.max_delay)

    def _reconnect_data(self, inp: Input) -> None:
        logger.warning("a data farm has been broken for %.0fs (%s): asking the controller "
                       "to reconnect the data farms", self.policy.farm_reconnect_after,
                       ", ".join(sorted(self._session.broken_farms)) or "server link")
        self._effect("send_reconnect_data")

    # -- actions: entry and exit of the states -----------------------------------------------

    def _forget_session(self, inp: Input) -> None:
        self._session = _Session()

    def _start_attempt(self, inp: Input) -> None:
        self._out.append(Effect(
            "start_attempt", (self.attempt, self.client_ids[self._client_index], self.port)))

    def _schedule_retry(self, inp: Input) -> None:
        self._effect("schedule_retry", self._retry_delay)

    def _start_restore_timer(self, inp: Input) -> None:
        timeout = self.policy.restore_timeout
        logger.warning("TWS lost IB: waiting up to %.0fs for it to restore", timeout)
        self._effect("start_restore_timer", timeout)

    def _start_maintenance_restore_timer(self, inp: Input) -> None:
        timeout = self.policy.maintenance_restore_timeout
        logger.warning(
            "TWS lost IB inside a scheduled reset window: expected maintenance, "
            "waiting up to %.0fs for it to restore", timeout,
        )
        self._effect("start_restore_timer", timeout)

    def _count_restart(self, inp: Input) -> None:
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

    def _start_restart_timer(self, inp: Input) -> None:
        self._effect("start_restart_timer", self.policy.restart_wait)

    def _start_farm_timer(self, inp: Input) -> None:
        self._effect("start_farm_timer", self.policy.farm_reconnect_after)


_Callback = Callable[[ConnectionMachine, Input], None]
_Guard = Callable[[ConnectionMachine, Input], bool]


def _shared_machine(
    table: Sequence[Row],
    entry: dict[ConnectionState, tuple[StateAction, ...]],
    leave: dict[ConnectionState, tuple[StateAction, ...]],
) -> tuple[Machine, dict[str, Any], dict[tuple[str, str], tuple[Row, tuple[_Callback, ...]]]]:
    """The ``transitions`` machine running ``table``, its events by input value, its stays.

    Building one takes a few milliseconds (a ``transitions`` transition per
    row); one per :class:`ConnectionMachine` spent them, and the garbage they
    leave, on every manager's set-up. So one machine runs the table for every
    :class:`ConnectionMachine` (``transitions``' multiple models: each
    connection machine adds its own model); its callbacks and guards hold no
    connection machine: :meth:`ConnectionMachine.handle` passes itself to the
    event's ``trigger``, and ``transitions`` hands it to every callback and
    guard as their first argument. The last machine built is kept, with
    what it was built from (the table, the entry and exit actions, the
    functions of :data:`ACTION_FUNCTIONS` and :data:`GUARD_FUNCTIONS`): a
    connection machine built from anything else gets a new one.
    """
    key = (table, entry, leave, tuple(ACTION_FUNCTIONS.items()), tuple(GUARD_FUNCTIONS.items()))
    last = _LAST_BUILT[0] if _LAST_BUILT else None
    if last is not None and _same_key(last[0], key):
        return last[1], last[2], last[3]
    base = _BASE[0] if _BASE else None
    fsm = _derived(base[0], base[1], key) if base is not None else None
    if fsm is None:
        fsm = _new_machine(entry, leave)
        fsm.add_transitions(_specs(table))
        _BASE[:] = [(key, fsm)]
    events = {kind.value: fsm.events[kind.value] for kind in InputKind}
    stays = {(row.source.value, row.input.value): (row, tuple(
        ACTION_FUNCTIONS[action] for action in row.actions_in(Phase.NOTE)))
        for row in _stay_rows(table)}
    _LAST_BUILT[:] = [(key, fsm, events, stays)]
    return fsm, events, stays


def _stay_rows(table: Sequence[Row]) -> list[Row]:
    """The rows :class:`ConnectionMachine` runs without ``transitions``: the stays.

    A stay is the one row of its (state, input), unguarded, with no next state,
    whose actions (if any) are all notes: it changes no state and asks for no
    effect, so ``transitions`` would have nothing to do but call its notes and
    record it. Three farm notices come with every connect. Computed from the
    table, never listed by hand: a changed table has its own stays.
    """
    count: dict[tuple[ConnectionState, InputKind], int] = {}
    for row in table:
        count[row.source, row.input] = count.get((row.source, row.input), 0) + 1
    return [row for row in table
            if count[row.source, row.input] == 1 and row.guard is None and row.dest is None
            and all(_ACTIONS[action].phase is Phase.NOTE for action in row.actions)]


def _new_machine(
    entry: dict[ConnectionState, tuple[StateAction, ...]],
    leave: dict[ConnectionState, tuple[StateAction, ...]],
) -> Machine:
    """A ``transitions`` machine with the states, their entry and exit actions, no transition."""
    states = [
        State(state.value, on_enter=_state_callback(entry.get(state, ())),
              on_exit=_state_callback(leave.get(state, ())))
        for state in ConnectionState
    ]
    return Machine(
        model=None,
        states=states,
        initial=ConnectionState.DISCONNECTED.value,
        transitions=[],
        auto_transitions=False,
        send_event=False,
        ignore_invalid_triggers=False,
    )


def _derived(base_key: tuple[Any, ...], base: Machine, key: tuple[Any, ...]) -> Machine | None:
    """A machine for ``key`` made from ``base``, a full build, sharing its unchanged transitions.

    A table that differs from the base's in a few rows (same length, the other rows
    the same objects: a changed copy, as the row-mutation test makes thousands of)
    needs new ``transitions`` transitions for the rows of the changed (state,
    input)s only. A transition holds no machine (it is handed the machine of the
    event it runs in), so the others are shared; a (state, input)'s rows are one
    list of the input's event, tried in the table's order, so the changed ones'
    lists are rebuilt whole. The states are built anew, with ``key``'s entry and
    exit actions. None: not derivable (other actions or guards, another length).
    """
    table, old = key[0], base_key[0]
    if (len(table) != len(old) or base_key[3] != key[3] or base_key[4] != key[4]):
        return None
    changed: set[tuple[ConnectionState, InputKind]] = set()
    for before, after in zip(old, table, strict=True):
        if before is not after:
            changed.add((before.source, before.input))
            changed.add((after.source, after.input))
    names = {(state.value, kind.value) for state, kind in changed}
    fsm = _new_machine(key[1], key[2])
    for name, event in base.events.items():
        copy = fsm.event_cls(name, fsm)
        for source, transitions in event.transitions.items():
            if (source, name) not in names:
                copy.transitions[source] = list(transitions)
        fsm.events[name] = copy
    fsm.add_transitions(_specs([row for row in table if (row.source, row.input) in changed]))
    return fsm


#: The last machine built from scratch, and what it was built from: a machine for a
#: table that differs from it in a few rows is derived from it (see ``_derived``).
_BASE: list[tuple[tuple[Any, ...], Machine]] = []


#: The last shared machine built: (what it was built from, the machine, its events, its
#: stays).
_LAST_BUILT: list[tuple[tuple[Any, ...], Machine, dict[str, Any],
                        dict[tuple[str, str], tuple[Row, tuple[_Callback, ...]]]]] = []


def _same_key(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """True if a machine built from ``old`` runs ``new`` (the tables: the same objects)."""
    return (old[0] is new[0] and old[1] is new[1] and old[2] is new[2]
            and old[3] == new[3] and old[4] == new[4])


def _specs(table: Sequence[Row]) -> list[dict[str, object]]:
    """The table as ``transitions`` transitions; actions and guards become callables.

    Each phase of a row is one callable (running the row's actions of that
    phase in order): transitions then makes one call per phase, not one per
    action. A row without a guard runs its notes with its ``before`` actions
    (nothing is tried between them).
    """
    actions = ACTION_FUNCTIONS
    specs: list[dict[str, object]] = []
    tried: set[tuple[ConnectionState, InputKind]] = set()
    for row in table:
        # The notes are the same on every row of a (state, input): noting
        # them before the first row's guard is enough.
        first = (row.source, row.input) not in tried
        tried.add((row.source, row.input))
        notes: list[_Callback] = (
            [actions[a] for a in row.actions_in(Phase.NOTE)] if first else [])
        before: list[_Callback] = [actions[a] for a in row.actions_in(Phase.BEFORE)]
        after: list[_Callback] = [actions[a] for a in row.actions_in(Phase.AFTER)]
        if row.guard is None:
            before = notes + before
            notes = []
        # The before actions, then the record: one callable.
        record: _Callback = partial(ConnectionMachine._record, row=row, actions=tuple(before))
        spec: dict[str, object] = {
            "trigger": row.input.value,
            "source": row.source.value,
            "dest": None if row.dest is None else row.dest.value,
            "prepare": [_in_order(notes)] if notes else [],
            "before": [record],
            "after": [_in_order(after)] if after else [],
        }
        condition = _condition(guard_terms(row.guard))
        if condition is not None:
            spec["conditions"] = [condition]
        specs.append(spec)
    return specs


def _condition(terms: Sequence[tuple[str, bool]]) -> _Guard | None:
    """A row's guard as one ``transitions`` condition (None: the row always holds).

    One callable for all the terms: transitions then checks one condition,
    not one per term. A single term that must hold is the guard function itself.
    """
    if not terms:
        return None
    if len(terms) == 1 and terms[0][1]:
        return GUARD_FUNCTIONS[terms[0][0]]
    # The terms that must hold are asked first, then those that must not, as
    # transitions asks ``conditions`` before ``unless``; the first that fails ends it.
    plan = tuple((GUARD_FUNCTIONS[name], wanted)
                 for name, wanted in sorted(terms, key=lambda term: not term[1]))

    def holds(machine: ConnectionMachine, inp: Input) -> bool:
        # A loop, not all() over a generator: no generator to resume per term.
        for guard, wanted in plan:  # noqa: SIM110
            if guard(machine, inp) != wanted:  # transitions' own test of a condition
                return False
        return True

    return holds


#: A plan of actions: each action, the guard that must give ``wanted`` for it to run
#: (None: it always runs), and ``wanted``.
_Plan = tuple[tuple[_Callback, _Guard | None, bool], ...]


def _run_plan(plan: _Plan, machine: ConnectionMachine, inp: Input) -> None:
    for action, guard, wanted in plan:
        if guard is None or guard(machine, inp) is wanted:
            action(machine, inp)


def _state_callback(steps: Sequence[StateAction]) -> _Callback | None:
    """A state's entry (or exit) actions as one callback, each run when its guard holds."""
    if not steps:
        return None
    return partial(_run_plan, tuple(
        (ACTION_FUNCTIONS[step.action],
         None if step.guard is None else GUARD_FUNCTIONS[step.guard.lstrip("!")],
         step.guard is None or not step.guard.startswith("!"))
        for step in steps))


def _in_order(functions: Sequence[_Callback]) -> _Callback:
    """One callable running ``functions`` in order (the function itself if it is alone).

    The same function as a state's actions (:func:`_run_plan`, without guards):
    every row and state shares it, so a connect meets it cold once, not once
    per kind of callback.
    """
    if len(functions) == 1:
        return functions[0]
    return partial(_run_plan, tuple((function, None, True) for function in functions))


_M = ConnectionMachine

#: restore_subscriptions(fresh_session): on a new session, or again after a 1101.
_ISSUE_ON_NEW_SESSION = Effect("restore_subscriptions", (True,))
_ISSUE_AGAIN = Effect("restore_subscriptions", (False,))

#: The effects without arguments, built once (a connect asks for several).
_BARE = {name: Effect(name) for name in (
    "issue_new_subscriptions", "start_heartbeat",
    "send_reconnect_data", "cancel_retry", "cancel_restore_timer", "stop_heartbeat",
    "tear_down", "send_restart", "cancel_restart_timer", "cancel_probe", "cancel_farm_timer",
    "begin_session", "end_session")}

def _ask(effect: Effect, machine: ConnectionMachine, inp: Input) -> None:
    machine._out.append(effect)


def _asks(effect: Effect) -> _Callback:
    """The action whose whole job is to ask for ``effect``, which has nothing to compute.

    One function serves them all (bound to each one's effect): every connect
    asks for three of them, and a function of its own each would be three
    more met cold.
    """
    return partial(_ask, effect)


#: Every action of :data:`~ibkr_connection.table.ACTIONS` and the function performing it.
ACTION_FUNCTIONS: dict[str, Callable[[ConnectionMachine, Input], None]] = {
    "note_farm_broken": _M._note_farm_broken,
    "note_farm_ok": _M._note_farm_ok,
    "note_server_link_broken": _M._note_server_link_broken,
    "note_link_lost": _M._note_link_lost,
    "note_link_restored": _M._note_link_restored,
    "note_port": _M._note_port,
    "note_wedge_sign": _M._note_wedge_sign,
    "note_gateway_down": _M._note_gateway_down,
    "first_attempt": _M._first_attempt,
    "count_attempt": _M._count_attempt,
    "warn_not_an_api_port": _M._warn_not_an_api_port,
    "draw_delay": _M._draw_delay,
    "draw_costly_delay": _M._draw_costly_delay,
    "retry_at_once": _M._retry_at_once,
    "refuse_unmanaged_account": _M._refuse_unmanaged_account,
    "refuse_no_account": _M._refuse_no_account,
    "refuse_ambiguous_accounts": _M._refuse_ambiguous_accounts,
    "reset_backoff": _M._reset_backoff,
    "select_account": _M._select_account,
    "issue_subscriptions": _asks(_ISSUE_ON_NEW_SESSION),
    "restore_subscriptions": _asks(_ISSUE_AGAIN),
    "issue_new_subscriptions": _asks(_BARE["issue_new_subscriptions"]),
    "start_heartbeat": _asks(_BARE["start_heartbeat"]),
    "forget_wedge_signs": _M._forget_wedge_signs,
    "note_endpoint_proven": _M._note_endpoint_proven,
    "forget_endpoint": _M._forget_endpoint,
    "begin_session": _asks(_BARE["begin_session"]),
    "end_session": _asks(_BARE["end_session"]),
    "probe_gateway": _M._probe_gateway,
    "reconnect_data": _M._reconnect_data,
    "retry_same_client_id": _M._retry_same_client_id,
    "next_client_id": _M._next_client_id,
    "keep_client_id": _M._keep_client_id,
    "forget_session": _M._forget_session,
    "start_attempt": _M._start_attempt,
    "schedule_retry": _M._schedule_retry,
    "cancel_retry": _asks(_BARE["cancel_retry"]),
    "start_restore_timer": _M._start_restore_timer,
    "start_maintenance_restore_timer": _M._start_maintenance_restore_timer,
    "cancel_restore_timer": _asks(_BARE["cancel_restore_timer"]),
    "stop_heartbeat": _asks(_BARE["stop_heartbeat"]),
    "tear_down": _asks(_BARE["tear_down"]),
    "count_restart": _M._count_restart,
    "start_restart_timer": _M._start_restart_timer,
    "send_restart": _asks(_BARE["send_restart"]),
    "cancel_restart_timer": _asks(_BARE["cancel_restart_timer"]),
    "cancel_probe": _asks(_BARE["cancel_probe"]),
    "start_farm_timer": _M._start_farm_timer,
    "cancel_farm_timer": _asks(_BARE["cancel_farm_timer"]),
}

#: Every guard of :data:`~ibkr_connection.table.GUARDS` and the function asking it.
GUARD_FUNCTIONS: dict[str, Callable[[ConnectionMachine, Input], bool]] = {
    "retries_left": _M._retries_left,
    "farms_broken": _M._farms_broken,
    "link_lost": _M._link_lost,
    "all_clear": _M._all_clear,
    "wedged": _M._wedged,
    "silent_unproven": _M._silent_unproven,
    "link_stuck": _M._link_stuck,
    "controller_configured": _M._controller_configured,
    "costly": _M._costly,
    "same_client_id_again": _M._same_client_id_again,
    "fallback_client_id": _M._fallback_client_id,
    "in_reset_window": _M._in_reset_window,
    "account_usable": _M._account_usable,
    "account_not_managed": _M._account_not_managed,
    "no_managed_accounts": _M._no_managed_accounts,
    "accounts_ambiguous": _M._accounts_ambiguous,
}


__all__ = ["ACTION_FUNCTIONS", "GUARD_FUNCTIONS", "ConnectionMachine"]
