"""The seed's broker wrapper, on the connection manager: a book that loses no fill.

:class:`IBKRIBInsyncApi` keeps the surface of the seed's ``IBKRIBInsyncApi``
(``connect() -> bool``, ``disconnect()``, ``handle_callbacks()``, ``orders``,
``positions``, ``lock``) but leaves the connection to a
:class:`~ibkr_connection.manager.ConnectionManager`: ``connected`` is derived
from the machine's state, and once a session was up the manager recovers it in
the background for as long as it takes.

Initial connect versus recovery:
    With a seed-style config the manager is built with an unbounded backoff
    (``max_attempts=None``, the default
    :class:`~ibkr_connection.policy.RecoveryPolicy`), so a session that was
    once up is recovered after any outage (a ConnectionConfig's policy is used
    as given: with ``max_attempts`` set, recovery gives up in ``failed``
    too). ``connect()`` bounds only its own series of attempts: its connect
    input carries an attempt budget (``max_attempts``, 3 as in the seed), and
    the machine's table gives up (``failed``, guard ``retries_left``) once that
    many attempts failed; ``connect()`` then logs "Failed to connect to IBKR"
    and returns False. A session that comes up spends the budget: recovery
    after it follows the policy. A ``connect()`` while the manager already
    recovers waits for it (the table ignores a second connect).

Configs:
    ``config`` is either a :class:`~ibkr_connection.config.ConnectionConfig`,
    used as given (host, port, client id, fallback ids, account and
    ``account_fallback``, readonly, timeouts, policy; ``connect_timeout=``
    and ``policy=`` passed to the wrapper replace the config's), or the
    seed's :class:`Config` (any object with ``IBKR_*`` attributes). Each of
    its attributes is read as the environment variable of the same name
    (IBC, fallback ids, timeouts and ``IBKR_MAX_ATTEMPTS`` included), by
    :meth:`ConnectionConfig.from_env`'s own parser; what it leaves unset is
    completed as the seed did: the first managed account when none is
    configured (``account_fallback="first"``), a 10 s attempt timeout and an
    unbounded recovery policy. Anything else is refused with
    :class:`~ibkr_connection.errors.ConfigError` at construction.

The book:
    :class:`~ibkr_connection.book.OrderBook` keeps ``orders`` (the bot's own
    orders keyed by ``str(orderId)`` as in the seed, other clients' by
    ``"clientId:orderId"``), their fills and commissions, and ``positions``;
    see :mod:`ibkr_connection.book` for its rules. After every session's
    startup sync, the first one included, the book is reconciled against
    ``ib.trades()`` and ``ib.fills()``: ib_insync emits no
    ``execDetailsEvent`` for executions it learns then.

Orders caught by a dropped session:
    When a session ends with an order's latest request (place, modify,
    cancel) unanswered, the manager reports it (``ordersUncertainEvent``);
    the order becomes ``Uncertain`` in the book and
    :attr:`IBKRIBInsyncApi.orderUncertainEvent` tells the bot. The next
    session's startup sync settles it (:mod:`ibkr_connection.inflight`): the
    gateway's status, fills and commissions, or ``NotReceived``
    (:attr:`IBKRIBInsyncApi.orderResolvedEvent`). Nothing is ever re-sent,
    and :meth:`IBKRIBInsyncApi.place_order` refuses an order carrying the id
    of an uncertain or not-received order (placed again, it takes a new id).

Threads:
    Handlers run on the event loop's thread holding :attr:`IBKRIBInsyncApi.lock`;
    other threads read :meth:`IBKRIBInsyncApi.snapshot`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eventkit import Event

from ibkr_connection import adapter
from ibkr_connection.book import DONE_STATUSES, NOT_RECEIVED, UNCERTAIN, OrderBook
from ibkr_connection.clock import Clock
from ibkr_connection.config import (
    ENV_VARIABLES,
    AccountFallback,
    ConnectionConfig,
    mask_account,
)
from ibkr_connection.errors import ConfigError, OrderRejectedError
from ibkr_connection.inflight import PLACE, Resolution
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.manager import ConnectionManager, refuse_inside_loop
from ibkr_connection.outputs import Transition
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import SESSION_STATES, USABLE_STATES, ConnectionState

logger = logging.getLogger(__name__)

#: The seed's attribute names; an object carrying any of them is a seed-style config.
_SEED_NAMES = ("IBKR_HOST", "IBKR_PORT", "IBKR_CLIENT_ID", "IBKR_ACCOUNT", "IBKR_READONLY")


@dataclass(frozen=True)
class Config:
    """The seed's connection settings, validated.

    Each attribute is named after the environment variable
    :meth:`ConnectionConfig.from_env` reads for it and means what that
    variable means (see :data:`~ibkr_connection.config.ENV_VARIABLES`); the
    first five are the seed's own.

    Attributes:
        IBKR_HOST: the gateway's host.
        IBKR_PORT: the gateway's API port.
        IBKR_CLIENT_ID: the API client id (0 to 2147483646).
        IBKR_ACCOUNT: the account to use; empty for the first managed one.
        IBKR_READONLY: read-only session: orders are refused.
        IBKR_FALLBACK_CLIENT_IDS: client ids to use, in order, when
            ``IBKR_CLIENT_ID`` is rejected with 326.
        IBKR_ACCOUNT_FALLBACK: with no account and several managed ones,
            ``"first"`` (the seed's way) takes the first, ``"error"`` fails.
        IBKR_CONNECT_TIMEOUT: seconds for one attempt.
        IBKR_HANDSHAKE_TIMEOUT: seconds the gateway has to answer the API
            handshake once it accepted the socket.
        IBKR_MAX_ATTEMPTS: failed attempts after which the background
            recovery gives up (``failed``); None: never (the seed's way).
        IBKR_IBC_HOST: where IBC's command server runs; None: 127.0.0.1 if
            ``IBKR_IBC_PORT`` is set, else no IBC.
        IBKR_IBC_PORT: IBC's ``CommandServerPort``; None: 7462 if
            ``IBKR_IBC_HOST`` is set, else no IBC. With either, the manager
            restarts a wedged gateway through IBC.

    Raises:
        ConfigError: naming the attribute, if a value is invalid.
    """

    IBKR_HOST: str = "127.0.0.1"
    IBKR_PORT: int = 4002
    IBKR_CLIENT_ID: int = 1
    IBKR_ACCOUNT: str = ""
    IBKR_READONLY: bool = False
    IBKR_FALLBACK_CLIENT_IDS: tuple[int, ...] = ()
    IBKR_ACCOUNT_FALLBACK: AccountFallback = "first"
    IBKR_CONNECT_TIMEOUT: float = 10.0
    IBKR_HANDSHAKE_TIMEOUT: float = 2.0
    IBKR_MAX_ATTEMPTS: int | None = None
    IBKR_IBC_HOST: str | None = None
    IBKR_IBC_PORT: int | None = None

    def __post_init__(self) -> None:
        _connection_config(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read the settings from the environment variables of the same names.

        Every variable :meth:`ConnectionConfig.from_env` reads is read, by
        the same parser, so ``IBKRIBInsyncApi(Config.from_env())`` runs on
        what ``ConnectionConfig.from_env()`` would, except where the seed's
        defaults differ (unset ``IBKR_ACCOUNT_FALLBACK``: ``first``).

        Args:
            environ: the mapping to read (``os.environ`` by default).

        Returns:
            The config; unset variables keep the defaults.

        Raises:
            ConfigError: naming the variable, if a value is invalid.
        """
        env = os.environ if environ is None else environ
        parsed = ConnectionConfig.from_env(env)
        values: dict[str, Any] = {
            "IBKR_HOST": parsed.host, "IBKR_PORT": parsed.port,
            "IBKR_CLIENT_ID": parsed.client_id, "IBKR_ACCOUNT": parsed.account,
            "IBKR_READONLY": parsed.readonly,
            "IBKR_FALLBACK_CLIENT_IDS": parsed.fallback_client_ids,
            "IBKR_CONNECT_TIMEOUT": parsed.connect_timeout,
            "IBKR_HANDSHAKE_TIMEOUT": parsed.handshake_timeout,
            "IBKR_MAX_ATTEMPTS": parsed.policy.backoff.max_attempts,
            "IBKR_IBC_PORT": parsed.ibc_port,
        }
        # Where the seed's default differs from ConnectionConfig's, or "unset"
        # means something, only a variable that is set is taken over.
        if env.get("IBKR_ACCOUNT_FALLBACK") is not None:
            values["IBKR_ACCOUNT_FALLBACK"] = parsed.account_fallback
        if env.get("IBKR_IBC_HOST") is not None:
            values["IBKR_IBC_HOST"] = parsed.ibc_host
        return cls(**values)


def _seed_value(config: object, name: str) -> object:
    """Return ``config``'s attribute ``name``, or None when it is absent or unset.

    The seed's tests build ``MagicMock(spec=Config)`` and set a few
    attributes; such a mock answers every other one with a child mock, which
    stands for "not set" here (the default applies), not for a value.
    """
    value = getattr(config, name, None)
    if type(value).__module__ == "unittest.mock":
        return None
    return value


def _as_text(name: str, value: object) -> str:
    """Write an attribute's value as its environment variable would hold it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if name == "IBKR_FALLBACK_CLIENT_IDS" and isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    raise ConfigError(name, f"must be a number, text or true/false, got {value!r}")


def _connection_config(config: object, *, connect_timeout: float | None = None,
                      policy: RecoveryPolicy | None = None) -> ConnectionConfig:
    """Return the :class:`ConnectionConfig` the wrapper runs on.

    Args:
        config: a ``ConnectionConfig`` (used as given) or a seed-style config
            (an object with any of the seed's ``IBKR_*`` attributes; each
            attribute of :data:`~ibkr_connection.config.ENV_VARIABLES` it has
            is read as that variable, the others keep the defaults).
        connect_timeout: seconds for one attempt; replaces the config's
            when given.
        policy: the background recovery policy; replaces the config's (and
            a seed-style ``IBKR_MAX_ATTEMPTS``) when given (a seed-style
            config: unbounded unless ``IBKR_MAX_ATTEMPTS`` says otherwise).

    Raises:
        ConfigError: ``config`` is neither kind (field ``config``), or a
            setting is invalid (naming it).
    """
    if isinstance(config, ConnectionConfig):
        changes: dict[str, object] = {}
        if connect_timeout is not None:
            changes["connect_timeout"] = connect_timeout
        if policy is not None:
            changes["policy"] = policy
        return config.replace(**changes) if changes else config
    if not any(hasattr(config, name) for name in _SEED_NAMES):
        raise ConfigError("config", (
            "expected a ConnectionConfig, or an object with the seed's attributes "
            f"({', '.join(_SEED_NAMES)}) such as Config; got {type(config).__name__}"
        ))
    # One parser for both: the attributes are read as the variables they are named after.
    environ = {name: _as_text(name, value) for name in ENV_VARIABLES
               if (value := _seed_value(config, name)) is not None}
    overrides: dict[str, object] = {}
    if "IBKR_ACCOUNT_FALLBACK" not in environ:
        # The seed took the first managed account when none was configured.
        overrides["account_fallback"] = "first"
    if connect_timeout is not None:
        overrides["connect_timeout"] = connect_timeout
    if policy is not None:
        overrides["policy"] = policy
    return ConnectionConfig.from_env(environ, **overrides)


class IBKRIBInsyncApi:
    """The seed's broker wrapper, kept connected by a :class:`ConnectionManager`.

    Args:
        config: a :class:`~ibkr_connection.config.ConnectionConfig` (used as
            given), or the seed's :class:`Config` (any object with some of
            ``IBKR_HOST``, ``IBKR_PORT``, ``IBKR_CLIENT_ID``, ``IBKR_ACCOUNT``,
            ``IBKR_READONLY``, and optionally the other attributes of
            :class:`Config`; the first managed account is used when none
            is configured).
        ib: the ``ib_insync.IB`` to use (a new one by default).
        max_attempts: failed attempts after which :meth:`connect` gives up.
        max_completed_orders: completed orders kept in :attr:`orders`; older
            ones are pruned first.
        policy: the background recovery policy (default: a ConnectionConfig's,
            else unbounded); replaces a ConnectionConfig's when given.
        connect_timeout: seconds for one attempt (default: a
            ConnectionConfig's, else 10); replaces a ConnectionConfig's when given.
        clock: the manager's injected clock (the system clock by default), as
            :class:`ConnectionManager`'s ``clock``.

    Raises:
        ConfigError: ``config`` is neither kind (field ``config``), or a
            setting is invalid (naming it).

    Attributes:
        ib: the ``IB`` object.
        config: the :class:`ConnectionConfig` the manager runs on.
        manager: the connection manager driving ``ib``.
        book: the :class:`~ibkr_connection.book.OrderBook` behind
            :attr:`orders`, :attr:`positions` and :attr:`lock`.
        account_id: the account in use (learnt at connect if not configured).

    Events:
        orderUncertainEvent (entry: dict, request: str): a session ended before
            the gateway answered the order's latest request (``place``,
            ``modify`` or ``cancel``); its entry's status is now
            ``Uncertain``. Nothing is re-sent; wait for its resolution.
        orderResolvedEvent (entry: dict, outcome: Resolution): the next
            session's startup sync settled an uncertain order: its entry now
            has the gateway's status, fills and commissions, or the status
            ``NotReceived`` (the gateway never had it: it may be placed again,
            under a new order id). ``outcome.applied`` says whether the
            unanswered request took effect.
    """

    events = ("orderUncertainEvent", "orderResolvedEvent")

    def __init__(
        self,
        config: object,
        ib: Any = None,
        *,
        max_attempts: int = 3,
        max_completed_orders: int = 1000,
        policy: RecoveryPolicy | None = None,
        connect_timeout: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError("max_attempts", f"must be at least 1, got {max_attempts}")
        if max_completed_orders < 0:
            raise ConfigError("max_completed_orders",
                              f"must not be negative, got {max_completed_orders}")
        self.config = _connection_config(config, connect_timeout=connect_timeout,
                                         policy=policy)
        self.ib: Any = ib if ib is not None else adapter.new_ib()
        self.account_id = self.config.account
        self.max_attempts = max_attempts
        self.book = OrderBook(client_id=self.config.client_id,
                              max_completed_orders=max_completed_orders)
        self._sessions = 0
        self._connect_outcome: asyncio.Future[bool] | None = None
        self.orderUncertainEvent = Event("orderUncertainEvent")
        self.orderResolvedEvent = Event("orderResolvedEvent")
        self.manager = ConnectionManager(self.ib, self.config, clock=clock)
        self.manager.stateChangeEvent += self._on_state_change
        self.manager.ordersUncertainEvent += self._on_orders_uncertain
        self.manager.orderResolvedEvent += self._on_order_resolved
        self._setup_event_handlers()

    # -- settings and state -----------------------------------------------------------

    @property
    def host(self) -> str:
        """The gateway's host."""
        return self.config.host

    @property
    def port(self) -> int:
        """The gateway's API port (as configured; a 1300 may move the session)."""
        return self.config.port

    @property
    def client_id(self) -> int:
        """The configured API client id (a fallback id may be in use: ``book.client_id``)."""
        return self.config.client_id

    @property
    def readonly(self) -> bool:
        """True for a read-only session: orders and cancels are refused."""
        return self.config.readonly

    @property
    def read_only(self) -> bool:
        """The seed's name for :attr:`readonly` (an alias, kept for the seed's code)."""
        return self.config.readonly

    @property
    def max_completed_orders(self) -> int:
        """Completed orders kept in :attr:`orders`; older ones are pruned first."""
        return self.book.max_completed_orders

    @property
    def orders(self) -> dict[str, dict[str, Any]]:
        """The book's orders, the bot's own keyed by ``str(orderId)`` (see the book module)."""
        return self.book.orders

    @property
    def positions(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The book's positions, keyed by ``(account, conId)``."""
        return self.book.positions

    @property
    def lock(self) -> threading.RLock:
        """Held by every handler; hold it to read the book from another thread."""
        return self.book.lock

    @property
    def state(self) -> ConnectionState:
        """The connection machine's state."""
        return self.manager.state

    @property
    def connected(self) -> bool:
        """True when orders can be sent: the state is ``connected`` or ``degraded``."""
        return self.manager.state in USABLE_STATES

    @property
    def next_order_id(self) -> int:
        """The order id the client hands out next (never below the manager's high water)."""
        return max(adapter.next_request_id(self.ib), self.manager.order_id_high_water)

    # -- connection -------------------------------------------------------------------

    def connect(self) -> bool:
        """Connect to TWS / IB Gateway (runs the event loop).

        Returns:
            True once connected; False after ``max_attempts`` failed attempts
            or a fatal error (logged as "Failed to connect to IBKR").

        Raises:
            UsageError: if called while the event loop runs (from a handler).
        """
        refuse_inside_loop("connect()", "await api.connect_async()")
        begun: list[asyncio.Future[bool]] = []

        async def begin() -> bool:
            if self.connected:
                return True
            begun.append(self._begin_connect())
            return await self._await_connect(begun[0])

        while True:
            try:
                if begun:
                    return bool(self.ib.run(self._await_connect(begun[0])))
                return bool(self.ib.run(begin()))
            except (ConnectionError, OSError) as exc:
                # ib_insync's run() cancels its task when a socket closes; the
                # outcome future survives (shielded), so wait for it again.
                logger.debug("connect: the loop run was interrupted by %r", exc)

    async def connect_async(self) -> bool:
        """Connect; the async twin of :meth:`connect`.

        Returns:
            True once connected; False after ``max_attempts`` failed attempts
            or a fatal error (logged as "Failed to connect to IBKR").
        """
        if self.connected:
            return True
        return await self._await_connect(self._begin_connect())

    def _begin_connect(self) -> asyncio.Future[bool]:
        outcome = self._connect_outcome
        if outcome is not None and not outcome.done():
            return outcome  # a connect is already under way: join it
        outcome = asyncio.get_running_loop().create_future()
        self._connect_outcome = outcome
        logger.info("Connecting to IBKR at %s:%d with client ID %d",
                    self.host, self.port, self.client_id)
        # The give-up is the table's: the series' attempt budget rides on the input.
        self.manager.feed(Input(InputKind.CONNECT, message="connect() called",
                                attempts=self.max_attempts))
        return outcome

    async def _await_connect(self, outcome: asyncio.Future[bool]) -> bool:
        ok = await asyncio.shield(outcome)
        if self._connect_outcome is outcome:
            self._connect_outcome = None
            if not ok:
                await self._give_up()
        return ok

    async def _give_up(self) -> None:
        last = self.manager.transcript[-1] if self.manager.transcript else None
        cause = last.cause if last is not None else "unknown"
        logger.error("Failed to connect to IBKR at %s:%d after %d attempt(s): %s",
                     self.host, self.port, last.attempt if last is not None else 0, cause)
        await adapter.wait_transport_closed(self.ib)

    def disconnect(self) -> None:
        """Disconnect from TWS / IB Gateway; no reconnect follows (runs the event loop).

        Raises:
            UsageError: if called while the event loop runs (from a handler).
        """
        refuse_inside_loop("disconnect()", "await api.disconnect_async()")
        try:
            self.ib.run(self.disconnect_async())
        except (ConnectionError, OSError) as exc:
            logger.debug("disconnect: the loop run was interrupted by %r", exc)

    async def disconnect_async(self) -> None:
        """Disconnect; the async twin of :meth:`disconnect`."""
        outcome, self._connect_outcome = self._connect_outcome, None
        if outcome is not None and not outcome.done():
            outcome.set_result(False)
        was = self.manager.state
        self.manager.feed(Input(InputKind.DISCONNECT, message="disconnect() called"))
        await adapter.wait_transport_closed(self.ib)
        if was is not ConnectionState.DISCONNECTED:
            logger.info("Disconnected from IBKR")

    def handle_callbacks(self, timeout: float = 0) -> None:
        """Run the event loop for ``timeout`` seconds: process IB messages and recovery.

        Call it periodically from a sync bot, in every state: reconnects are
        driven by the loop. A dropped socket is logged, never raised.

        Args:
            timeout: seconds to run the loop (0: process what is ready).

        Raises:
            UsageError: if called while the event loop runs (from a handler).
        """
        refuse_inside_loop("handle_callbacks()", "await asyncio.sleep() in a coroutine")
        try:
            self.ib.sleep(timeout)
        except (ConnectionError, OSError) as exc:
            logger.info("connection dropped while handling callbacks (%r); state %s",
                        exc, self.manager.state.value)

    def _on_state_change(self, transition: Transition) -> None:
        dest = transition.dest
        if dest is ConnectionState.CONNECTING:
            # The machine picked this attempt's client id (a fallback after a
            # 326); the startup sync's events are booked against it.
            self.book.client_id = self.manager.machine.client_id
        elif transition.source is ConnectionState.CONNECTING and dest in SESSION_STATES:
            self.account_id = self.manager.account or self.account_id
            self._reconcile(after_reconnect=self._sessions > 0)
            self._sessions += 1
        outcome = self._connect_outcome
        if outcome is None or outcome.done():
            return
        if dest in USABLE_STATES:
            shown = (mask_account(self.account_id) if self.manager.config.mask_accounts
                     else self.account_id)
            logger.info("Successfully connected to IBKR, account %s", shown)
            outcome.set_result(True)
        elif dest is ConnectionState.FAILED:
            outcome.set_result(False)
        elif dest is ConnectionState.BACKOFF:
            # IB's own messages (a 326's) end in a full stop: one before "Retrying", not two.
            logger.warning("Connection attempt %d failed: %s. Retrying...",
                           transition.attempt, transition.cause.rstrip("."))
        elif dest is ConnectionState.DISCONNECTED:
            outcome.set_result(False)

    def _reconcile(self, *, after_reconnect: bool) -> None:
        """Book what this session's startup sync learnt and the book misses."""
        done = self.book.reconcile(self.ib.trades(), self.ib.fills(),
                                   after_reconnect=after_reconnect)
        when = "after reconnect" if after_reconnect else "at start-up"
        if done.fills or done.commissions or done.statuses:
            logger.info("reconciled %s: %d fill(s), %d commission(s) and %d final "
                        "status(es) booked", when, done.fills, done.commissions, done.statuses)
        else:
            logger.info("reconciled %s: nothing was missing", when)

    # -- orders -----------------------------------------------------------------------

    def place_order(self, contract: Any, order: Any) -> Any:
        """Send an order and record it in :attr:`orders` under ``str(orderId)``.

        Args:
            contract: the ib_insync ``Contract``.
            order: the ib_insync ``Order``.

        Returns:
            The ib_insync ``Trade``.

        Raises:
            OrderRejectedError: read-only session, the state is not
                ``connected`` / ``degraded``, the order carries the id of an
                ``Uncertain`` or ``NotReceived`` order, or the socket is gone
                (nothing was sent).
            UsageError: the contract or order comes from another client
                library than :attr:`ib` (ib_async's with ib_insync's ``IB``).
        """
        self._check_can_send("order")
        adapter.check_same_backend(self.ib, contract, order)
        self._check_id_free(order)
        try:
            trade = self.ib.placeOrder(contract, order)
        except ConnectionError as exc:
            # The client refuses before writing anything: nothing was sent.
            raise OrderRejectedError(f"order refused: {exc}") from exc
        key = self.book.on_order_placed(trade)
        logger.info("Order %s placed: %s %s %s", key, trade.order.action,
                    trade.order.totalQuantity, getattr(contract, "symbol", ""))
        return trade

    def cancel_order(self, order_id: int | str) -> Any:
        """Cancel a working order of this client.

        Args:
            order_id: the order's id (as in :attr:`orders`).

        Returns:
            The ib_insync ``Trade``.

        Raises:
            OrderRejectedError: read-only session, the state is not
                ``connected`` / ``degraded``, or the order is not working.
        """
        self._check_can_send("cancel")
        wanted = int(order_id)
        own = self.book.client_id
        for trade in self.ib.openTrades():
            # A master session's open trades include other clients' orders,
            # whose order ids may equal ours.
            if int(trade.order.orderId) == wanted and int(trade.order.clientId) == own:
                try:
                    self.ib.cancelOrder(trade.order)
                except ConnectionError as exc:
                    raise OrderRejectedError(f"cancel refused: {exc}") from exc
                logger.info("Order %s: cancel requested", wanted)
                return trade
        raise OrderRejectedError(f"order {wanted} is not a working order of this client")

    def _check_id_free(self, order: Any) -> None:
        """Refuse an order carrying the id of an uncertain or not-received order."""
        order_id = int(getattr(order, "orderId", 0) or 0)
        if order_id <= 0:
            return
        with self.book.lock:
            key = self.book.find(order_id=order_id)
            status = self.book.orders[key]["status"] if key is not None else ""
        if status == UNCERTAIN:
            raise OrderRejectedError(
                f"order {order_id} is Uncertain: the gateway may have it; wait for "
                "orderResolvedEvent before placing or modifying it (nothing is sent twice)")
        if status == NOT_RECEIVED:
            raise OrderRejectedError(
                f"order {order_id} was not received by IB and its id is never reused; to "
                "place it again, send it as a new order (order.orderId = 0)")

    def _check_can_send(self, what: str) -> None:
        if self.readonly:
            raise OrderRejectedError(
                f"{what} refused: the session is read-only (readonly / IBKR_READONLY)")
        state = self.manager.state
        if state not in USABLE_STATES:
            raise OrderRejectedError(
                f"{what} refused: the connection is {state.value}, not connected or degraded"
            )

    # -- the book ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return a deep copy of the book, taken under the lock (for other threads).

        Returns:
            ``{"orders": ..., "positions": ...}``.
        """
        return self.book.snapshot()

    def _setup_event_handlers(self) -> None:
        ib = self.ib
        book = self.book
        ib.orderStatusEvent += book.on_order_status
        ib.execDetailsEvent += book.on_execution
        ib.commissionReportEvent += self._on_commission_report
        ib.positionEvent += book.on_position
        ib.updatePortfolioEvent += book.on_portfolio
        ib.errorEvent += self._on_error

    def _on_orders_uncertain(self, trades: list[Any]) -> None:
        for trade in trades:
            flight = self.manager.in_flight.flight(trade)
            request = flight.request if flight is not None else PLACE
            key = self.book.mark_uncertain(trade, request)
            if key is not None:
                self.orderUncertainEvent.emit(self.book.orders[key], request)

    def _on_order_resolved(self, trade: Any, outcome: Resolution) -> None:
        key = self.book.resolve(trade, outcome)
        if key is not None:
            self.orderResolvedEvent.emit(self.book.orders[key], outcome)

    def _on_commission_report(self, trade: Any, fill: Any, report: Any) -> None:
        self.book.on_commission(fill, report)

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        # System codes (req_id -1) are the manager's: it logs and classifies them.
        if req_id >= 0:
            self.book.on_order_error(req_id, code, message)


__all__ = ["DONE_STATUSES", "Config", "IBKRIBInsyncApi"]
