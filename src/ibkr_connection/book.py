"""The book of a sync bot: orders, fills, commissions and positions, with no I/O.

:class:`OrderBook` is fed the objects ib_insync's events carry (``Trade``,
``Fill``, ``CommissionReport``, ``Position``, ``PortfolioItem``; any object
with the same attribute names will do) and keeps the dictionaries the seed's
wrapper exposes. It opens no socket, runs no event loop and imports no client
library, so every rule below is unit-testable with plain objects.

Keys of :attr:`OrderBook.orders`:
    ``"<orderId>"`` (``str(orderId)``, the seed's key): an order of the
    session's own client id (:attr:`OrderBook.client_id`).
    ``"<clientId>:<orderId>"``, e.g. ``"2:100"``: another API client's order,
    as a master-client or client-0 session sees them (order ids are per
    client, so client 2's order 100 is not the bot's order 100); also an
    order of the bot's own client id whose plain key is taken by another.
    ``"perm:<permId>"``: an order with no API order id (placed by hand in
    TWS), or an earlier order displaced from ``"<orderId>"`` because a new
    order of the bot reuses its id (TWS can reset its id sequence).

Identity:
    An order is found by its permId, else by ``(clientId, orderId)``, never by
    its order id alone (:meth:`OrderBook.find`); orderRef is indexed too
    (:meth:`OrderBook.find_by_ref`; it need not be unique). Executions carry
    all three ids, so a fill or a commission always lands on its own order.

Whole or not at all:
    An entry is created only with its order's details (from a ``Trade``: the
    contract and the order). An execution whose order is not known yet is
    held, and booked as soon as its order is (a status, a reconciliation). A
    commission report that arrives before its execution is booked (ib_insync
    sends commissions of the startup sync, but no execution event for it) is
    held under its execution id and booked with its execution. Both holds are
    bounded, oldest dropped first.

Uncertain orders:
    An order whose request (place, modify, cancel) had no answer when its
    session ended is marked ``Uncertain`` (:meth:`OrderBook.mark_uncertain`,
    told by the connection manager) and keeps that status, whatever arrives
    meanwhile, until it is resolved (:meth:`OrderBook.resolve`, from the next
    session's startup sync): it then takes the gateway's status, fills and
    commissions, or ``NotReceived`` (terminal) if the gateway never had it.
    See :mod:`ibkr_connection.inflight`.

Counted once:
    Every execution and every commission is booked once per execution id;
    the ids outlive pruned orders, so a replay after a reconnect cannot
    resurrect one. Completed orders beyond ``max_completed_orders`` leave the
    book, oldest first.

Threads:
    Every method holds :attr:`OrderBook.lock` (re-entrant); readers on other
    threads take :meth:`OrderBook.snapshot` or hold the lock.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ibkr_connection.positions import PositionBook, number

logger = logging.getLogger(__name__)

#: The book's status of an order whose request had no answer when its session ended.
UNCERTAIN = "Uncertain"
#: The book's status of an uncertain order the gateway never had (terminal).
NOT_RECEIVED = "NotReceived"

#: Order statuses after which nothing more happens to the order (IB's, and NotReceived).
DONE_STATUSES = frozenset({"Filled", "Cancelled", "ApiCancelled", "Inactive", NOT_RECEIVED})

#: An entry of :attr:`OrderBook.orders` (see :meth:`OrderBook.find`).
Entry = dict[str, Any]


class OrderIds(NamedTuple):
    """The ids that name one order at IB.

    Attributes:
        client_id: the API client that placed it (0 for TWS's own orders).
        order_id: its id within that client (0 or less: none).
        perm_id: IB's permanent id (0 until IB assigned it).
    """

    client_id: int
    order_id: int
    perm_id: int


@dataclass(frozen=True)
class Reconciled:
    """What a reconciliation booked.

    Attributes:
        fills: executions booked that the book did not have.
        commissions: commission reports booked that the book did not have.
        statuses: orders whose final status came from the gateway's record.
    """

    fills: int
    commissions: int
    statuses: int


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def execution_ids(execution: Any) -> OrderIds:
    """Return the ids an ``Execution`` names (IB's unset order id counts as none)."""
    order_id = _int(execution.orderId)
    return OrderIds(_int(execution.clientId), order_id if order_id < 2**31 - 1 else 0,
                    _int(execution.permId))


def trade_ids(trade: Any) -> OrderIds:
    """Return the ids a ``Trade`` names (a completed order's carry its permId only)."""
    order, status = trade.order, trade.orderStatus
    return OrderIds(
        _int(getattr(order, "clientId", 0)) or _int(getattr(status, "clientId", 0)),
        _int(order.orderId),
        _int(getattr(status, "permId", 0)) or _int(getattr(order, "permId", 0)),
    )


def _remember(seen: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    seen[key] = value
    seen.move_to_end(key)
    while len(seen) > limit:
        seen.popitem(last=False)


class OrderBook(PositionBook):
    """Orders (with their fills and commissions) and positions, kept from IB's events.

    Args:
        client_id: the session's own API client id: its orders are keyed
            ``str(orderId)``. The owner updates it when the session changes id.
        max_completed_orders: completed orders kept; older ones are pruned first.

    Attributes:
        client_id: the session's own API client id.
        orders: key (see the module docstring) -> order entry: ``order_id``,
            ``client_id``, ``perm_id``, ``order_ref``, ``symbol``, ``action``,
            ``quantity``, ``order_type``, ``status``, ``filled``,
            ``remaining``, ``executions``, ``commissions``, ``errors``.
        positions: ``(account, conId)`` -> position entry.
        lock: held by every method; hold it to read the book from another thread.
    """

    def __init__(self, *, client_id: int = 0, max_completed_orders: int = 1000) -> None:
        self.client_id = client_id
        self.max_completed_orders = max_completed_orders
        self.orders: dict[str, Entry] = {}
        self.positions: dict[tuple[str, int], dict[str, Any]] = {}
        self.lock = threading.RLock()
        self._max_seen = max(10 * max_completed_orders, 10_000)
        self._completed: OrderedDict[str, None] = OrderedDict()
        self._by_perm: dict[int, str] = {}
        self._by_client_order: dict[tuple[int, int], str] = {}
        self._by_ref: dict[str, list[str]] = {}
        # Execution id -> the key it was booked under ("" once its order was pruned).
        self._exec_keys: OrderedDict[str, str] = OrderedDict()
        self._commission_ids: OrderedDict[str, None] = OrderedDict()
        self._commissions_booked = 0
        self._held_fills: OrderedDict[str, tuple[Any, Any, str]] = OrderedDict()
        self._held_commissions: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._pruned_perms: OrderedDict[int, None] = OrderedDict()
        # Key -> the request left unanswered ("place", "modify", "cancel").
        self._uncertain: dict[str, str] = {}

    # -- finding orders ---------------------------------------------------------------

    def find(self, *, perm_id: int = 0, client_id: int | None = None,
             order_id: int = 0) -> str | None:
        """Return the key of the order with these ids, or None.

        Args:
            perm_id: IB's permanent id (tried first).
            client_id: the placing client (default: the session's own).
            order_id: the id within that client.
        """
        with self.lock:
            owner = self.client_id if client_id is None else client_id
            return self._find(OrderIds(owner, order_id, perm_id))

    def find_by_ref(self, order_ref: str) -> list[str]:
        """Return the keys of the orders carrying ``order_ref``, oldest first."""
        with self.lock:
            return list(self._by_ref.get(order_ref, ()))

    @property
    def uncertain(self) -> dict[str, str]:
        """The keys of the ``Uncertain`` orders, each with its unanswered request."""
        with self.lock:
            return dict(self._uncertain)

    @property
    def held_fills(self) -> tuple[str, ...]:
        """Execution ids held until their order's details are known."""
        with self.lock:
            return tuple(self._held_fills)

    @property
    def held_commissions(self) -> tuple[str, ...]:
        """Execution ids whose commission is held until the execution is booked."""
        with self.lock:
            return tuple(self._held_commissions)

    def snapshot(self) -> dict[str, Any]:
        """Return a deep copy of ``{"orders": ..., "positions": ...}``, taken under the lock."""
        with self.lock:
            return copy.deepcopy({"orders": self.orders, "positions": self.positions})

    def _find(self, ids: OrderIds) -> str | None:
        if ids.perm_id:
            key = self._by_perm.get(ids.perm_id)
            if key is not None:
                return key
        if ids.order_id > 0:
            key = self._by_client_order.get((ids.client_id, ids.order_id))
            if key is not None:
                perm = self.orders[key]["perm_id"]
                # The same (client, order id) with another permId is another
                # order: TWS reused the id after a reset of its id sequence.
                if not (ids.perm_id and perm and perm != ids.perm_id):
                    return key
        return None

    # -- orders -----------------------------------------------------------------------

    def on_order_placed(self, trade: Any) -> str:
        """Book an order the bot has just sent (or modified); return its key, ``str(orderId)``."""
        order = trade.order
        ids = OrderIds(self.client_id, _int(order.orderId), _int(order.permId))
        with self.lock:
            key = self._find(ids)
            if key is not None and self.orders[key]["status"] in DONE_STATUSES:
                # A done order cannot be modified: this is a new order reusing
                # the id (TWS reset its id sequence). Like ib_insync, any other
                # placement under a known id is a modification.
                key = None
            if key is None:
                key = str(ids.order_id)
                self._make_room(key)
                self._create(key, ids, trade)
            else:
                entry = self.orders[key]
                self._learn_perm(key, entry, ids.perm_id)
                entry["quantity"] = number(order.totalQuantity)
                entry["order_type"] = order.orderType
                entry["remaining"] = max(entry["quantity"] - entry["filled"], 0.0)
            self._set_status(key, trade.orderStatus.status)
            return key

    def on_order_status(self, trade: Any) -> str | None:
        """Book an order's status; return its key (None if it cannot be booked whole)."""
        # The hot path: statuses stream while orders work (one per fill,
        # modify, and more), so the common case makes no Python call of its
        # own (benchmarks/hot_path.py counts them); the rare cases go the
        # long way, to the same result.
        status = trade.orderStatus
        with self.lock:
            # An order IB has acknowledged is found by its permId alone.
            perm_id = status.permId
            by_perm = self._by_perm
            key: str | None
            if perm_id and perm_id in by_perm:
                key = by_perm[perm_id]
            else:
                key = self._status_of_new_order(trade)
                if key is None:
                    return None
            entry = self.orders[key]
            # number(), inlined for the floats ib_insync sends: a float within
            # (-1e300, 1e300) is its own number (NaN and UNSET_DOUBLE are not).
            filled = status.filled
            if filled.__class__ is not float or not -1e300 < filled < 1e300:
                filled = number(filled)
            if filled > entry["filled"]:
                entry["filled"] = filled
            remaining = status.remaining
            if remaining.__class__ is not float or not -1e300 < remaining < 1e300:
                remaining = number(remaining)
            entry["remaining"] = remaining
            text = status.status
            if text in DONE_STATUSES or (self._uncertain and key in self._uncertain):
                self._set_status(key, text)
            else:
                entry["status"] = text  # what _set_status does for a working order
            if self._held_fills:
                self._release_held_fills()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Order %s status: %s", key, text)
        return key

    def _status_of_new_order(self, trade: Any) -> str | None:
        """Find or create the entry of a status whose permId is not indexed. Lock held."""
        ids = trade_ids(trade)
        key = self._find(ids)
        if key is None:
            if ids.perm_id in self._pruned_perms or not _has_details(trade):
                return None
            key = self._create(self._new_key(ids), ids, trade)
            if key is None:
                return None
        self._learn_perm(key, self.orders[key], ids.perm_id)
        return key

    def on_order_error(self, order_id: int, code: int, message: str) -> str | None:
        """Record an IB error about the session's own order ``order_id``; return its key."""
        with self.lock:
            key = self._find(OrderIds(self.client_id, order_id, 0))
            if key is not None:
                self.orders[key]["errors"].append({"code": code, "message": message})
        if key is not None:
            logger.warning("Order %s: IB error %d: %s", key, code, message)
        return key

    # -- orders caught by a dropped session -------------------------------------------

    def mark_uncertain(self, trade: Any, request: str) -> str | None:
        """Mark the order of ``trade`` ``Uncertain``: ``request`` had no answer.

        An order the book does not have yet (placed through the ``IB``
        object directly) is booked from the trade first.

        Args:
            trade: the client's ``Trade`` of the order.
            request: ``place``, ``modify`` or ``cancel``.

        Returns:
            The order's key, or None if the trade carries no order details.
        """
        ids = trade_ids(trade)
        with self.lock:
            key = self._find(ids)
            if key is None:
                if not _has_details(trade):
                    return None
                key = self._create(self._new_key(ids), ids, trade)
                if key is None:
                    return None
            elif self.orders[key]["status"] in DONE_STATUSES:
                return None
            self._uncertain[key] = request
            self.orders[key]["status"] = UNCERTAIN
            return key

    def resolve(self, trade: Any, resolution: Any) -> str | None:
        """Settle the ``Uncertain`` order of ``trade`` with the next session's finding.

        Args:
            trade: the client's ``Trade`` the order was marked with.
            resolution: an :class:`~ibkr_connection.inflight.Resolution`: the
                gateway's status (or ``NotReceived``), its ``Trade`` and fills.

        Returns:
            The order's key, or None if the book does not have the order.
        """
        gateway = resolution.trade
        with self.lock:
            key = self._find(trade_ids(trade))
            if key is None and gateway is not None:
                key = self._find(trade_ids(gateway))
            if key is None:
                return None
            self._uncertain.pop(key, None)
            entry = self.orders[key]
            if gateway is None:
                entry["remaining"] = 0.0
                self._set_status(key, resolution.status)
                return key
            self._learn_perm(key, entry, trade_ids(gateway).perm_id)
            entry["quantity"] = number(gateway.order.totalQuantity) or entry["quantity"]
            entry["order_type"] = gateway.order.orderType or entry["order_type"]
            for fill in resolution.fills:
                self._book_execution(gateway, fill, "reconnect")
                report = getattr(fill, "commissionReport", None)
                if report is not None and report.execId:
                    self.on_commission(fill, report)
            self._release_held_fills()
            entry["filled"] = max(entry["filled"], number(gateway.orderStatus.filled))
            entry["remaining"] = max(entry["quantity"] - entry["filled"], 0.0)
            self._set_status(key, resolution.status)
            return key

    # -- fills and commissions --------------------------------------------------------

    def on_execution(self, trade: Any, fill: Any) -> bool:
        """Book a live execution once; return True if it was booked now.

        Args:
            trade: the ``Trade`` the execution belongs to (its order's details),
                or None if unknown: the execution is then held.
            fill: the ``Fill`` (its ``execution`` names the order's ids).
        """
        with self.lock:
            return self._book_execution(trade, fill, "live")

    def on_commission(self, fill: Any, report: Any) -> bool:
        """Book a commission report once; return True if it was booked now.

        A report whose execution is not booked yet is held until it is.
        """
        exec_id = report.execId or fill.execution.execId
        with self.lock:
            if not exec_id or exec_id in self._commission_ids:
                return False
            record = {
                "execution_id": exec_id,
                "commission": number(report.commission),
                "currency": report.currency,
                "realized_pnl": number(report.realizedPNL),
            }
            key = self._exec_keys.get(exec_id)
            if key is None:
                _remember(self._held_commissions, exec_id, record, self._max_seen)
                logger.debug("commission of execution %s held until the execution is booked",
                             exec_id)
                return False
            if not key:
                return False  # its order was pruned
            self._book_commission(key, record)
            return True

    def reconcile(self, trades: Iterable[Any], fills: Iterable[Any], *,
                  after_reconnect: bool) -> Reconciled:
        """Book what the gateway's record (a session's startup sync) has and the book misses.

        Run after every session's startup sync: ib_insync emits no execution
        event for executions it learns then (fills made while the bot was
        away, or in an earlier run today), and no status for orders that
        completed meanwhile.

        Args:
            trades: the session's ``Trade`` objects (open and completed orders).
            fills: the session's ``Fill`` objects, with their commission reports.
            after_reconnect: True after a reconnect (logged as recovered), False
                for the first session of this book (logged as booked at start-up).

        Returns:
            The counts of what was booked.
        """
        trades = list(trades)
        by_perm = {ids.perm_id: t for t in trades if (ids := trade_ids(t)).perm_id}
        how = "reconnect" if after_reconnect else "start-up"
        booked = statuses = 0
        with self.lock:
            commissions_before = self._commissions_booked
            for fill in fills:
                trade = by_perm.get(execution_ids(fill.execution).perm_id)
                if self._book_execution(trade, fill, how):
                    booked += 1
                report = getattr(fill, "commissionReport", None)
                if report is not None and report.execId:
                    self.on_commission(fill, report)
            for trade in trades:
                status = trade.orderStatus.status
                key = self._find(trade_ids(trade)) if status in DONE_STATUSES else None
                # An uncertain order's outcome is told by its resolution, not here.
                if (key is not None and key not in self._uncertain
                        and self.orders[key]["status"] not in DONE_STATUSES):
                    logger.warning("Order %s: %s while the bot was away", key, status)
                    self._set_status(key, status)
                    statuses += 1
            self._release_held_fills()
            commissions = self._commissions_booked - commissions_before
        return Reconciled(booked, commissions, statuses)

    def _book_execution(self, trade: Any, fill: Any, how: str) -> bool:
        """Book one execution; ``how`` is "live", "reconnect" or "start-up". Lock held."""
        execution = fill.execution
        exec_id = execution.execId
        if exec_id in self._exec_keys:
            return False
        ids = execution_ids(execution)
        if trade is not None and not _same_order(trade_ids(trade), ids):
            trade = None
        key = self._find(ids)
        if key is None and trade is not None and _has_details(trade):
            key = self._create(self._new_key(ids), ids, trade)
        if key is None:
            if exec_id not in self._held_fills:
                logger.warning("execution %s of order %s/%s (permId %s) held: its order is "
                               "not known yet", exec_id, ids.client_id, ids.order_id,
                               ids.perm_id)
            _remember(self._held_fills, exec_id, (trade, fill, how), self._max_seen)
            return False
        self._held_fills.pop(exec_id, None)
        _remember(self._exec_keys, exec_id, key, self._max_seen)
        entry = self.orders[key]
        self._learn_perm(key, entry, ids.perm_id)
        entry["executions"].append({
            "time": execution.time,
            "shares": number(execution.shares),
            "price": number(execution.price),
            "execution_id": exec_id,
        })
        held = self._held_commissions.pop(exec_id, None)
        if held is not None:
            self._book_commission(key, held)
        filled = sum(e["shares"] for e in entry["executions"])
        if filled > entry["filled"]:
            entry["filled"] = filled
            if entry["quantity"]:
                entry["remaining"] = max(entry["quantity"] - filled, 0.0)
        if how == "live" and trade is not None:
            self._set_status(key, trade.orderStatus.status)
        elif entry["quantity"] and entry["remaining"] <= 0:
            self._set_status(key, "Filled")
        else:
            self._set_status(key, entry["status"])
        if how == "live":
            logger.info("Order %s fill: %s shares at %.2f (execution %s)",
                        key, execution.shares, number(execution.price), exec_id)
        elif how == "reconnect":
            logger.warning("Order %s fill recovered after reconnect: %s shares at %.2f "
                           "(execution %s)", key, execution.shares, number(execution.price),
                           exec_id)
        else:  # the day's record of a fresh book: summed up by the caller, detail here
            logger.debug("Order %s fill booked at start-up: %s shares at %.2f (execution %s)",
                        key, execution.shares, number(execution.price), exec_id)
        return True

    def _book_commission(self, key: str, record: dict[str, Any]) -> None:
        _remember(self._commission_ids, record["execution_id"], None, self._max_seen)
        self._commissions_booked += 1
        self.orders[key]["commissions"].append(record)

    def _release_held_fills(self) -> None:
        """Book the held executions whose order is now known. Lock held."""
        for trade, fill, how in list(self._held_fills.values()):
            if self._find(execution_ids(fill.execution)) is not None:
                self._book_execution(trade, fill, how)

    # -- entries and their keys -------------------------------------------------------

    def _new_key(self, ids: OrderIds) -> str | None:
        """Choose a free key for a new order (see the module docstring)."""
        if ids.order_id > 0:
            if ids.client_id == self.client_id and str(ids.order_id) not in self.orders:
                return str(ids.order_id)
            key = f"{ids.client_id}:{ids.order_id}"
            if key not in self.orders:
                return key
        return f"perm:{ids.perm_id}" if ids.perm_id else None

    def _create(self, key: str | None, ids: OrderIds, trade: Any) -> str | None:
        if key is None:
            return None
        order = trade.order
        contract = trade.contract
        quantity = number(getattr(order, "totalQuantity", 0))
        self.orders[key] = {
            "order_id": ids.order_id,
            "client_id": ids.client_id,
            "perm_id": ids.perm_id,
            "order_ref": getattr(order, "orderRef", "") or "",
            "symbol": getattr(contract, "symbol", ""),
            "action": getattr(order, "action", ""),
            "quantity": quantity,
            "order_type": getattr(order, "orderType", ""),
            # Registered as completed (or not) by the caller's _set_status.
            "status": getattr(trade.orderStatus, "status", "") or "",
            "filled": 0.0,
            "remaining": quantity,
            "executions": [],
            "commissions": [],
            "errors": [],
        }
        self._index(key, self.orders[key])
        return key

    def _index(self, key: str, entry: Entry) -> None:
        if entry["perm_id"]:
            self._by_perm[entry["perm_id"]] = key
        if entry["order_id"] > 0:
            self._by_client_order[(entry["client_id"], entry["order_id"])] = key
        if entry["order_ref"]:
            keys = self._by_ref.setdefault(entry["order_ref"], [])
            if key not in keys:
                keys.append(key)

    def _unindex(self, key: str, entry: Entry) -> None:
        if self._by_perm.get(entry["perm_id"]) == key:
            del self._by_perm[entry["perm_id"]]
        pair = (entry["client_id"], entry["order_id"])
        if self._by_client_order.get(pair) == key:
            del self._by_client_order[pair]
        keys = self._by_ref.get(entry["order_ref"])
        if keys is not None and key in keys:
            keys.remove(key)
            if not keys:
                del self._by_ref[entry["order_ref"]]

    def _learn_perm(self, key: str, entry: Entry, perm_id: int) -> None:
        if perm_id and not entry["perm_id"]:
            entry["perm_id"] = perm_id
            self._by_perm[perm_id] = key

    def _make_room(self, key: str) -> None:
        """Move another order off ``key``, the bot's new order's key, to its permId key."""
        occupant = self.orders.get(key)
        if occupant is None:
            return
        candidates = [f"{occupant['client_id']}:{occupant['order_id']}"]
        if occupant["perm_id"]:
            candidates.insert(0, f"perm:{occupant['perm_id']}")
        new = next((c for c in candidates if c not in self.orders), None)
        if new is None:  # every other key taken: keep the earlier order under a serial
            new = f"{candidates[-1]}#{len(self.orders)}"
        logger.warning("Order %s: the key goes to a new order of the same id; the earlier "
                       "order (permId %s) is now %s", key, occupant["perm_id"], new)
        self._unindex(key, occupant)
        del self.orders[key]
        self.orders[new] = occupant
        self._index(new, occupant)
        for execution in occupant["executions"]:
            if execution["execution_id"] in self._exec_keys:
                self._exec_keys[execution["execution_id"]] = new
        if key in self._completed:
            self._completed = OrderedDict((new if k == key else k, None)
                                          for k in self._completed)
        if key in self._uncertain:
            self._uncertain[new] = self._uncertain.pop(key)

    def _set_status(self, key: str, status: str) -> None:
        if self._uncertain and key in self._uncertain:
            return  # Uncertain until resolved: one way out, with its event
        self.orders[key]["status"] = status
        if status in DONE_STATUSES and key not in self._completed:
            self._completed[key] = None
            while len(self._completed) > self.max_completed_orders:
                old, _ = self._completed.popitem(last=False)
                self._forget(old)

    def _forget(self, key: str) -> None:
        self._uncertain.pop(key, None)
        entry = self.orders.pop(key, None)
        if entry is None:
            return
        self._unindex(key, entry)
        for execution in entry["executions"]:
            if execution["execution_id"] in self._exec_keys:
                self._exec_keys[execution["execution_id"]] = ""
        if entry["perm_id"]:
            # A late status of a pruned order must not bring back a husk of it.
            _remember(self._pruned_perms, entry["perm_id"], None, self._max_seen)


def _has_details(trade: Any) -> bool:
    """True if the trade carries its order's details (an action, at least)."""
    return trade is not None and bool(getattr(trade.order, "action", ""))


def _same_order(trade: OrderIds, execution: OrderIds) -> bool:
    """True unless the trade's ids show it is another order than the execution's."""
    if trade.perm_id and execution.perm_id:
        return trade.perm_id == execution.perm_id
    if trade.order_id > 0:
        return (trade.client_id, trade.order_id) == (execution.client_id, execution.order_id)
    return True


__all__ = ["DONE_STATUSES", "NOT_RECEIVED", "UNCERTAIN", "Entry", "OrderBook", "OrderIds",
           "Reconciled", "execution_ids", "number", "trade_ids"]
