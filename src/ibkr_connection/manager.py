"""The connection manager: what a bot holds to keep one ``IB`` connected.

:class:`ConnectionManager` ties three parts together and gives the bot their
public face: the :class:`~ibkr_connection.machine.ConnectionMachine` (the
decisions), the :class:`~ibkr_connection.driver.Driver` (the effects on
asyncio, and IB's callbacks turned into inputs) and the
:class:`~ibkr_connection.subscriptions.SubscriptionRegistry`. It adds the
lifecycle (``start``/``stop`` and their blocking twins), waiting for a state,
the subscription calls, the journal and the events a bot listens to.

Blocking twins: ``connect()`` and ``disconnect()`` block (they run the event
loop); ``connect_async()`` and ``disconnect_async()`` are their coroutines,
also known as ``start()`` and ``stop()`` (what ``async with`` calls).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from eventkit import Event

from ibkr_connection import adapter, codes
from ibkr_connection.clock import Clock, SystemClock, TimerHandle
from ibkr_connection.config import ConnectionConfig
from ibkr_connection.controller import Controller
from ibkr_connection.driver import Driver
from ibkr_connection.errors import (
    ConnectFailedError,
    FatalConnectError,
    ManagerStoppedError,
    UsageError,
)
from ibkr_connection.inflight import CANCEL, MODIFY, PLACE, GatewayRecord, InFlightOrders
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.journal import JournalWriter
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.outputs import Transcript, Transition
from ibkr_connection.subscriptions import (
    AccountUpdatesSubscription,
    CallableSubscription,
    MarketDataSubscription,
    PnLSubscription,
    Subscription,
    SubscriptionRegistry,
)
from ibkr_connection.table import USABLE_STATES, ConnectionState

logger = logging.getLogger(__name__)

_S = TypeVar("_S", bound=Subscription)


class ConnectionManager:
    """Keeps one ``IB`` connected, through a deterministic state machine.

    Args:
        ib: the ``ib_insync.IB`` (or ``ib_async.IB``) object to drive.
        config: where and how to connect.
        clock: the injected clock (the system clock by default).
        journal: a path or open text file for a JSON Lines journal of every
            input and transition, for ``ibkr-connection replay``.
        controller: restarts a wedged gateway (an
            :class:`~ibkr_connection.controller.IBCController`, a
            :class:`~ibkr_connection.controller.CommandController`, anything
            with the :class:`~ibkr_connection.controller.Controller` methods);
            None: the one ``config`` names (``ibc_port``), if any. Without a
            controller nothing escalates.

    Events:
        stateChangeEvent (transition: Transition): one per change of state.
        subscriptionRestoredEvent (subscription: Subscription): a subscription
            was re-issued after a reconnect or a 1101.
        subscriptionFailedEvent (subscription: Subscription, error:
            SubscriptionError): a subscription could not be issued (also on
            the handle: ``handle.error``, ``handle.errorEvent``).
        heartbeatEvent (rtt: float): a heartbeat probe was answered.
        ordersUncertainEvent (trades: list[Trade]): a session ended with these
            orders' latest requests (place, modify, cancel) unanswered: nobody
            knows whether IB got them. Emitted before the ``stateChangeEvent``
            of the move out of the session. Nothing is re-sent.
        orderResolvedEvent (trade: Trade, outcome: Resolution): the startup
            sync of a new session settled an uncertain order (``trade`` is the
            one of the ended session; ``outcome.trade`` the gateway's, kept up
            to date from now on): the gateway's status, or ``NotReceived``.
            Emitted after the ``stateChangeEvent`` into the session.

    Attributes:
        in_flight: the tracker of order requests and uncertain orders
            (:class:`~ibkr_connection.inflight.InFlightOrders`).
    """

    events = ("stateChangeEvent", "subscriptionRestoredEvent", "subscriptionFailedEvent",
              "heartbeatEvent", "ordersUncertainEvent", "orderResolvedEvent")

    def __init__(
        self,
        ib: Any,
        config: ConnectionConfig | None = None,
        *,
        clock: Clock | None = None,
        journal: str | Path | IO[str] | None = None,
        controller: Controller | None = None,
    ) -> None:
        self.ib = ib
        config = config or ConnectionConfig()
        if controller is None:
            controller = config.controller()
        self.controller = controller
        self._clock = clock or SystemClock()
        self.stateChangeEvent = Event("stateChangeEvent")
        self.subscriptionRestoredEvent = Event("subscriptionRestoredEvent")
        self.heartbeatEvent = Event("heartbeatEvent")
        self.subscriptionFailedEvent = Event("subscriptionFailedEvent")
        self.ordersUncertainEvent = Event("ordersUncertainEvent")
        self.orderResolvedEvent = Event("orderResolvedEvent")
        self.in_flight = InFlightOrders()
        self.subscriptions = SubscriptionRegistry(
            on_failed=self.subscriptionFailedEvent.emit, on_restored=self._on_restored)
        self._driver = Driver(ib, config, self._clock, self._feed, self.subscriptions,
                              self.heartbeatEvent.emit, controller=controller,
                              commands={"end_session": self._orders_session_ended,
                                        "begin_session": self._session_began})
        #: A begin_session effect was carried out: settle the orders after the listeners.
        self._resolve_due = False
        self._machine = ConnectionMachine(
            self._clock, port=self.config.port,
            client_ids=self.config.client_ids, policy=self.config.policy,
            record_journal=journal is not None,
            controller_configured=controller is not None, host=self.config.host,
            account=self.config.account, account_fallback=self.config.account_fallback,
            mask_accounts=self.config.mask_accounts,
        )
        #: Inputs waiting for the step being carried out to end.
        self._inputs: deque[Input] = deque()
        self._stepping = False
        self._waiters: list[
            tuple[frozenset[ConnectionState], asyncio.Future[ConnectionState]]] = []
        self._failure: Exception | None = None
        #: Transitions made so far (the safety net's "has it moved on?").
        self._moves = 0
        #: The safety net's timer, armed after an internal error (see _internal_error).
        self._start_over: TimerHandle | None = None
        self._journal: JournalWriter | None = None
        if journal is not None:
            self._open_journal(journal)
        self._allow_orders: Callable[[], None] | None = None
        if self.config.readonly:
            self._allow_orders = adapter.refuse_orders(
                ib, "the session is read-only (readonly=True / IBKR_READONLY)")
        self._driver.bind()
        # Order requests feed the in-flight tracker; they fire only when the
        # bot acts, never for ticks, statuses or positions.
        ib.newOrderEvent += self._on_new_order
        ib.orderModifyEvent += self._on_order_modified
        ib.cancelOrderEvent += self._on_cancel_requested
        self._unquiet_logs: Callable[[], None] | None = None
        if self.config.quiet_client_logs:
            self._unquiet_logs = adapter.manage_client_logs(
                ib, lambda code: codes.lookup(code) is not None,
                mask_accounts=self.config.mask_accounts)

    # -- state ----------------------------------------------------------------------

    @property
    def config(self) -> ConnectionConfig:
        """The settings; a new value takes effect at the next attempt.

        The machine keeps the port, client ids and policy it was built with
        (a 1300 moves the port) and takes the account settings anew; the
        driver reads the rest (host, timeouts, readonly for the startup sync)
        at each attempt.
        """
        return self._driver.config

    @config.setter
    def config(self, value: ConnectionConfig) -> None:
        self._driver.config = value
        machine = self._machine
        machine.account = value.account
        machine.account_fallback = value.account_fallback
        machine.mask_accounts = value.mask_accounts

    @property
    def state(self) -> ConnectionState:
        """The machine's current state."""
        return self._machine.state

    @property
    def transcript(self) -> Transcript:
        """The changes of state so far, oldest first (the most recent ``transcript_limit``, 10,000).

        A sequence of :class:`Transition`, read like a list (see :class:`Transcript`).
        """
        return self._machine.transcript

    @property
    def machine(self) -> ConnectionMachine:
        """The underlying state machine (read it; feed it only in tests)."""
        return self._machine

    @property
    def usable(self) -> bool:
        """True when requests and orders can be sent (connected or degraded)."""
        return self._machine.state in USABLE_STATES

    @property
    def account(self) -> str:
        """The account selected for this session (empty before the first one)."""
        return self._driver.account

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (the machine is in ``stopped``)."""
        return self._machine.state is ConnectionState.STOPPED

    @property
    def order_id_high_water(self) -> int:
        """The lowest order id this manager will let the client hand out next."""
        return self._driver.high_water

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Connect and return once the session is usable (also :meth:`connect_async`).

        Args:
            timeout: give up waiting after this many seconds (the manager
                keeps trying in the background); None waits as long as the
                policy keeps trying.

        Raises:
            ManagerStoppedError: the manager was stopped.
            FatalConnectError: a failure retrying cannot fix (e.g. AccountError).
            ConnectFailedError: every allowed attempt failed.
            TimeoutError: ``timeout`` passed first.
        """
        state = self._machine.state
        if state is ConnectionState.STOPPED:
            raise _stopped_error()
        if state in USABLE_STATES:
            return
        self._failure = None
        # The state the step left (what _wait would read again first).
        state = self._feed(_START)
        if state not in _STARTED:
            state = await self._wait(_STARTED, timeout, state)
        if state is ConnectionState.FAILED:
            raise self._failure_error()

    async def stop(self) -> None:
        """Disconnect; no reconnect ever happens after this (also :meth:`disconnect_async`).

        Idempotent.
        """
        if self.stopped:
            return
        if self._start_over is not None:
            self._start_over.cancel()
            self._start_over = None
        # Disconnect (the teardown, end of session), then stop: the table's
        # terminal state ignores every input from now on.
        self._feed(Input(InputKind.DISCONNECT, message="stop() called"))
        self._feed(Input(InputKind.STOP, message="stop() called"))
        # Nothing will ever move the machine again: wake whoever still waits.
        for _, future in list(self._waiters):
            if not future.done():
                future.set_exception(ManagerStoppedError(
                    "the ConnectionManager was stopped while waiting"))
        try:
            await adapter.wait_transport_closed(self.ib)
        finally:
            # Even when the wait is cancelled or cut short (ib.run raises on a
            # closing socket): a second stop() returns at once, so the
            # clean-up must happen here.
            self._release()

    #: The coroutine twin of :meth:`connect`: :meth:`start` under the convention's name.
    connect_async = start
    #: The coroutine twin of :meth:`disconnect`: :meth:`stop` under the convention's name.
    disconnect_async = stop

    def _release(self) -> None:
        self._driver.release()
        self.ib.newOrderEvent -= self._on_new_order
        self.ib.orderModifyEvent -= self._on_order_modified
        self.ib.cancelOrderEvent -= self._on_cancel_requested
        if self._unquiet_logs is not None:
            self._unquiet_logs()
            self._unquiet_logs = None
        if self._allow_orders is not None:
            self._allow_orders()
            self._allow_orders = None
        self._flush_journal()
        if self._journal is not None:
            self._journal.close()

    def connect(self, timeout: float | None = None) -> None:
        """Connect, blocking: runs :meth:`connect_async` (:meth:`start`) in the event loop.

        Raises:
            UsageError: called while an event loop runs (use ``await start()``).
            ManagerStoppedError, FatalConnectError, ConnectFailedError,
            TimeoutError: as :meth:`start`.
        """
        refuse_inside_loop("ConnectionManager.connect()", "await manager.start()")
        self._check_not_stopped()
        while True:
            try:
                self.ib.run(self.start(timeout))
                return
            except ConnectionError:
                # ib_insync's run() is cut short when a socket closes while it
                # waits; the manager is still recovering, so keep waiting.
                if self.usable:
                    return
                if self._machine.state is ConnectionState.FAILED:
                    raise self._failure_error() from None
                logger.debug("connect() interrupted by a closing socket; waiting on")

    def disconnect(self) -> None:
        """Disconnect, blocking: runs :meth:`disconnect_async` (:meth:`stop`) in the event loop.

        Raises:
            UsageError: called while an event loop runs (use ``await stop()``).
        """
        refuse_inside_loop("ConnectionManager.disconnect()", "await manager.stop()")
        self.ib.run(self.stop())

    async def __aenter__(self) -> ConnectionManager:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_for(
        self, *states: ConnectionState, timeout: float | None = None
    ) -> ConnectionState:
        """Wait until the machine is in one of ``states``; return that state.

        Raises:
            ManagerStoppedError: the manager is stopped (at once), or was
                stopped while waiting.
            TimeoutError: ``timeout`` seconds passed first.
        """
        return await self._wait(frozenset(states), timeout)

    async def _wait(self, targets: frozenset[ConnectionState],
                    timeout: float | None,
                    state: ConnectionState | None = None) -> ConnectionState:
        """:meth:`wait_for` with its targets built (``start()`` waits for constant ones).

        ``state``: the current state, when the caller has it at hand.
        """
        if state is None:
            state = self._machine.state
        if state in targets:
            return state
        if state is ConnectionState.STOPPED:
            raise _stopped_error()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ConnectionState] = loop.create_future()
        waiter = (targets, future)
        self._waiters.append(waiter)
        # A timer rather than asyncio.wait_for: the listener's set_result then
        # wakes this task in one loop turn instead of two.
        # The deadline runs on the injected clock, like the machine's timers.
        timer = None if timeout is None else self._clock.call_later(
            timeout, lambda: self._expire_waiter(future, targets, timeout))
        try:
            return await future
        except TimeoutError:
            # The state may have arrived in the same loop turn as the timer.
            if self._machine.state in targets:
                return self._machine.state
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _expire_waiter(
        self, future: asyncio.Future[ConnectionState],
        targets: frozenset[ConnectionState], timeout: float,
    ) -> None:
        if not future.done():
            future.set_exception(TimeoutError(
                f"still {self.state.value} after {timeout}s, waiting for "
                f"{', '.join(sorted(s.value for s in targets))}"
            ))

    # -- subscriptions ----------------------------------------------------------------

    def subscribe_market_data(
        self, contract: Any, generic_ticks: str = ""
    ) -> MarketDataSubscription:
        """Stream market data for ``contract``, re-issued after every reconnect and 1101.

        Returns:
            The handle; ``handle.ticker`` is the live ``Ticker``.
        """
        sub = MarketDataSubscription(contract, generic_ticks)
        return self._add_subscription(sub)

    def subscribe_account_updates(self, account: str | None = None) -> AccountUpdatesSubscription:
        """Keep account values and portfolio updates flowing for ``account``."""
        sub = AccountUpdatesSubscription(account or self.account or self.config.account)
        return self._add_subscription(sub)

    def subscribe_pnl(self, account: str | None = None, model_code: str = "") -> PnLSubscription:
        """Keep PnL updates flowing for ``account``."""
        sub = PnLSubscription(account or self.account or self.config.account, model_code)
        return self._add_subscription(sub)

    def subscribe(
        self, name: str, issue: Callable[[Any], object],
        withdraw: Callable[[Any], object] | None = None,
    ) -> CallableSubscription:
        """Register any request: ``issue(ib)`` runs after every (re)connect and 1101."""
        return self._add_subscription(CallableSubscription(name, issue, withdraw))

    def unsubscribe(self, subscription: Subscription) -> None:
        """Cancel a subscription and never re-issue it."""
        self.subscriptions.cancel(subscription)
        if self.usable:
            try:
                subscription.withdraw(self.ib)
            except Exception:
                logger.exception("withdrawing %s failed", subscription.name)

    def _add_subscription(self, sub: _S) -> _S:
        self._check_not_stopped()
        sub.check(self.ib)  # refused before it is registered, so never re-issued either
        self.subscriptions.add(sub)
        # Whether to issue it now is the table's decision (the ``subscribed`` rows).
        self._feed(Input(InputKind.SUBSCRIBED, message=sub.name))
        return sub

    def _on_restored(self, sub: Subscription) -> None:
        logger.info("restored %s", sub.name)
        sub.restoredEvent.emit(sub)
        self.subscriptionRestoredEvent.emit(sub)

    # -- inputs ---------------------------------------------------------------------

    def feed(self, inp: Input) -> ConnectionState:
        """Feed an input to the machine (for tools and tests). Never raises."""
        return self._feed(inp)

    def _feed(self, inp: Input) -> ConnectionState:
        """Feed ``inp``, then every input that arose meanwhile; return the state after them.

        Each input is one step: the machine handles it; the journal is flushed;
        the driver carries out its effects; the listeners hear of its
        transition. An input that arises while a step's effects or listeners
        run (the close that a tear-down causes, a timer due at once, a
        ``stateChangeEvent`` handler's request) is queued and fed after that
        step, never inside it. The step is written out in the loop, not as a
        method: every input of a connect (five) would pay a call for it.
        """
        if self._stepping:
            self._inputs.append(inp)
            return self._machine.state
        self._stepping = True
        inputs = self._inputs
        machine = self._machine
        try:
            while True:
                try:
                    step = machine.handle(inp)
                except Exception:
                    # handle() noted the state the input found before anything could fail.
                    logger.exception("the machine failed to handle %s in state %s (now %s)",
                                     inp, machine.handled_in, machine.state.value)
                    self._internal_error()
                    state = machine.state
                else:
                    if self._journal is not None:
                        self._flush_journal()
                    failed = self._driver.perform(step.effects) if step.effects else 0
                    if step.transition is not None:
                        try:
                            self._on_transition(step.transition)
                        except Exception:
                            logger.exception("state change listeners failed on %s",
                                             step.transition)
                    if failed:
                        # The driver logged which effect raised and carried out the rest.
                        self._internal_error()
                    if self._resolve_due:
                        # begin_session: the orders are settled once the bot heard of the
                        # new session (orderResolvedEvent after its stateChangeEvent).
                        self._resolve_due = False
                        self._resolve_orders()
                    state = step.state
                if not inputs:
                    return state
                inp = inputs.popleft()
        finally:
            self._stepping = False

    def _internal_error(self) -> None:
        """Arm the safety net after the machine or an effect raised (a bug of ours).

        The step's effects are lost (or one of them is), so the thing the
        state waits for (an attempt, a retry timer, a restore or restart
        timer) may never come: the manager would sit with nothing scheduled.
        A usable state on a live socket is kept (the heartbeat still watches
        it, and a trader's working session is worth more than a clean slate);
        ``disconnected``, ``failed`` and ``stopped`` want nothing. Anywhere
        else the connection is started over after ``max_costly_delay`` (a
        fresh series: disconnect, then connect), unless the machine moved on
        by itself meanwhile. The pause keeps a bug that strikes every time
        from becoming a hot loop: it logs once per pause instead.
        """
        state = self._machine.state
        if state in (ConnectionState.DISCONNECTED, ConnectionState.FAILED,
                     ConnectionState.STOPPED) or self._start_over is not None:
            return
        if state in USABLE_STATES and self.ib.isConnected():
            logger.error("keeping the %s session after that error: it still works", state.value)
            return
        delay = self.config.policy.backoff.max_costly_delay
        logger.error("%s may now wait for nothing: starting the connection over in %.1fs "
                     "unless it moves on before", state.value, delay)
        self._start_over = self._clock.call_later(
            delay, functools.partial(self._start_over_due, self._moves))

    def _start_over_due(self, moves: int) -> None:
        self._start_over = None
        state = self._machine.state
        if self._moves != moves or state in (ConnectionState.DISCONNECTED,
                                             ConnectionState.FAILED, ConnectionState.STOPPED):
            logger.info("no need to start over: the manager moved on (%s)", state.value)
            return
        if state in USABLE_STATES and self.ib.isConnected():
            return
        why = "starting over after an internal error"
        self._feed(Input(InputKind.DISCONNECT, message=why))
        self._feed(Input(InputKind.CONNECT, message=why))

    def _on_transition(self, transition: Transition) -> None:
        self._moves += 1
        if transition.dest is ConnectionState.FAILED and self._failure is None:
            self._failure = self._driver.last_error
        self.stateChangeEvent.emit(transition)
        for targets, future in list(self._waiters):
            if transition.dest in targets and not future.done():
                future.set_result(transition.dest)

    # -- orders caught by a dropped session ---------------------------------------------

    def _on_new_order(self, trade: Any) -> None:
        self.in_flight.sent(trade, PLACE)

    def _on_order_modified(self, trade: Any) -> None:
        self.in_flight.sent(trade, MODIFY)

    def _on_cancel_requested(self, trade: Any) -> None:
        self.in_flight.sent(trade, CANCEL)

    def _orders_session_ended(self) -> None:
        trades = self.in_flight.session_ended()
        if trades:
            adapter.forget_trades(self.ib, trades)
            self.ordersUncertainEvent.emit(trades)

    def _session_began(self) -> None:
        # Only uncertain orders need settling (most sessions begin with none).
        self._resolve_due = self.in_flight.has_uncertain

    def _resolve_orders(self) -> None:
        # The startup sync just completed: ib.trades() and ib.fills() are the
        # gateway's record. A read-only session's sync skipped the orders.
        record = GatewayRecord(self.ib.trades(), self.ib.fills(),
                               client_id=self._machine.client_id,
                               orders_synced=not self.config.readonly)
        for trade, outcome in self.in_flight.resolve(record):
            self.orderResolvedEvent.emit(trade, outcome)

    # -- errors ---------------------------------------------------------------------

    def _check_not_stopped(self) -> None:
        if self._machine.state is ConnectionState.STOPPED:
            raise _stopped_error()

    def _failure_error(self) -> Exception:
        last = self.transcript[-1] if self.transcript else None
        if isinstance(self._failure, FatalConnectError):
            return self._failure
        if last is not None and last.trigger is InputKind.FATAL_ERROR:
            return FatalConnectError(last.cause)
        attempts = last.attempt if last is not None else 0
        cause = last.cause if last is not None else "unknown"
        return ConnectFailedError(
            f"could not connect to {self.config.host}:{self._machine.port} "
            f"after {attempts} attempt(s): {cause}"
        )

    # -- journal --------------------------------------------------------------------

    def _open_journal(self, journal: str | Path | IO[str]) -> None:
        self._journal = JournalWriter(journal, self.config, self._clock,
                                      controller_configured=self.controller is not None)

    def _flush_journal(self) -> None:
        if self._journal is None:
            return
        self._journal.write(self._machine.journal)
        self._machine.journal.clear()


#: The input :meth:`ConnectionManager.start` feeds (inputs are immutable: built once).
_START = Input(InputKind.CONNECT, message="start() called")
#: What :meth:`ConnectionManager.start` waits for: a usable session, or failed.
_STARTED = frozenset((*USABLE_STATES, ConnectionState.FAILED))


def _stopped_error() -> ManagerStoppedError:
    return ManagerStoppedError(
        "this ConnectionManager was stopped; create a new one to connect again")


def refuse_inside_loop(what: str, instead: str) -> None:
    """Raise :class:`UsageError` if an event loop runs in this thread.

    The blocking twins run the event loop themselves; inside a running loop
    they would fail half-way (``This event loop is already running``) after
    starting work that then carries on unseen.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise UsageError(
        f"{what} runs the event loop and cannot be called while it runs (from an "
        f"event handler or a coroutine); use {instead}"
    )


__all__ = ["ConnectionManager", "refuse_inside_loop"]
