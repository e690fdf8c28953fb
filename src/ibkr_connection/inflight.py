"""Orders caught by a dropped session: uncertain, then resolved by the next sync, never re-sent.

An order request (place, modify, cancel) is *in flight* from the moment the
client sends it until the gateway answers for that order: a status, a fill or
an order error, each of which the client appends to the ``Trade``'s ``log``.
If the session ends first, nobody knows whether IB got the request: the order
is *uncertain* (status ``Uncertain``). Retrying could send it twice; waiting
could wait for ever. The next session's startup sync (open orders, completed
orders, executions) is the gateway's own record, and :class:`GatewayRecord`
looks an uncertain order up in it:

1. by permId, if IB had assigned one;
2. by (client id, order id), among the open orders and the executions
   (completed orders carry a permId but no order id, as TWS sends them);
3. by orderRef, when the bot set one.

Found, the order takes the gateway's status, fills and commissions
(:class:`Resolution`, ``found_by`` says how). Not found, and the record could
have shown it, the gateway never had it: ``NotReceived`` (terminal; the bot
may place it again, under a new order id). The record cannot show it, and the
order stays ``Uncertain`` (:class:`Unresolved`, with the reason) when:

- the session is read-only: its startup sync asks for no open or completed
  orders;
- the session's client id is not the order's: the startup sync lists the open
  orders of its own client id only;
- IB had acknowledged the order (it has a permId) and yet the record has no
  trace of it;
- a completed order of the record carries no ids (no execution names it) and
  could be this one (same symbol, action, quantity and orderRef); an orderRef
  set by the bot tells such orders apart.

Nothing here sends anything: resolving an order never re-sends it.
:class:`InFlightOrders` is the manager's tracker, fed by the client's
``newOrderEvent``, ``orderModifyEvent`` and ``cancelOrderEvent``; it reads
the ``Trade`` objects it is given and touches no socket, loop or client
library.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from ibkr_connection.book import (
    DONE_STATUSES,
    NOT_RECEIVED,
    UNCERTAIN,
    OrderIds,
    execution_ids,
    number,
    trade_ids,
)

logger = logging.getLogger(__name__)

#: A new order (``placeOrder`` of an order the client does not know).
PLACE = "place"
#: A modification (``placeOrder`` of a working order of this session).
MODIFY = "modify"
#: A cancel (``cancelOrder``).
CANCEL = "cancel"

#: Statuses that mean a cancel took effect.
_CANCELLED = frozenset({"Cancelled", "ApiCancelled"})


@dataclass(frozen=True)
class Asked:
    """What the latest request asked of the order (compared with the gateway's order).

    Attributes:
        quantity: total quantity.
        lmt_price: limit price (0 if none).
        aux_price: aux (stop) price (0 if none).
    """

    quantity: float
    lmt_price: float
    aux_price: float

    @classmethod
    def of(cls, order: Any) -> Asked:
        """Read what ``order`` (an ib_insync ``Order``) asks for."""
        return cls(number(getattr(order, "totalQuantity", 0)),
                   number(getattr(order, "lmtPrice", 0)), number(getattr(order, "auxPrice", 0)))


@dataclass(frozen=True)
class Resolution:
    """How the next session's startup sync settled an uncertain order.

    Attributes:
        status: the gateway's status for the order (``Submitted``, ``Filled``,
            ``Cancelled`` ...), or ``NotReceived``: the gateway never had it.
        request: the request that was left unanswered: ``place``, ``modify``
            or ``cancel``.
        found_by: ``permId``, ``orderId`` (client id and order id) or
            ``orderRef``; empty for ``NotReceived``.
        applied: True if the gateway's record shows the request took effect
            (the order exists; the cancel landed; the modified quantity and
            prices show), False if it shows it did not.
        trade: the gateway's ``Trade`` for the order in the new session (the
            client keeps this one up to date from now on), None if not received.
        fills: the gateway's executions of the order (each once).
    """

    status: str
    request: str
    found_by: str
    applied: bool
    trade: Any = field(default=None, compare=False, repr=False)
    fills: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def received(self) -> bool:
        """True if the gateway had the order (False for ``NotReceived``)."""
        return self.status != NOT_RECEIVED


@dataclass(frozen=True)
class Unresolved:
    """Why an uncertain order stays ``Uncertain`` after a session's sync.

    Attributes:
        reason: the reason, in words, as logged.
    """

    reason: str


def _norm_ref(value: Any) -> str:
    return value if isinstance(value, str) else ""


class GatewayRecord:
    """The gateway's record of orders, as a session's startup sync delivered it.

    Args:
        trades: the session's ``Trade`` objects (``ib.trades()``): open orders
            (with their client and order ids) and completed orders (a permId,
            no order id).
        fills: the session's ``Fill`` objects (``ib.fills()``); executions
            name all three ids.
        client_id: the session's client id (its open orders are the ones listed).
        orders_synced: False for a read-only session, whose startup sync asks
            for no open or completed orders.
    """

    def __init__(self, trades: Iterable[Any], fills: Iterable[Any], *, client_id: int,
                 orders_synced: bool) -> None:
        self.client_id = client_id
        self.orders_synced = orders_synced
        self._by_perm: dict[int, Any] = {}
        self._by_client_order: dict[tuple[int, int], Any] = {}
        self._by_ref: dict[str, list[Any]] = {}
        self._fills: dict[int, dict[str, Any]] = {}
        self._perm_of: dict[tuple[int, int], int] = {}
        for fill in fills:
            ids = execution_ids(fill.execution)
            if ids.perm_id:
                self._fills.setdefault(ids.perm_id, {}).setdefault(fill.execution.execId, fill)
                if ids.order_id > 0:
                    self._perm_of[(ids.client_id, ids.order_id)] = ids.perm_id
        self._completed: list[Any] = []
        for trade in trades:
            ids = trade_ids(trade)
            if ids.perm_id:
                self._by_perm.setdefault(ids.perm_id, trade)
            if ids.order_id > 0:
                self._by_client_order[(ids.client_id, ids.order_id)] = trade
            else:
                self._completed.append(trade)
            ref = _norm_ref(getattr(trade.order, "orderRef", ""))
            if ref:
                self._by_ref.setdefault(ref, []).append(trade)

    def fills_of(self, perm_id: int) -> tuple[Any, ...]:
        """Return the executions of the order with this permId, each once."""
        return tuple(self._fills.get(perm_id, {}).values())

    def resolve(self, ids: OrderIds, *, order_ref: str, request: str, asked: Asked | None,
                symbol: str, action: str, claimed: Container[int] = ()
                ) -> Resolution | Unresolved:
        """Settle one uncertain order against this record.

        Args:
            ids: the order's ids as the bot knew them (permId 0 if IB never
                acknowledged it).
            order_ref: the order's orderRef ("" if none).
            request: the unanswered request (:data:`PLACE`, :data:`MODIFY`, :data:`CANCEL`).
            asked: what the request asked for (for ``applied`` of a modify).
            symbol: the contract's symbol (to tell anonymous completed orders apart).
            action: ``BUY`` or ``SELL``.
            claimed: permIds known to belong to other orders.

        Returns:
            A :class:`Resolution`, or an :class:`Unresolved` with the reason.
        """
        if not self.orders_synced:
            return Unresolved("the session is read-only: its startup sync asks for no open "
                              "or completed orders, so it cannot tell")
        found = self._locate(ids, order_ref, claimed)
        if isinstance(found, Unresolved):
            return found
        if found is not None:
            trade, perm, how = found
            return Resolution(
                status=trade.orderStatus.status, request=request, found_by=how,
                applied=_applied(request, asked, trade), trade=trade,
                fills=self.fills_of(perm))
        if ids.client_id != self.client_id:
            return Unresolved(
                f"this session is client {self.client_id}; its startup sync lists the open "
                f"orders of that client only, not those of client {ids.client_id}")
        if ids.perm_id:
            return Unresolved(f"IB acknowledged it (permId {ids.perm_id}) but the gateway's "
                              "record has no trace of it now")
        maybe = [t for t in self._completed
                 if trade_ids(t).perm_id not in claimed
                 and not self._fills.get(trade_ids(t).perm_id)
                 and _norm_ref(getattr(t.order, "orderRef", "")) == order_ref
                 and getattr(t.contract, "symbol", "") == symbol
                 and getattr(t.order, "action", "") == action
                 and (asked is None or number(t.order.totalQuantity) == asked.quantity)]
        if maybe:
            perms = ", ".join(str(trade_ids(t).perm_id) for t in maybe[:5])
            return Unresolved(
                f"completed order(s) with permId {perms} carry no order id and could be this "
                "one; an orderRef set on the order tells them apart")
        return Resolution(status=NOT_RECEIVED, request=request, found_by="", applied=False)

    def _locate(self, ids: OrderIds, order_ref: str, claimed: Container[int]
                ) -> tuple[Any, int, str] | Unresolved | None:
        if ids.perm_id:
            trade = self._by_perm.get(ids.perm_id)
            if trade is not None:
                return trade, ids.perm_id, "permId"
        if ids.order_id > 0:
            pair = (ids.client_id, ids.order_id)
            trade = self._by_client_order.get(pair)
            if trade is not None and _fits(trade_ids(trade), ids):
                return trade, trade_ids(trade).perm_id, "orderId"
            perm = self._perm_of.get(pair, 0)
            if perm and (not ids.perm_id or perm == ids.perm_id):
                trade = self._by_perm.get(perm)
                if trade is not None:
                    return trade, perm, "orderId"
                return Unresolved(f"the gateway executed it (permId {perm}) but its record "
                                  "lists no status for it")
        if order_ref:
            candidates = [t for t in self._by_ref.get(order_ref, ())
                          if _fits(trade_ids(t), ids) and trade_ids(t).perm_id not in claimed]
            if len(candidates) == 1:
                trade = candidates[0]
                return trade, trade_ids(trade).perm_id, "orderRef"
            if len(candidates) > 1:
                perms = ", ".join(str(trade_ids(t).perm_id) for t in candidates[:5])
                return Unresolved(f"orderRef {order_ref!r} names several orders of the "
                                  f"gateway (permId {perms})")
        return None


def _fits(found: OrderIds, ids: OrderIds) -> bool:
    """False if ``found``'s ids show it is another order than ``ids``."""
    if found.perm_id and ids.perm_id and found.perm_id != ids.perm_id:
        return False
    if found.order_id > 0 and ids.order_id > 0:
        return (found.client_id, found.order_id) == (ids.client_id, ids.order_id)
    return True


def _applied(request: str, asked: Asked | None, trade: Any) -> bool:
    if request == CANCEL:
        return trade.orderStatus.status in _CANCELLED
    if request == MODIFY and asked is not None:
        now = Asked.of(trade.order)
        return all(abs(a - b) < 1e-9 for a, b in zip(
            (now.quantity, now.lmt_price, now.aux_price),
            (asked.quantity, asked.lmt_price, asked.aux_price), strict=True))
    return True


def describe(ids: OrderIds, order_ref: str = "") -> str:
    """Name an order for a log line: ``order 101 of client 7 (orderRef 'x')``."""
    name = f"order {ids.order_id}" if ids.order_id > 0 else f"order permId {ids.perm_id}"
    return name + f" of client {ids.client_id}" + (f" (orderRef {order_ref!r})"
                                                    if order_ref else "")


@dataclass
class Flight:
    """A trade whose latest request has no answer yet (or had none when its session ended).

    Attributes:
        trade: the client's ``Trade``.
        request: the request awaiting an answer (a new order stays ``place``
            until the gateway answers, whatever follows).
        mark: the length of the trade's log right after the request: any
            later entry is the gateway's answer.
        asked: what the latest request asked for.
    """

    trade: Any
    request: str
    mark: int
    asked: Asked

    @property
    def answered(self) -> bool:
        """True once the gateway said something about the order after the request."""
        return len(self.trade.log) > self.mark

    @property
    def done(self) -> bool:
        """True if the order is in a terminal state."""
        return self.trade.orderStatus.status in DONE_STATUSES


class InFlightOrders:
    """The manager's tracker of order requests that may be caught by a dropped session.

    Feed it every request the client sends (:meth:`sent`); when a session ends,
    :meth:`session_ended` turns the unanswered ones (orders not in a terminal
    state) into uncertain ones; after the next session's startup sync,
    :meth:`resolve` settles them against the gateway's record. Answered
    requests are forgotten as it goes (their permIds are remembered, bounded,
    to tell the bot's own completed orders from an uncertain one).

    Args:
        remember: permIds of answered orders kept.
    """

    def __init__(self, *, remember: int = 10_000) -> None:
        self._remember = remember
        self._flights: dict[int, Flight] = {}
        self._uncertain: dict[int, Flight] = {}
        self._known_perms: OrderedDict[int, None] = OrderedDict()
        self._prune_at = 64

    @property
    def uncertain(self) -> list[Any]:
        """The trades left uncertain, oldest first."""
        return [flight.trade for flight in self._uncertain.values()]

    @property
    def has_uncertain(self) -> bool:
        """True if any order is left uncertain (:attr:`uncertain` without building the list)."""
        return bool(self._uncertain)

    @property
    def in_flight(self) -> list[Any]:
        """The trades whose latest request this session has no answer yet."""
        return [f.trade for f in self._flights.values() if not f.answered and not f.done]

    def flight(self, trade: Any) -> Flight | None:
        """Return the tracker's record of ``trade`` (uncertain or in flight), if any."""
        return self._uncertain.get(id(trade)) or self._flights.get(id(trade))

    def sent(self, trade: Any, request: str) -> None:
        """Note a request the client has just sent for ``trade``."""
        key = id(trade)
        earlier = self._flights.get(key)
        # A modify or cancel has just put its own entry in the log; anything
        # else after the earlier request's mark is the gateway's.
        own = 0 if request == PLACE else 1
        if (earlier is not None and earlier.request == PLACE
                and len(trade.log) - own <= earlier.mark):
            request = PLACE  # the gateway has not acknowledged the order itself yet
        self._flights[key] = Flight(trade, request, len(trade.log), Asked.of(trade.order))
        if len(self._flights) >= self._prune_at:
            self._prune()

    def _prune(self) -> None:
        for key, flight in list(self._flights.items()):
            if flight.answered or flight.done:
                self._forget(key, flight)
        self._prune_at = max(64, 2 * len(self._flights))

    def _forget(self, key: int, flight: Flight) -> None:
        del self._flights[key]
        perm = trade_ids(flight.trade).perm_id
        if perm:
            self._known_perms[perm] = None
            self._known_perms.move_to_end(perm)
            while len(self._known_perms) > self._remember:
                self._known_perms.popitem(last=False)

    def session_ended(self) -> list[Any]:
        """Make every unanswered order of the ended session uncertain; return those trades.

        Orders in a terminal state and orders whose latest status came from
        the gateway are not uncertain. Each uncertain order is logged once.
        """
        newly: list[Any] = []
        for key, flight in list(self._flights.items()):
            if flight.answered or flight.done:
                self._forget(key, flight)
                continue
            del self._flights[key]
            self._uncertain[key] = flight
            newly.append(flight.trade)
            ids = trade_ids(flight.trade)
            logger.warning(
                "%s is Uncertain: its %s request had no answer when the session ended "
                "(last status %s); the next session's sync will settle it",
                describe(ids, _norm_ref(flight.trade.order.orderRef)), flight.request,
                flight.trade.orderStatus.status)
        self._prune_at = max(64, 2 * len(self._flights))
        return newly

    def resolve(self, record: GatewayRecord) -> list[tuple[Any, Resolution]]:
        """Settle the uncertain orders against a new session's record; return the settled.

        Each settled order is logged once and leaves the tracker; each order
        that stays uncertain is logged with the reason.
        """
        claimed = set(self._known_perms)
        claimed.update(p for f in self._uncertain.values() if (p := trade_ids(f.trade).perm_id))
        settled: list[tuple[Any, Resolution]] = []
        for key, flight in list(self._uncertain.items()):
            trade = flight.trade
            ids = trade_ids(trade)
            ref = _norm_ref(getattr(trade.order, "orderRef", ""))
            outcome = record.resolve(
                ids, order_ref=ref, request=flight.request, asked=flight.asked,
                symbol=getattr(trade.contract, "symbol", ""),
                action=getattr(trade.order, "action", ""),
                claimed=claimed - {ids.perm_id})
            name = describe(ids, ref)
            if isinstance(outcome, Unresolved):
                logger.warning("%s stays Uncertain: %s", name, outcome.reason)
                continue
            del self._uncertain[key]
            settled.append((trade, outcome))
            if outcome.trade is not None and (perm := trade_ids(outcome.trade).perm_id):
                claimed.add(perm)
                self._known_perms[perm] = None
            log_resolution(name, outcome)
        return settled


def log_resolution(name: str, outcome: Resolution) -> None:
    """Log how an uncertain order was settled, in one line."""
    if not outcome.received:
        logger.warning("%s resolved after reconnect: NotReceived: the gateway never had it "
                       "(its %s request was lost); it may be placed again under a new id",
                       name, outcome.request)
        return
    logger.warning("%s resolved after reconnect: %s (found by %s, %d fill(s)); its %s "
                   "request %s", name, outcome.status, outcome.found_by, len(outcome.fills),
                   outcome.request, "took effect" if outcome.applied else "did not take effect")


__all__ = ["CANCEL", "MODIFY", "NOT_RECEIVED", "PLACE", "UNCERTAIN", "Asked", "Flight",
           "GatewayRecord", "InFlightOrders", "Resolution", "Unresolved", "describe",
           "log_resolution"]
