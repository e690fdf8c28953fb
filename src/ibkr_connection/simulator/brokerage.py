"""The simulated brokerage: accounts, instruments, orders, fills and positions.

:class:`Brokerage` is the gateway's book. It knows a short list of
instruments (:data:`DEFAULT_INSTRUMENTS`) and those added to it, records
orders, books fills into executions and positions (with average cost and
realized PnL), hands out order ids and decides how orders fill (the fill
mode). It touches no socket and sends nothing: the gateway tells its clients
about what the book did.

Like TWS, the book keeps one trading day of history: when its clock passes
midnight (in :attr:`Brokerage.day_zone`), executions and finished orders of
earlier days are forgotten (:meth:`Brokerage.forget_earlier_days`), so a
simulator that runs for weeks answers ``reqExecutions`` and
``reqCompletedOrders`` with the day's, and holds a day's worth of them.
Working orders and positions carry over; ``day_zone=None`` keeps every day.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from ibkr_connection.wire import protocol as p

logger = logging.getLogger(__name__)

#: How orders fill: ``"immediate"`` in full right after ``Submitted``,
#: ``"manual"`` only when told, ``("parts", n)`` in ``n`` executions.
FillMode = Literal["immediate", "manual"] | tuple[Literal["parts"], int]

#: Where the book's trading day starts and ends: midnight in US Eastern time.
#: TWS keeps the current day's executions: IB's ``EClient.reqExecutions``
#: (ibapi ``client.py``) says the reports come from the past 24 hours, and
#: older ones only while TWS's Trade Log is opened on earlier days; its
#: Completed Orders are likewise the day's (``reqCompletedOrders`` "fetch[es]
#: the orders completed (if any) in the current trading day", InteractiveTradeR's
#: documentation). TWS's midnight is its own time zone's (chosen at login); an
#: assumption here, the US exchanges' zone, which keeps a US trading day whole.
DAY_ZONE: tzinfo = ZoneInfo("America/New_York")

#: Account values announced by ``reqAccountUpdates`` and friends: tag -> (value, currency).
DEFAULT_ACCOUNT_VALUES: dict[str, tuple[str, str]] = {
    "NetLiquidation": ("1000000.00", "USD"),
    "TotalCashValue": ("1000000.00", "USD"),
    "BuyingPower": ("4000000.00", "USD"),
    "AvailableFunds": ("1000000.00", "USD"),
    "ExcessLiquidity": ("1000000.00", "USD"),
    "EquityWithLoanValue": ("1000000.00", "USD"),
    "AccountType": ("INDIVIDUAL", ""),
}


@dataclass
class Instrument:
    """A tradable contract with simulated prices.

    Attributes:
        symbol: Ticker symbol.
        con_id: IB contract id.
        sec_type: Security type, e.g. ``STK``.
        exchange: Routing exchange.
        primary_exchange: Listing exchange.
        currency: Currency code.
        last: Last trade price.
        bid: Bid price.
        ask: Ask price.
    """

    symbol: str
    con_id: int
    sec_type: str = "STK"
    exchange: str = "SMART"
    primary_exchange: str = "NASDAQ"
    currency: str = "USD"
    last: float = 100.0
    bid: float = 99.99
    ask: float = 100.01


@dataclass
class SimOrder:
    """An order in the gateway's book.

    Attributes:
        order_id: Client order id.
        client_id: Id of the API client that placed it.
        perm_id: Permanent id assigned by the gateway.
        account: Account the order is for.
        instrument: The contract traded.
        action: ``BUY`` or ``SELL``.
        total_quantity: Ordered quantity.
        order_type: ``MKT``, ``LMT`` ...
        lmt_price: Limit price (0 if none).
        aux_price: Aux (stop) price.
        tif: Time in force.
        order_ref: Free text reference.
        status: ``Submitted``, ``Filled`` or ``Cancelled``.
        filled: Quantity filled so far.
        avg_fill_price: Average fill price.
        last_fill_price: Price of the latest fill.
        completed_time: IB-style time text once done.
        completed_at: When it was filled or cancelled (None while working).
    """

    order_id: int
    client_id: int
    perm_id: int
    account: str
    instrument: Instrument
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float = 0.0
    aux_price: float = 0.0
    tif: str = "DAY"
    order_ref: str = ""
    status: str = "Submitted"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    completed_time: str = ""
    completed_at: datetime | None = None

    @property
    def remaining(self) -> float:
        """Quantity still to fill."""
        return max(self.total_quantity - self.filled, 0.0)

    @property
    def is_done(self) -> bool:
        """True once filled or cancelled."""
        return self.status in ("Filled", "Cancelled")


@dataclass
class SimExecution:
    """One execution (fill) with its commission report.

    Attributes:
        exec_id: Execution id.
        order: The order filled.
        shares: Quantity of this fill.
        price: Price of this fill.
        cum_qty: Cumulative filled quantity of the order after this fill.
        avg_price: Average price of the order after this fill.
        time: UTC time of the fill.
        commission: Commission charged.
        realized_pnl: Realized PnL of this fill.
    """

    exec_id: str
    order: SimOrder
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    time: datetime
    commission: float
    realized_pnl: float


@dataclass
class SimPosition:
    """A position in one account.

    Attributes:
        account: Account code.
        instrument: Contract held.
        quantity: Signed position size.
        avg_cost: Average cost per share.
        realized_pnl: Realized PnL accumulated today.
    """

    account: str
    instrument: Instrument
    quantity: float = 0.0
    avg_cost: float = 0.0
    realized_pnl: float = 0.0


#: The instruments every simulator knows from the start, as (symbol, conId,
#: primary exchange): US stocks in USD at price 100, with IB's own conIds. The
#: project's tests, benchmarks, demo and README use AAPL (and the message tests
#: MSFT). Anything else is unknown until added (``FakeGateway.add_instrument``,
#: ``prices=``, or a scenario's ``[gateway] instruments``), and a request
#: naming an unknown contract is answered as TWS does: error 200.
DEFAULT_INSTRUMENTS: tuple[tuple[str, int, str], ...] = (
    ("AAPL", 265598, "NASDAQ"),
    ("MSFT", 272093, "NASDAQ"),
    ("IBM", 8314, "NYSE"),
    ("SPY", 756733, "ARCA"),
)


def _aware(moment: datetime) -> datetime:
    """Return ``moment`` with a time zone: a naive wall clock's time is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class Brokerage:
    """The book behind a simulated gateway.

    Args:
        accounts: Managed accounts; the first is the default for orders.
        next_order_id: First ``nextValidId`` given out.
        fill_mode: How orders fill (see :data:`FillMode`).
        commission: Commission charged per execution.
        prices: Initial last prices per symbol; a symbol not in
            :data:`DEFAULT_INSTRUMENTS` is added as a US stock.
        day_zone: Whose midnight ends the book's trading day (see :data:`DAY_ZONE`);
            None keeps every day (a test auditing orders across a midnight).

    Attributes:
        accounts: Managed accounts.
        account_values: Account values, tag -> (value, currency).
        fill_mode: How orders fill after they are placed.
        commission: Commission charged per execution.
        instruments: Known instruments by symbol.
        orders: Every order by order id: working, or done today.
        executions: Today's executions, oldest first.
        day_zone: Whose midnight ends the book's trading day (None: none ends).
        positions: Positions by (account, conId).
    """

    def __init__(
        self,
        accounts: Sequence[str],
        next_order_id: int,
        *,
        fill_mode: FillMode,
        commission: float,
        prices: dict[str, float] | None = None,
        day_zone: tzinfo | None = DAY_ZONE,
    ) -> None:
        self.accounts: list[str] = list(accounts)
        #: The current time of fills and cancels (the gateway's clock sets it).
        self.wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
        self.fill_mode: FillMode = fill_mode
        self.commission = commission
        self.account_values: dict[str, tuple[str, str]] = dict(DEFAULT_ACCOUNT_VALUES)
        self.instruments: dict[str, Instrument] = {}
        self.orders: dict[int, SimOrder] = {}
        self.executions: list[SimExecution] = []
        self.positions: dict[tuple[str, int], SimPosition] = {}
        self.next_valid_id = next_order_id
        self._perm_seq = itertools.count(1_000_001)
        self._exec_seq = itertools.count(1)
        self._con_id_seq = itertools.count(700_001)
        self.day_zone = day_zone
        #: When the current trading day ends (None: not read yet).
        self._day_end: datetime | None = None
        for symbol, con_id, primary in DEFAULT_INSTRUMENTS:
            self.add_instrument(symbol, con_id=con_id, primary_exchange=primary)
        for symbol, price in (prices or {}).items():
            self.add_instrument(symbol, price)

    # ------------------------------------------------------------ instruments
    def add_instrument(
        self,
        symbol: str,
        price: float = 100.0,
        *,
        con_id: int | None = None,
        sec_type: str = "STK",
        currency: str = "USD",
        spread: float = 0.02,
        exchange: str = "SMART",
        primary_exchange: str = "NASDAQ",
    ) -> Instrument:
        """Add (or reprice) an instrument.

        Args:
            symbol: Ticker symbol.
            price: Last price; bid/ask are set ``spread`` apart around it.
            con_id: Contract id (a fresh one if omitted).
            sec_type: Security type.
            currency: Currency.
            spread: Bid/ask spread.
            exchange: Routing exchange.
            primary_exchange: Listing exchange.

        Returns:
            The instrument.
        """
        inst = self.instruments.get(symbol)
        if inst is None:
            inst = Instrument(
                symbol=symbol,
                con_id=con_id or next(self._con_id_seq),
                sec_type=sec_type,
                exchange=exchange,
                primary_exchange=primary_exchange,
                currency=currency,
            )
            self.instruments[symbol] = inst
        inst.last = price
        inst.bid = round(price - spread / 2, 6)
        inst.ask = round(price + spread / 2, 6)
        return inst

    def lookup(
        self, con_id: int, symbol: str, *, sec_type: str = "", currency: str = ""
    ) -> Instrument | None:
        """Find the known instrument a request names: by conId, then by symbol.

        Never creates one: TWS answers a contract it does not know with error
        200, and so do the handlers when this returns ``None``.

        Args:
            con_id: Contract id (0: not given).
            symbol: Ticker symbol (may be empty).
            sec_type: The request's security type; a known symbol of another
                type does not match (empty: any).
            currency: The request's currency, likewise.

        Returns:
            The instrument, or ``None`` if no known instrument matches.
        """
        if con_id:
            for known in self.instruments.values():
                if known.con_id == con_id:
                    return known
        inst = self.instruments.get(symbol)
        if inst is None or sec_type not in ("", inst.sec_type):
            return None
        if currency not in ("", inst.currency):
            return None
        return inst

    def find_instrument(self, key: str | int) -> Instrument:
        """Find an instrument by symbol (created if new) or by conId.

        Args:
            key: Symbol or conId.

        Returns:
            The instrument.

        Raises:
            KeyError: For an unknown conId.
        """
        inst = self.lookup(key, "") if isinstance(key, int) else self.instruments.get(key)
        if inst is None:
            if isinstance(key, int):
                raise KeyError(f"unknown conId {key}")
            inst = self.add_instrument(key)
        return inst

    def set_prices(
        self,
        key: str | int,
        price: float,
        *,
        bid: float | None = None,
        ask: float | None = None,
    ) -> Instrument:
        """Set a new last price (and optionally bid and ask).

        Args:
            key: Symbol or conId of the instrument.
            price: New last price.
            bid: New bid, if given.
            ask: New ask, if given.

        Returns:
            The instrument.
        """
        inst = self.find_instrument(key)
        inst.last = price
        if bid is not None:
            inst.bid = bid
        if ask is not None:
            inst.ask = ask
        return inst

    # ------------------------------------------------------------ the trading day
    def forget_earlier_days(self) -> int:
        """Forget executions and finished orders of days before the current one.

        Cheap while the day lasts (one comparison); called by the book as it
        books orders and fills, and by the gateway before it lists executions
        or completed orders, so a day-old fill is never reported.

        Returns:
            How many executions and orders were forgotten.
        """
        if self.day_zone is None:
            return 0
        now = _aware(self.wall())
        if self._day_end is not None and now < self._day_end:
            return 0
        start = now.astimezone(self.day_zone).replace(hour=0, minute=0, second=0,
                                                       microsecond=0)
        # The next midnight by the calendar (aware arithmetic is wall-clock
        # arithmetic), not 24 h later: days are 23 or 25 hours long when the
        # clocks change. Kept in UTC: the check above then asks the zone nothing.
        self._day_end = (start + timedelta(days=1)).astimezone(timezone.utc)
        kept = [ex for ex in self.executions if _aware(ex.time) >= start]
        gone = len(self.executions) - len(kept)
        self.executions[:] = kept
        for order_id in [oid for oid, order in self.orders.items()
                         if order.completed_at is not None
                         and _aware(order.completed_at) < start]:
            del self.orders[order_id]
            gone += 1
        if gone:
            logger.info("a new trading day (%s): %d executions and finished orders "
                        "of earlier days forgotten", start.date(), gone)
        return gone

    # ------------------------------------------------------------ orders
    def next_perm_id(self) -> int:
        """Hand out the next permanent order id."""
        return next(self._perm_seq)

    def add_order(self, order: SimOrder) -> SimOrder:
        """Record a new working order; the next valid id moves past its id.

        Args:
            order: The order, its perm id from :meth:`next_perm_id`.

        Returns:
            The order.
        """
        self.forget_earlier_days()
        self.orders[order.order_id] = order
        self.next_valid_id = max(self.next_valid_id, order.order_id + 1)
        return order

    def fill_plan(self, order: SimOrder) -> Iterator[float]:
        """Yield the fills the fill mode makes right after ``order`` is placed.

        Lazy on purpose: each quantity is computed after the previous one was
        filled, so the last part takes whatever remains.

        Args:
            order: The order just placed.

        Yields:
            The quantity of each fill (none in ``"manual"`` mode).
        """
        mode = self.fill_mode
        if mode == "immediate":
            yield order.remaining
        elif isinstance(mode, tuple) and mode[0] == "parts":
            parts = max(int(mode[1]), 1)
            base = order.total_quantity // parts
            for i in range(parts):
                qty = order.remaining if i == parts - 1 else base
                if qty > 0:
                    yield qty

    def fill(
        self, order_id: int, quantity: float | None = None, price: float | None = None
    ) -> SimExecution:
        """Book (part of) a fill: the order, the position and a new execution.

        Args:
            order_id: The order to fill.
            quantity: Quantity to fill (default: the remaining quantity).
            price: Fill price (default: the limit price for LMT orders, else
                the instrument's last price).

        Returns:
            The execution created.

        Raises:
            KeyError: If the order is unknown.
            ValueError: If the order is already done or nothing remains.
        """
        self.forget_earlier_days()
        order = self.orders[order_id]
        if order.is_done:
            raise ValueError(f"order {order_id} is {order.status}")
        qty = order.remaining if quantity is None else min(float(quantity), order.remaining)
        if qty <= 0:
            raise ValueError(f"order {order_id} has nothing left to fill")
        inst = order.instrument
        if price is None:
            price = order.lmt_price if order.order_type == "LMT" and order.lmt_price else inst.last
        cost = order.avg_fill_price * order.filled + price * qty
        order.filled += qty
        order.avg_fill_price = cost / order.filled
        order.last_fill_price = price
        now = self.wall()
        if order.remaining <= 0:
            order.status = "Filled"
            order.completed_at = now
            order.completed_time = now.strftime(p.TIME_FORMAT)
        realized = self._book_position(order, qty, price)
        ex = SimExecution(
            exec_id=f"0000e0d5.{next(self._exec_seq):08x}.01.01",
            order=order,
            shares=qty,
            price=price,
            cum_qty=order.filled,
            avg_price=order.avg_fill_price,
            time=now,
            commission=self.commission,
            realized_pnl=realized,
        )
        self.executions.append(ex)
        logger.info(
            "order %d filled %s @ %s (%s/%s)",
            order_id,
            qty,
            price,
            order.filled,
            order.total_quantity,
        )
        return ex

    def _book_position(self, order: SimOrder, qty: float, price: float) -> float:
        key = (order.account, order.instrument.con_id)
        pos = self.positions.get(key)
        if pos is None:
            pos = self.positions[key] = SimPosition(order.account, order.instrument)
        signed = qty if order.action.upper() == "BUY" else -qty
        realized = 0.0
        if pos.quantity == 0 or (pos.quantity > 0) == (signed > 0):
            total = pos.quantity + signed
            pos.avg_cost = (pos.avg_cost * abs(pos.quantity) + price * qty) / abs(total)
            pos.quantity = total
        else:
            closing = min(abs(signed), abs(pos.quantity))
            direction = 1.0 if pos.quantity > 0 else -1.0
            realized = (price - pos.avg_cost) * closing * direction
            pos.quantity += signed
            if abs(signed) > closing:
                pos.avg_cost = price
            elif pos.quantity == 0:
                pos.avg_cost = 0.0
        pos.realized_pnl += realized
        return realized

    def cancel(self, order_id: int) -> bool:
        """Cancel a working order.

        Args:
            order_id: The order to cancel.

        Returns:
            True if it was working (and is now cancelled), False if already done.

        Raises:
            KeyError: If the order is unknown.
        """
        order = self.orders[order_id]
        if order.is_done:
            return False
        order.status = "Cancelled"
        order.completed_at = self.wall()
        order.completed_time = order.completed_at.strftime(p.TIME_FORMAT)
        logger.info("order %d cancelled", order_id)
        return True
