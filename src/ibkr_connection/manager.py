"""The asyncio driver: binds the connection machine to a real ``IB`` object.

:class:`ConnectionManager` owns every task and timer. It turns IB's callbacks
(``errorEvent``, ``disconnectedEvent``) and the results of its own attempts,
timers and heartbeat probes into machine inputs, and performs the effects the
machine's actions ask for. Order, tick and position messages never pass
through it: the only handlers it adds to ``IB`` are for errors, disconnects and
order requests (new orders keep the order-id high-water mark; new orders,
modifications and cancels feed the tracker of orders caught by a dropped
session, :mod:`ibkr_connection.inflight`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from eventkit import Event

from ibkr_connection import adapter, codes
from ibkr_connection.clock import Clock, SystemClock, TimerHandle
from ibkr_connection.config import ConnectionConfig, mask_account
from ibkr_connection.errors import (
    AccountError,
    ConnectFailedError,
    FatalConnectError,
    ManagerStoppedError,
    UsageError,
)
from ibkr_connection.inflight import CANCEL, MODIFY, PLACE, GatewayRecord, InFlightOrders
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.journal import JournalWriter, replay_journal
from ibkr_connection.machine import (
    SESSION_STATES,
    ConnectionMachine,
    ConnectionState,
    Transition,
)
from ibkr_connection.subscriptions import (
    AccountUpdatesSubscription,
    CallableSubscription,
    MarketDataSubscription,
    PnLSubscription,
    Subscription,
    SubscriptionRegistry,
)

logger = logging.getLogger(__name__)

_S = TypeVar("_S", bound=Subscription)

#: States in which requests and orders can be sent.
USABLE_STATES = (ConnectionState.CONNECTED, ConnectionState.DEGRADED)


class ConnectionManager:
    """Keeps one ``IB`` connected, through a deterministic state machine.

    Args:
        ib: the ``ib_insync.IB`` (or ``ib_async.IB``) object to drive.
        config: where and how to connect.
        clock: the injected clock (the system clock by default).
        journal: a path or open text file for a JSON Lines journal of every
            input and transition, for ``ibkr-connection replay``.

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
    ) -> None:
        self.ib = ib
        self.config = config or ConnectionConfig()
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
        #: The account selected for this session.
        self.account = ""
        self._driver = _Driver(self)
        self._machine = ConnectionMachine(
            self._driver, self._clock, port=self.config.port,
            client_ids=self.config.client_ids, policy=self.config.policy,
            record_journal=journal is not None,
        )
        self._machine.add_listener(self._on_transition)
        self._stopped = False
        self._waiters: list[
            tuple[frozenset[ConnectionState], asyncio.Future[ConnectionState]]] = []
        self._failure: Exception | None = None
        self._journal: JournalWriter | None = None
        if journal is not None:
            self._open_journal(journal)
        self._allow_orders: Callable[[], None] | None = None
        if self.config.readonly:
            self._allow_orders = adapter.refuse_orders(
                ib, "the session is read-only (readonly=True / IBKR_READONLY)")
        ib.errorEvent += self._on_ib_error
        ib.disconnectedEvent += self._on_ib_disconnected
        ib.newOrderEvent += self._on_new_order
        ib.orderModifyEvent += self._on_order_modified
        ib.cancelOrderEvent += self._on_cancel_requested
        self._unwatch_ids = adapter.watch_request_ids(ib, self._driver.note_request_id)
        self._unquiet_logs: Callable[[], None] | None = None
        if self.config.quiet_client_logs:
            self._unquiet_logs = adapter.manage_client_logs(
                ib, lambda code: codes.lookup(code) is not None)

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The machine's current state."""
        return self._machine.state

    @property
    def transcript(self) -> list[Transition]:
        """The changes of state so far (the most recent ``transcript_limit``, 10,000)."""
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
    def stopped(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopped

    @property
    def order_id_high_water(self) -> int:
        """The lowest order id this manager will let the client hand out next."""
        return self._driver.high_water

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Connect and return once the session is usable.

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
        self._check_not_stopped()
        if self.usable:
            return
        self._failure = None
        self._feed(Input(InputKind.CONNECT, message="start() called"))
        state = await self.wait_for(*USABLE_STATES, ConnectionState.FAILED, timeout=timeout)
        if state is ConnectionState.FAILED:
            raise self._failure_error()

    async def stop(self) -> None:
        """Disconnect; no reconnect ever happens after this. Idempotent."""
        if self._stopped:
            return
        self._feed(Input(InputKind.DISCONNECT, message="stop() called"))
        self._stopped = True
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

    def _release(self) -> None:
        self.ib.errorEvent -= self._on_ib_error
        self.ib.disconnectedEvent -= self._on_ib_disconnected
        self.ib.newOrderEvent -= self._on_new_order
        self.ib.orderModifyEvent -= self._on_order_modified
        self.ib.cancelOrderEvent -= self._on_cancel_requested
        self._unwatch_ids()
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
        """Blocking twin of :meth:`start`, for scripts (runs the event loop).

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
        """Blocking twin of :meth:`stop`.

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
        targets = frozenset(states)
        if self._machine.state in targets:
            return self._machine.state
        self._check_not_stopped()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ConnectionState] = loop.create_future()
        waiter = (targets, future)
        self._waiters.append(waiter)
        # A timer rather than asyncio.wait_for: the listener's set_result then
        # wakes this task in one loop turn instead of two.
        timer = None if timeout is None else loop.call_later(
            timeout, self._expire_waiter, future, targets, timeout)
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
        self.subscriptions.add(sub)
        if self.usable or self._machine.state is ConnectionState.LOST:
            self.subscriptions.issue_one(self.ib, sub, fresh_session=True)
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
        if self._stopped and inp.kind is not InputKind.DISCONNECT:
            logger.debug("manager stopped: %s dropped", inp.kind.value)
            return self._machine.state
        try:
            self._machine.handle(inp)
        except Exception:
            logger.exception("the machine failed to handle %s", inp)
        if self._journal is not None:
            self._flush_journal()
        return self._machine.state

    def _on_ib_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        info = codes.lookup(code)
        if info is None:
            if req_id < 0:
                logger.warning("IB code %d (not in the code table, no state change): %s",
                               code, message)
            return
        logger.log(info.level, "IB %d (%s): %s", code, info.meaning, message)
        inp = codes.classify(code, message)
        if inp is not None:
            self._feed(inp)

    def _on_ib_disconnected(self) -> None:
        if self._driver.attempt_running:
            # The attempt reports its own failure, with the right classification.
            return
        self._feed(Input(InputKind.SOCKET_CLOSED, message="API socket closed"))

    def _on_new_order(self, trade: Any) -> None:
        order_id = int(getattr(trade.order, "orderId", 0) or 0)
        if order_id >= self._driver.high_water:
            self._driver.high_water = order_id + 1
        self.in_flight.sent(trade, PLACE)

    def _on_order_modified(self, trade: Any) -> None:
        self.in_flight.sent(trade, MODIFY)

    def _on_cancel_requested(self, trade: Any) -> None:
        self.in_flight.sent(trade, CANCEL)

    def _on_transition(self, transition: Transition) -> None:
        if transition.dest is ConnectionState.FAILED and self._failure is None:
            self._failure = self._driver.last_error
        if transition.source in SESSION_STATES and transition.dest not in SESSION_STATES:
            self._orders_session_ended()
        self.stateChangeEvent.emit(transition)
        if transition.source is ConnectionState.CONNECTING and transition.dest in SESSION_STATES:
            self._resolve_orders()
        for targets, future in list(self._waiters):
            if transition.dest in targets and not future.done():
                future.set_result(transition.dest)

    def _orders_session_ended(self) -> None:
        trades = self.in_flight.session_ended()
        if trades:
            adapter.forget_trades(self.ib, trades)
            self.ordersUncertainEvent.emit(trades)

    def _resolve_orders(self) -> None:
        if not self.in_flight.uncertain:
            return
        # The startup sync just completed: ib.trades() and ib.fills() are the
        # gateway's record. A read-only session's sync skipped the orders.
        record = GatewayRecord(self.ib.trades(), self.ib.fills(),
                               client_id=self._machine.client_id,
                               orders_synced=not self.config.readonly)
        for trade, outcome in self.in_flight.resolve(record):
            self.orderResolvedEvent.emit(trade, outcome)

    # -- errors ---------------------------------------------------------------------

    def _check_not_stopped(self) -> None:
        if self._stopped:
            raise ManagerStoppedError(
                "this ConnectionManager was stopped; create a new one to connect again"
            )

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
        self._journal = JournalWriter(journal, self.config, self._clock)

    def _flush_journal(self) -> None:
        if self._journal is None:
            return
        self._journal.write(self._machine.journal)
        self._machine.journal.clear()


class _Driver:
    """The machine's effects, performed on asyncio: tasks, timers, socket."""

    def __init__(self, manager: ConnectionManager) -> None:
        self._m = manager
        self._attempt_task: asyncio.Task[None] | None = None
        self._retry: TimerHandle | None = None
        self._restore: TimerHandle | None = None
        self._heartbeat: TimerHandle | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._heartbeat_on = False
        self._last_count = -1
        self._last_activity = 0.0
        self._fresh_session = True
        self._pending_account_request = ""
        self.high_water = 0
        self.last_error: Exception | None = None

    @property
    def attempt_running(self) -> bool:
        task = self._attempt_task
        return task is not None and not task.done()

    # -- attempts -------------------------------------------------------------------

    def start_attempt(self, attempt: int, client_id: int, port: int) -> None:
        self._cancel_attempt()
        self._attempt_task = asyncio.ensure_future(self._attempt(attempt, client_id, port))

    async def _attempt(self, attempt: int, client_id: int, port: int) -> None:
        manager = self._m
        config = manager.config
        ib = manager.ib
        logger.info("attempt %d: connecting to %s:%d with client id %d",
                    attempt, config.host, port, client_id)
        try:
            if adapter.transport_open(ib):
                await adapter.wait_transport_closed(ib)
            await adapter.connect_session(
                ib, host=config.host, port=port, client_id=client_id,
                timeout=config.connect_timeout, readonly=config.readonly,
                account=config.account,
            )
            account = self._choose_account()
        except asyncio.CancelledError:
            raise
        except AccountError as exc:
            self.last_error = exc
            self._attempt_task = None
            logger.error("attempt %d: %s; not retrying", attempt, exc)
            # The fatal error goes in before the socket is closed: the close
            # that follows must meet ``failed`` (where it is ignored), never
            # ``connecting`` (where it would read as a dead gateway).
            manager._feed(Input(InputKind.FATAL_ERROR, message=str(exc)))
            adapter.safe_disconnect(ib)
            return
        except Exception as exc:
            self._attempt_task = None
            self._attempt_failed(exc)
            return
        self._attempt_task = None
        manager.account = account
        self._pending_account_request = account if account != config.account and len(
            adapter.managed_accounts(ib)) > 1 else ""
        self._fresh_session = True
        self._apply_high_water()
        manager._feed(Input(InputKind.ATTEMPT_SUCCEEDED, message=(
            f"connected to {config.host}:{port} as client {client_id}, account "
            f"{self._show(account)}"
        )))

    def _attempt_failed(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):
            costly, what = False, "connection refused"
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            costly, what = True, "timed out"
        elif isinstance(exc, adapter.SyncIncompleteError):
            costly, what = True, "startup sync incomplete"
        elif isinstance(exc, ConnectionError):
            costly, what = True, "socket broke during the handshake or sync"
        elif isinstance(exc, OSError):
            costly, what = False, "socket error"
        else:
            costly, what = True, "unexpected error"
            logger.error("connection attempt raised %r", exc, exc_info=exc)
        self.last_error = exc
        # Classified failure first, then the close (which ``backoff`` ignores).
        self._m._feed(Input(InputKind.ATTEMPT_FAILED, message=f"{what}: {exc!r}", costly=costly))
        adapter.safe_disconnect(self._m.ib)

    def _choose_account(self) -> str:
        config = self._m.config
        managed = adapter.managed_accounts(self._m.ib)
        if config.account:
            if config.account not in managed:
                raise AccountError(
                    f"account {self._show(config.account)} is not managed by this login "
                    f"(managed: {', '.join(self._show(a) for a in managed) or 'none'})"
                )
            return config.account
        if len(managed) == 1:
            return managed[0]
        if not managed:
            raise AccountError("the gateway reported no managed accounts")
        if config.account_fallback == "first":
            return managed[0]
        raise AccountError(
            f"this login manages {len(managed)} accounts "
            f"({', '.join(self._show(a) for a in managed)}); set the account "
            "(IBKR_ACCOUNT) or account_fallback='first'"
        )

    def _show(self, account: str) -> str:
        return mask_account(account) if self._m.config.mask_accounts else account

    def _cancel_attempt(self) -> None:
        task = self._attempt_task
        self._attempt_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def note_request_id(self, next_id: int) -> None:
        """Raise the high-water mark to the client's counter (read as it is zeroed)."""
        if next_id > self.high_water:
            self.high_water = next_id

    def _apply_high_water(self) -> None:
        ib = self._m.ib
        current = adapter.next_request_id(ib)
        if current < self.high_water:
            logger.warning(
                "gateway's next valid id %d is below the high-water mark %d: "
                "keeping ids moving forward", current, self.high_water,
            )
            adapter.raise_request_id(ib, self.high_water)
        self.high_water = max(self.high_water, current)

    # -- timers -----------------------------------------------------------------------

    def schedule_retry(self, delay: float) -> None:
        self.cancel_retry()
        self._retry = self._m._clock.call_later(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        self._m._feed(Input(InputKind.RETRY_DUE))

    def cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def start_restore_timer(self, timeout: float) -> None:
        self.cancel_restore_timer()
        self._restore = self._m._clock.call_later(timeout, self._restore_due)

    def _restore_due(self) -> None:
        self._restore = None
        self._m._feed(Input(InputKind.RESTORE_TIMEOUT,
                            message="TWS did not restore its link to IB in time"))

    def cancel_restore_timer(self) -> None:
        if self._restore is not None:
            self._restore.cancel()
            self._restore = None

    # -- session ----------------------------------------------------------------------

    def select_account(self) -> None:
        manager = self._m
        logger.info("using account %s", self._show(manager.account))
        if self._pending_account_request:
            # ib_insync subscribes account updates itself only for a single
            # account or an explicit one; with "first" we ask for it.
            try:
                adapter.request_account_updates(manager.ib, self._pending_account_request)
            except (ConnectionError, OSError) as exc:
                logger.warning("account updates request failed: %r", exc)

    def restore_subscriptions(self) -> None:
        manager = self._m
        fresh = self._fresh_session
        self._fresh_session = False
        count = manager.subscriptions.issue_all(manager.ib, fresh)
        if count:
            logger.info("issued %d subscription(s) %s", count,
                        "on the new session" if fresh else "again after data loss")

    # -- heartbeat --------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        self.stop_heartbeat()
        self._heartbeat_on = True
        self._last_count = -1
        self._last_activity = self._m._clock.monotonic()
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        interval = min(0.5, self._m.config.heartbeat_idle / 4)
        self._heartbeat = self._m._clock.call_later(interval, self._tick)

    def _tick(self) -> None:
        if not self._heartbeat_on:
            return
        manager = self._m
        now = manager._clock.monotonic()
        count = adapter.received_messages(manager.ib)
        if count != self._last_count:
            self._last_count = count
            self._last_activity = now
        elif (now - self._last_activity >= manager.config.heartbeat_idle
              and self._probe_task is None):
            self._probe_task = asyncio.ensure_future(self._probe())
        self._schedule_tick()

    async def _probe(self) -> None:
        manager = self._m
        timeout = manager.config.heartbeat_timeout
        started = manager._clock.monotonic()
        try:
            await asyncio.wait_for(manager.ib.reqCurrentTimeAsync(), timeout)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            self._probe_task = None
            if self._heartbeat_on:
                manager._feed(Input(
                    InputKind.HEARTBEAT_MISSED,
                    message=f"no answer to a heartbeat probe within {timeout:g}s",
                ))
            return
        except (ConnectionError, OSError) as exc:
            # The socket is going away; disconnectedEvent reports it.
            logger.debug("heartbeat probe failed: %r", exc)
        else:
            rtt = manager._clock.monotonic() - started
            self._last_activity = manager._clock.monotonic()
            manager.heartbeatEvent.emit(rtt)
        self._probe_task = None

    def stop_heartbeat(self) -> None:
        self._heartbeat_on = False
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        task = self._probe_task
        self._probe_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # -- socket -----------------------------------------------------------------------

    def tear_down(self) -> None:
        self._cancel_attempt()
        ib = self._m.ib
        self.high_water = max(self.high_water, adapter.next_request_id(ib))
        adapter.safe_disconnect(ib)


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


__all__ = ["USABLE_STATES", "ConnectionManager", "replay_journal"]
