"""FakeGateway: an asyncio TCP server speaking the TWS API wire protocol.

The gateway runs on the caller's event loop (no thread of its own), so it can
serve both async clients and a sync ``IB.connect()`` driven by
``loop.run_until_complete``. Faults (error codes, drops, restarts, stalls,
held startup replies) can be injected at any time from the same loop.

This module is the facade users call; its job is to join the parts:

* :mod:`~ibkr_connection.simulator.transport`: listening, connections,
  framing, the handshake and ``startApi``, the request log;
* :mod:`~ibkr_connection.simulator.faults`: fault injection (on top of the
  transport) and the held or delayed sync replies;
* :mod:`~ibkr_connection.simulator.handlers`: what each request does;
* :mod:`~ibkr_connection.simulator.brokerage`: the book (instruments,
  orders, fills, positions, order ids, fill modes);
* :mod:`~ibkr_connection.simulator.messages`: the encoders of every message
  sent.

Each part's names are imported from the part (or from the package,
:mod:`ibkr_connection.simulator`); this module exports only ``FakeGateway``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from types import TracebackType

from ibkr_connection.simulator import handlers, messages
from ibkr_connection.simulator.brokerage import (
    Brokerage,
    FillMode,
    Instrument,
    SimExecution,
    SimOrder,
    SimPosition,
)
from ibkr_connection.simulator.faults import FaultInjection
from ibkr_connection.simulator.ibc import IbcCommandServer
from ibkr_connection.simulator.transport import ApiClient, Request, SimClock
from ibkr_connection.wire import protocol as p

__all__ = ["FakeGateway", "RequestLog"]

#: Requests a gateway keeps by default: far more than a test or a storm sends,
#: a bound for a simulator left running for days (a heartbeat probe every few
#: seconds is ~30,000 requests a day).
REQUEST_LOG_LIMIT = 100_000


class RequestLog(list[Request]):
    """The gateway's record of requests: the most recent ``limit`` of them, oldest first.

    A plain list (indexing, slicing, ``clear``) that drops its oldest entries
    once it holds a tenth more than ``limit`` (one batch, not one per append).
    :attr:`counts` counts every request received by name, dropped ones
    included.

    Args:
        limit: requests kept (at least 1).

    Attributes:
        limit: requests kept.
        counts: requests received so far, by name.
    """

    def __init__(self, limit: int = REQUEST_LOG_LIMIT) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError(f"the request log keeps at least 1 request, not {limit}")
        self.limit = limit
        self._trim_at = limit + max(1, limit // 10)
        self.counts: collections.Counter[str] = collections.Counter()

    def append(self, request: Request) -> None:
        """Record ``request``; beyond the limit the oldest go, a batch at a time."""
        super().append(request)
        self.counts[request.name] += 1
        if len(self) >= self._trim_at:
            del self[: len(self) - self.limit]


class FakeGateway(FaultInjection):
    """A fault-injecting TWS / IB Gateway simulator.

    Use as ``async with FakeGateway(...) as gw`` or call :meth:`start` and
    :meth:`stop` (both work with ``loop.run_until_complete`` on a loop that
    is not running, for sync clients).

    Args:
        accounts: Managed accounts announced to clients.
        next_order_id: First ``nextValidId`` given out.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        host: Interface to bind, 127.0.0.1 by default.
        prices: Initial last prices per symbol. The gateway knows the
            instruments of :data:`~ibkr_connection.simulator.brokerage.DEFAULT_INSTRUMENTS`
            (AAPL, MSFT, IBM, SPY at 100), those named here, and those added by
            :meth:`add_instrument`; a client request naming any other contract
            (``reqContractDetails``, ``reqMktData``, ``placeOrder``) gets error
            200, as from TWS. :meth:`push_tick` and :meth:`create_order` add
            the symbol they name.
        fill_mode: ``"immediate"`` fills orders in full right after
            ``Submitted``; ``"manual"`` leaves them working until
            :meth:`fill_order`; ``("parts", n)`` fills in ``n`` executions.
        farms: Data farms announced as OK (2104/2106/2158) after each
            ``startApi``, as TWS does; ``[]`` to stay quiet.
        server_version: Highest protocol version spoken, 157..178 (default
            178): each client is answered with the highest version in its
            range up to this cap, as TWS does (ib_insync 0.9.86 gets 176,
            ib_async 2.x 178); a range below 157 or above the cap is refused.
        commission: Commission charged per execution.
        ibc_port: Also run IBC's command server
            (:class:`~ibkr_connection.simulator.ibc.IbcCommandServer`) on this
            port (0: a free one; None: none); see :attr:`ibc`.
        ibc_restart_outage: Seconds a ``RESTART`` keeps the gateway refusing
            connections.
        clock: Where the simulator reads time (``monotonic()`` and ``wall()``,
            e.g. an :class:`ibkr_connection.clock.LoopClock` on virtual time);
            the real clock if omitted.
        request_log_limit: Requests :attr:`requests` keeps (the most
            recent); a simulator running for days keeps a bounded record.

    Attributes:
        requests: The most recent requests received, oldest first (a
            :class:`RequestLog`: ``requests.counts`` counts every request
            received, by name).
        ibc: The IBC command server, when ``ibc_port`` was given (its ``port``
            is the one bound once started).
        book: The simulated brokerage; :attr:`accounts`, :attr:`orders` and
            the other book attributes below read and write it.
    """

    def __init__(
        self,
        accounts: Sequence[str] = ("DU1234567",),
        next_order_id: int = 1,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        prices: dict[str, float] | None = None,
        fill_mode: FillMode = "immediate",
        farms: Sequence[str] = ("usfarm", "ushmds", "secdefil"),
        server_version: int = p.SERVER_VERSION,
        commission: float = 1.0,
        ibc_port: int | None = None,
        ibc_restart_outage: float = 1.0,
        clock: SimClock | None = None,
        request_log_limit: int = REQUEST_LOG_LIMIT,
    ) -> None:
        super().__init__(host, port, server_version, farms)
        self.requests: RequestLog = RequestLog(request_log_limit)
        if clock is not None:
            self.clock = clock
        self.book = Brokerage(
            accounts, next_order_id, fill_mode=fill_mode, commission=commission, prices=prices
        )
        self.book.wall = self.clock.wall
        self.ibc = None if ibc_port is None else IbcCommandServer(
            self, host, ibc_port, restart_outage=ibc_restart_outage)

    async def start(self) -> None:
        """Start listening, and IBC's command server when there is one."""
        await super().start()
        if self.ibc is not None:
            await self.ibc.start()

    async def stop(self) -> None:
        """Stop IBC's command server (if any), stop listening, close every connection."""
        if self.ibc is not None:
            await self.ibc.stop()
        await super().stop()

    async def __aenter__(self) -> FakeGateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _handle_request(self, conn: ApiClient, request: Request) -> None:
        if not self._order_faults:  # the usual case, without a call
            handlers.dispatch(self, conn, request)
            return
        fault = self.order_fault(conn, request)  # an order caught by a drop, if armed
        if fault == "lost":
            return
        handlers.dispatch(self, conn, request)
        if fault == "drop_after":
            self.drop_after(conn)

    # ------------------------------------------------------------ book attributes
    @property
    def accounts(self) -> list[str]:
        """Managed accounts announced to clients; the first is the default."""
        return self.book.accounts

    @accounts.setter
    def accounts(self, value: list[str]) -> None:
        self.book.accounts = value

    @property
    def account_values(self) -> dict[str, tuple[str, str]]:
        """Account values announced to clients, tag -> (value, currency)."""
        return self.book.account_values

    @account_values.setter
    def account_values(self, value: dict[str, tuple[str, str]]) -> None:
        self.book.account_values = value

    @property
    def fill_mode(self) -> FillMode:
        """How orders fill after they are placed (see the class docstring)."""
        return self.book.fill_mode

    @fill_mode.setter
    def fill_mode(self, value: FillMode) -> None:
        self.book.fill_mode = value

    @property
    def commission(self) -> float:
        """Commission charged per execution."""
        return self.book.commission

    @commission.setter
    def commission(self, value: float) -> None:
        self.book.commission = value

    @property
    def instruments(self) -> dict[str, Instrument]:
        """Known instruments by symbol."""
        return self.book.instruments

    @instruments.setter
    def instruments(self, value: dict[str, Instrument]) -> None:
        self.book.instruments = value

    @property
    def orders(self) -> dict[int, SimOrder]:
        """Every order by order id: working, or finished today (the book keeps one day)."""
        return self.book.orders

    @orders.setter
    def orders(self, value: dict[int, SimOrder]) -> None:
        self.book.orders = value

    @property
    def executions(self) -> list[SimExecution]:
        """Today's executions, oldest first (the book keeps one day)."""
        return self.book.executions

    @executions.setter
    def executions(self, value: list[SimExecution]) -> None:
        self.book.executions = value

    @property
    def positions(self) -> dict[tuple[str, int], SimPosition]:
        """Positions by (account, conId)."""
        return self.book.positions

    @positions.setter
    def positions(self, value: dict[tuple[str, int], SimPosition]) -> None:
        self.book.positions = value

    @property
    def next_valid_id(self) -> int:
        """The order id the next ``nextValidId`` message will carry."""
        return self.book.next_valid_id

    def set_next_valid_id(self, n: int) -> None:
        """Set the order id announced by ``nextValidId`` (at connect and on ``reqIds``).

        Args:
            n: The next valid order id.
        """
        self.book.next_valid_id = n

    # ------------------------------------------------------------ book operations
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
        """Add (or reprice) an instrument: clients can then qualify it, stream it, trade it.

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
        return self.book.add_instrument(
            symbol, price, con_id=con_id, sec_type=sec_type, currency=currency, spread=spread,
            exchange=exchange, primary_exchange=primary_exchange,
        )

    def create_order(
        self,
        symbol: str,
        action: str,
        quantity: float,
        *,
        client_id: int = 0,
        order_type: str = "MKT",
        lmt_price: float = 0.0,
        account: str | None = None,
        order_id: int | None = None,
    ) -> SimOrder:
        """Add a working order as if a client had placed it earlier.

        Args:
            symbol: Ticker symbol.
            action: ``BUY`` or ``SELL``.
            quantity: Total quantity.
            client_id: Id of the (possibly absent) client owning the order.
            order_type: Order type.
            lmt_price: Limit price.
            account: Account (default: the first managed account).
            order_id: Order id (default: the next valid id, which is bumped).

        Returns:
            The new working order (no message is sent).
        """
        book = self.book
        oid = order_id if order_id is not None else book.next_valid_id
        order = SimOrder(
            order_id=oid,
            client_id=client_id,
            perm_id=book.next_perm_id(),
            account=account or book.accounts[0],
            instrument=book.find_instrument(symbol),
            action=action,
            total_quantity=float(quantity),
            order_type=order_type,
            lmt_price=lmt_price,
        )
        return book.add_order(order)

    def fill_order(
        self, order_id: int, quantity: float | None = None, price: float | None = None
    ) -> SimExecution:
        """Fill (part of) a working order; works with or without clients connected.

        The execution is booked (so ``reqExecutions`` replays it after any
        reconnect); connected clients get execDetails / orderStatus /
        commissionReport (the owner), ``position`` (clients that called
        ``reqPositions``) and ``updatePortfolio`` (subscribers of the account).

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
        ex = self.book.fill(order_id, quantity, price)
        order = ex.order
        for conn in self._client(order.client_id):
            conn.send_raw(messages.exec_details(ex, -1, version=conn.version))
            conn.send_raw(messages.open_order(order, version=conn.version))
            conn.send_raw(messages.order_status(order))
            conn.send_raw(messages.commission_report(ex))
        pos = self.book.positions[(order.account, order.instrument.con_id)]
        for conn in self.clients:
            if conn.positions_subscribed:
                conn.send_raw(messages.position(pos))
            if conn.account_subscription == order.account:
                conn.send_raw(messages.portfolio(pos))
        return ex

    def cancel_order(self, order_id: int) -> None:
        """Cancel a working order and tell its owner (if connected).

        Args:
            order_id: The order to cancel.

        Raises:
            KeyError: If the order is unknown.
        """
        if not self.book.cancel(order_id):
            return
        order = self.book.orders[order_id]
        for conn in self._client(order.client_id):
            conn.send_raw(messages.order_status(order))

    def push_tick(
        self,
        symbol_or_con_id: str | int,
        price: float,
        size: float = 100,
        *,
        bid: float | None = None,
        ask: float | None = None,
    ) -> int:
        """Set a new last price and stream it to every subscribed client.

        Args:
            symbol_or_con_id: Symbol or conId of the instrument.
            price: New last price.
            size: Last size.
            bid: Optional new bid (also streamed).
            ask: Optional new ask (also streamed).

        Returns:
            The number of subscriptions that received the tick (0 while stalled).
        """
        inst = self.book.set_prices(symbol_or_con_id, price, bid=bid, ask=ask)
        if self.stalled:
            return 0
        sent = 0
        for conn in self.clients:
            for req_id, sub in conn.mkt_data.items():
                if sub is not inst:
                    continue
                if bid is not None:
                    conn.send_raw(messages.tick_price(req_id, p.TICK_BID, bid, size))
                if ask is not None:
                    conn.send_raw(messages.tick_price(req_id, p.TICK_ASK, ask, size))
                conn.send_raw(messages.tick_price(req_id, p.TICK_LAST, price, size))
                sent += 1
        return sent
