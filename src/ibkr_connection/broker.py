"""The seed's broker wrapper, on the connection manager: a book that loses no fill.

:class:`IBKRIBInsyncApi` keeps the surface of the seed's ``IBKRIBInsyncApi``
(``connect() -> bool``, ``disconnect()``, ``handle_callbacks()``, ``orders``,
``positions``, ``lock``) but leaves the connection to a
:class:`~ibkr_connection.manager.ConnectionManager`: ``connected`` is derived
from the machine's state, and once a session was up the manager recovers it in
the background for as long as it takes.

Initial connect versus recovery:
    The manager is built with an unbounded backoff (``max_attempts=None``, the
    default :class:`~ibkr_connection.policy.RecoveryPolicy`), so a session that
    was once up is recovered after any outage. ``connect()`` bounds only its
    own call: it counts the failed attempts it sees on ``stateChangeEvent``
    (moves into ``backoff`` or ``failed``) and, after ``max_attempts`` of them
    (3, as in the seed), feeds a ``disconnect`` to the manager, logs "Failed to
    connect to IBKR" and returns False. The machine's table is untouched.

The book:
    ``orders`` is keyed by ``str(orderId)`` as in the seed; every fill and
    commission is unique by execution id, keyed by the execution's own order
    id (the trade ib_insync hands over after a gateway-side drop is rebuilt
    with order id 0). ib_insync emits no ``execDetailsEvent`` for executions it
    learns during the startup sync, so after every reconnect the book is
    reconciled against ``ib.fills()``. ``positions`` is keyed by
    ``(account, conId)``.

Threads:
    Handlers run on the event loop's thread holding :attr:`IBKRIBInsyncApi.lock`;
    other threads read :meth:`IBKRIBInsyncApi.snapshot`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ibkr_connection import adapter
from ibkr_connection.config import ConnectionConfig, mask_account
from ibkr_connection.errors import ConfigError, OrderRejectedError, UsageError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionState, Transition
from ibkr_connection.manager import USABLE_STATES, ConnectionManager
from ibkr_connection.policy import RecoveryPolicy

logger = logging.getLogger(__name__)

#: Order statuses after which IB sends nothing more for the order.
DONE_STATUSES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive"})

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: States in which the API socket is up: a move into one of them from
#: ``connecting`` is a new session.
_SESSION_UP = (ConnectionState.CONNECTED, ConnectionState.DEGRADED, ConnectionState.LOST)


@dataclass(frozen=True)
class Config:
    """The seed's connection settings, validated.

    Attributes:
        IBKR_HOST: the gateway's host.
        IBKR_PORT: the gateway's API port.
        IBKR_CLIENT_ID: the API client id (not negative).
        IBKR_ACCOUNT: the account to use; empty for the first managed one.
        IBKR_READONLY: read-only session: orders are refused.

    Raises:
        ConfigError: naming the attribute, if a value is invalid.
    """

    IBKR_HOST: str = "127.0.0.1"
    IBKR_PORT: int = 4002
    IBKR_CLIENT_ID: int = 1
    IBKR_ACCOUNT: str = ""
    IBKR_READONLY: bool = False

    def __post_init__(self) -> None:
        _settings_of(self)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read the settings from the environment variables of the same names.

        Args:
            environ: the mapping to read (``os.environ`` by default).

        Returns:
            The config; unset variables keep the defaults.

        The other ``IBKR_*`` variables of :meth:`ConnectionConfig.from_env` are
        validated but not used here: pass ``connect_timeout=`` or ``policy=``
        to :class:`IBKRIBInsyncApi` instead.

        Raises:
            ConfigError: naming the variable, if a value is invalid.
        """
        parsed = ConnectionConfig.from_env(environ)
        return cls(
            IBKR_HOST=parsed.host, IBKR_PORT=parsed.port, IBKR_CLIENT_ID=parsed.client_id,
            IBKR_ACCOUNT=parsed.account, IBKR_READONLY=parsed.readonly,
        )


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(name, f"must be an integer, got {value!r}")


def _readonly(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in _TRUE | _FALSE:
            raise ConfigError("IBKR_READONLY", f"must be true or false, got {value!r}")
        return text in _TRUE
    # Absent (None) or not set on a MagicMock(spec=Config): the seed's default.
    return False


def _settings_of(config: object) -> tuple[str, int, int, str, bool]:
    """Read and validate the seed's attributes from any object carrying them."""
    host = getattr(config, "IBKR_HOST", "127.0.0.1")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError("IBKR_HOST", f"must be a non-empty host name, got {host!r}")
    port = _integer("IBKR_PORT", getattr(config, "IBKR_PORT", 4002))
    if not 0 < port < 65536:
        raise ConfigError("IBKR_PORT", f"must be between 1 and 65535, got {port}")
    client_id = _integer("IBKR_CLIENT_ID", getattr(config, "IBKR_CLIENT_ID", 1))
    if client_id < 0:
        raise ConfigError("IBKR_CLIENT_ID", f"must not be negative, got {client_id}")
    account = getattr(config, "IBKR_ACCOUNT", "")
    if not isinstance(account, str):
        account = ""
    readonly = _readonly(getattr(config, "IBKR_READONLY", False))
    return host.strip(), port, client_id, account.strip(), readonly


def _number(value: Any) -> float:
    """Return ``value`` as a float, 0.0 for IB's unset values (NaN, None)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(number) or abs(number) >= 1e300 else number


class IBKRIBInsyncApi:
    """The seed's broker wrapper, kept connected by a :class:`ConnectionManager`.

    Args:
        config: a :class:`Config`, or any object with ``IBKR_HOST``,
            ``IBKR_PORT``, ``IBKR_CLIENT_ID`` (and optionally ``IBKR_ACCOUNT``,
            ``IBKR_READONLY``).
        ib: the ``ib_insync.IB`` to use (a new one by default).
        max_attempts: failed attempts after which :meth:`connect` gives up.
        max_completed_orders: completed orders kept in :attr:`orders`; older
            ones are pruned first.
        policy: the background recovery policy (unbounded by default).
        connect_timeout: seconds for one attempt.

    Raises:
        ConfigError: naming the field, if a setting is invalid.

    Attributes:
        ib: the ``IB`` object.
        manager: the connection manager driving ``ib``.
        account_id: the account in use (learnt at connect if not configured).
        orders: ``str(orderId)`` -> order entry (status, filled, remaining,
            executions, commissions, errors, ...).
        positions: ``(account, conId)`` -> position entry.
        lock: held by every handler; hold it to read the book from another thread.
    """

    def __init__(
        self,
        config: object,
        ib: Any = None,
        *,
        max_attempts: int = 3,
        max_completed_orders: int = 1000,
        policy: RecoveryPolicy | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError("max_attempts", f"must be at least 1, got {max_attempts}")
        if max_completed_orders < 0:
            raise ConfigError("max_completed_orders",
                              f"must not be negative, got {max_completed_orders}")
        host, port, client_id, account, readonly = _settings_of(config)
        self.ib: Any = ib if ib is not None else adapter.new_ib()
        self.config = ConnectionConfig(
            host=host, port=port, client_id=client_id, account=account,
            account_fallback="first", readonly=readonly,
            connect_timeout=connect_timeout, policy=policy or RecoveryPolicy(),
        )
        self.host, self.port, self.client_id, self.read_only = host, port, client_id, readonly
        self.account_id = account
        self.max_attempts = max_attempts
        self.max_completed_orders = max_completed_orders
        self.orders: dict[str, dict[str, Any]] = {}
        self.positions: dict[tuple[str, int], dict[str, Any]] = {}
        self.lock = threading.RLock()
        self._completed: OrderedDict[str, None] = OrderedDict()
        # Execution ids outlive pruned orders, so a replay cannot resurrect one.
        self._seen_execs: OrderedDict[str, None] = OrderedDict()
        self._seen_commissions: OrderedDict[str, None] = OrderedDict()
        self._max_seen = max(10 * max_completed_orders, 10_000)
        self._perm_keys: dict[int, str] = {}
        self._sessions = 0
        self._connect_outcome: asyncio.Future[bool] | None = None
        self._failed_attempts = 0
        self.manager = ConnectionManager(self.ib, self.config)
        self.manager.stateChangeEvent += self._on_state_change
        self._setup_event_handlers()

    # -- state ------------------------------------------------------------------------

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
        self._refuse_inside_loop("connect()")
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
        self._failed_attempts = 0
        logger.info("Connecting to IBKR at %s:%d with client ID %d",
                    self.host, self.port, self.client_id)
        self.manager.feed(Input(InputKind.CONNECT, message="connect() called"))
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
                     self.host, self.port, self._failed_attempts, cause)
        if self.manager.state is not ConnectionState.FAILED:
            self.manager.feed(Input(
                InputKind.DISCONNECT,
                message=f"connect() gave up after {self._failed_attempts} attempt(s)",
            ))
        await adapter.wait_transport_closed(self.ib)

    def disconnect(self) -> None:
        """Disconnect from TWS / IB Gateway; no reconnect follows (runs the event loop).

        Raises:
            UsageError: if called while the event loop runs (from a handler).
        """
        self._refuse_inside_loop("disconnect()")
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
        self._refuse_inside_loop("handle_callbacks()")
        try:
            self.ib.sleep(timeout)
        except (ConnectionError, OSError) as exc:
            logger.info("connection dropped while handling callbacks (%r); state %s",
                        exc, self.manager.state.value)

    @staticmethod
    def _refuse_inside_loop(what: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise UsageError(
            f"{what} runs the event loop and cannot be called while it runs (from an "
            "event handler or a coroutine); use the async twin or call it from the bot's "
            "main code"
        )

    def _on_state_change(self, transition: Transition) -> None:
        dest = transition.dest
        if transition.source is ConnectionState.CONNECTING and dest in _SESSION_UP:
            self.account_id = self.manager.account or self.account_id
            if self._sessions:
                self._reconcile()
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
            self._failed_attempts += 1
            outcome.set_result(False)
        elif dest is ConnectionState.BACKOFF:
            self._failed_attempts += 1
            if self._failed_attempts >= self.max_attempts:
                outcome.set_result(False)
            else:
                logger.warning("Connection attempt %d failed: %s. Retrying...",
                               self._failed_attempts, transition.cause)
        elif dest is ConnectionState.DISCONNECTED:
            outcome.set_result(False)

    # -- orders -----------------------------------------------------------------------

    def place_order(self, contract: Any, order: Any) -> Any:
        """Send an order and record it in :attr:`orders`.

        Args:
            contract: the ib_insync ``Contract``.
            order: the ib_insync ``Order``.

        Returns:
            The ib_insync ``Trade``.

        Raises:
            OrderRejectedError: read-only session, or the state is not
                ``connected`` / ``degraded``.
        """
        self._check_can_send("order")
        trade = self.ib.placeOrder(contract, order)
        order_id = int(trade.order.orderId)
        key = str(order_id)
        with self.lock:
            entry = self._entry(key, order_id, trade.contract, trade.order)
            entry["status"] = trade.orderStatus.status
            if trade.order.permId:
                self._perm_keys[int(trade.order.permId)] = key
        logger.info("Order %s placed: %s %s %s", key, trade.order.action,
                    trade.order.totalQuantity, getattr(contract, "symbol", ""))
        return trade

    def cancel_order(self, order_id: int | str) -> Any:
        """Cancel a working order.

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
        for trade in self.ib.openTrades():
            if int(trade.order.orderId) == wanted:
                self.ib.cancelOrder(trade.order)
                logger.info("Order %s: cancel requested", wanted)
                return trade
        raise OrderRejectedError(f"order {wanted} is not a working order of this client")

    def _check_can_send(self, what: str) -> None:
        if self.read_only:
            raise OrderRejectedError(f"{what} refused: the session is read-only (IBKR_READONLY)")
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
        with self.lock:
            return copy.deepcopy({"orders": self.orders, "positions": self.positions})

    def _setup_event_handlers(self) -> None:
        ib = self.ib
        ib.orderStatusEvent += self._on_order_status
        ib.execDetailsEvent += self._on_execution
        ib.commissionReportEvent += self._on_commission_report
        ib.positionEvent += self._on_position
        ib.updatePortfolioEvent += self._on_portfolio
        ib.errorEvent += self._on_error

    def _key(self, order_id: int, perm_id: int) -> str:
        if order_id:
            key = str(order_id)
            if perm_id:
                self._perm_keys[perm_id] = key
            return key
        # Manual TWS orders and rebuilt trades carry order id 0.
        return self._perm_keys.get(perm_id, str(order_id))

    def _entry(self, key: str, order_id: int, contract: Any, order: Any) -> dict[str, Any]:
        entry = self.orders.get(key)
        if entry is None:
            entry = self.orders[key] = {
                "order_id": order_id,
                "perm_id": int(getattr(order, "permId", 0) or 0),
                "symbol": getattr(contract, "symbol", ""),
                "action": getattr(order, "action", ""),
                "quantity": _number(getattr(order, "totalQuantity", 0)),
                "order_type": getattr(order, "orderType", ""),
                "status": "",
                "filled": 0.0,
                "remaining": _number(getattr(order, "totalQuantity", 0)),
                "executions": [],
                "commissions": [],
                "errors": [],
            }
        return entry

    def _set_status(self, key: str, entry: dict[str, Any], status: str) -> None:
        entry["status"] = status
        if status in DONE_STATUSES and key not in self._completed:
            self._completed[key] = None
            while len(self._completed) > self.max_completed_orders:
                old, _ = self._completed.popitem(last=False)
                pruned = self.orders.pop(old, None)
                if pruned is not None:
                    self._perm_keys.pop(pruned["perm_id"], None)

    def _on_order_status(self, trade: Any) -> None:
        status = trade.orderStatus
        with self.lock:
            key = self._key(int(trade.order.orderId), int(status.permId or trade.order.permId))
            entry = self._entry(key, int(trade.order.orderId), trade.contract, trade.order)
            entry["perm_id"] = int(status.permId or entry["perm_id"])
            entry["filled"] = max(entry["filled"], _number(status.filled))
            entry["remaining"] = _number(status.remaining)
            self._set_status(key, entry, status.status)
        logger.debug("Order %s status: %s", key, status.status)

    def _on_execution(self, trade: Any, fill: Any) -> None:
        with self.lock:
            self._apply_fill(trade, fill, recovered=False)

    def _apply_fill(self, trade: Any, fill: Any, *, recovered: bool) -> bool:
        """Book one execution once; return True if it was new. Caller holds the lock."""
        execution = fill.execution
        exec_id = execution.execId
        if exec_id in self._seen_execs:
            return False
        self._remember(self._seen_execs, exec_id)
        order_id = int(execution.orderId or 0)
        key = self._key(order_id, int(execution.permId or 0))
        order = trade.order if trade is not None else None
        entry = self._entry(key, order_id, fill.contract, order)
        entry["executions"].append({
            "time": execution.time,
            "shares": _number(execution.shares),
            "price": _number(execution.price),
            "execution_id": exec_id,
        })
        filled = sum(e["shares"] for e in entry["executions"])
        if filled > entry["filled"]:
            entry["filled"] = filled
            if entry["quantity"]:
                entry["remaining"] = max(entry["quantity"] - filled, 0.0)
        if trade is not None and int(trade.order.orderId or 0) == order_id and not recovered:
            self._set_status(key, entry, trade.orderStatus.status)
        elif entry["quantity"] and entry["remaining"] <= 0:
            self._set_status(key, entry, "Filled")
        logger.log(logging.WARNING if recovered else logging.INFO,
                   "Order %s fill%s: %s shares at %.2f (execution %s)",
                   key, " recovered after reconnect" if recovered else "",
                   execution.shares, execution.price, exec_id)
        return True

    def _on_commission_report(self, trade: Any, fill: Any, report: Any) -> None:
        with self.lock:
            self._apply_commission(fill, report)

    def _apply_commission(self, fill: Any, report: Any) -> bool:
        """Book one commission report once; return True if it was new. Caller holds the lock."""
        exec_id = report.execId or fill.execution.execId
        if not exec_id or exec_id in self._seen_commissions:
            return False
        self._remember(self._seen_commissions, exec_id)
        execution = fill.execution
        order_id = int(execution.orderId or 0)
        key = self._key(order_id, int(execution.permId or 0))
        entry = self._entry(key, order_id, fill.contract, None)
        entry["commissions"].append({
            "execution_id": exec_id,
            "commission": _number(report.commission),
            "currency": report.currency,
            "realized_pnl": _number(report.realizedPNL),
        })
        return True

    def _remember(self, seen: OrderedDict[str, None], exec_id: str) -> None:
        seen[exec_id] = None
        if len(seen) > self._max_seen:
            seen.popitem(last=False)

    def _reconcile(self) -> None:
        """Book every execution the startup sync learnt that the book misses."""
        trades = {int(t.order.permId): t for t in self.ib.trades() if t.order.permId}
        fills = 0
        commissions = 0
        with self.lock:
            for fill in self.ib.fills():
                trade = trades.get(int(fill.execution.permId or 0))
                if self._apply_fill(trade, fill, recovered=True):
                    fills += 1
                report = fill.commissionReport
                if report is not None and report.execId and self._apply_commission(fill, report):
                    commissions += 1
        if fills or commissions:
            logger.info("reconciled after reconnect: %d fill(s) and %d commission(s) "
                        "recovered", fills, commissions)
        else:
            logger.info("reconciled after reconnect: no fill was missed")

    def _position(self, account: str, contract: Any) -> dict[str, Any]:
        key = (account, int(contract.conId))
        entry = self.positions.get(key)
        if entry is None:
            entry = self.positions[key] = {
                "symbol": contract.symbol,
                "quantity": 0.0,
                "avg_price": 0.0,
                "market_price": 0.0,
                "market_value": 0.0,
                "unrealized_pnl": 0.0,
                "realized_pnl": 0.0,
                "account": account,
            }
        return entry

    def _on_position(self, position: Any) -> None:
        with self.lock:
            entry = self._position(position.account, position.contract)
            entry["quantity"] = _number(position.position)
            entry["avg_price"] = _number(position.avgCost)
        logger.debug("Position update: %s %s, avg cost %.2f", position.contract.symbol,
                     position.position, _number(position.avgCost))

    def _on_portfolio(self, item: Any) -> None:
        with self.lock:
            new = (item.account, int(item.contract.conId)) not in self.positions
            entry = self._position(item.account, item.contract)
            if new:
                # positionEvent owns these; until it speaks, the portfolio's are right.
                entry["quantity"] = _number(item.position)
                entry["avg_price"] = _number(item.averageCost)
            entry["market_price"] = _number(item.marketPrice)
            entry["market_value"] = _number(item.marketValue)
            entry["unrealized_pnl"] = _number(item.unrealizedPNL)
            entry["realized_pnl"] = _number(item.realizedPNL)

    def _on_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        # System codes (req_id -1) are the manager's: it logs and classifies them.
        if req_id < 0:
            return
        key = str(req_id)
        with self.lock:
            entry = self.orders.get(key)
            if entry is None:
                return
            entry["errors"].append({"code": code, "message": message})
        logger.warning("Order %s: IB error %d: %s", key, code, message)


__all__ = ["DONE_STATUSES", "Config", "IBKRIBInsyncApi"]
