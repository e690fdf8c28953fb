"""FakeGateway: an asyncio TCP server speaking the TWS API wire protocol.

The gateway runs on the caller's event loop (no thread of its own), so it can
serve both async clients and a sync ``IB.connect()`` driven by
``loop.run_until_complete``. Faults (error codes, drops, restarts, stalls,
held startup replies) can be injected at any time from the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Literal

from ibkr_connection.simulator import protocol as p
from ibkr_connection.simulator.protocol import Field

logger = logging.getLogger(__name__)

FillMode = Literal["immediate", "manual"] | tuple[Literal["parts"], int]

#: Requests whose replies end with an "end" message that :meth:`FakeGateway.hold_sync`
#: can withhold, and that :attr:`FakeGateway.sync_delays` can delay.
SYNC_REQUESTS = (
    "reqPositions",
    "reqOpenOrders",
    "reqAllOpenOrders",
    "reqCompletedOrders",
    "reqAccountUpdates",
    "reqAccountUpdatesMulti",
    "reqExecutions",
    "reqAccountSummary",
    "reqPositionsMulti",
    "reqCurrentTime",
    "reqContractDetails",
)


@dataclass
class Request:
    """One request received from a client.

    Attributes:
        client_id: API client id (``None`` before ``startApi``).
        msg_id: Numeric message id.
        name: Readable name such as ``"reqMktData"``.
        fields: All fields of the message, the message id first.
        at: ``time.monotonic()`` when it was received.
        conn_id: Sequence number of the TCP connection.
    """

    client_id: int | None
    msg_id: int
    name: str
    fields: list[str]
    at: float
    conn_id: int


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

    def contract_fields(self, *, exchange: bool = True) -> list[Field]:
        """Contract fields in the common decoder order.

        Args:
            exchange: Emit ``exchange`` (True) or ``primaryExchange`` (False)
                in the exchange slot (``updatePortfolio`` uses the latter).

        Returns:
            conId, symbol, secType, expiry, strike, right, multiplier,
            exchange, currency, localSymbol, tradingClass.
        """
        return [
            self.con_id,
            self.symbol,
            self.sec_type,
            "",
            0.0,
            "",
            "",
            self.exchange if exchange else self.primary_exchange,
            self.currency,
            self.symbol,
            self.symbol if self.sec_type == "STK" else "",
        ]


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


@dataclass
class ApiClient:
    """One TCP connection to the gateway.

    Attributes:
        conn_id: Connection sequence number.
        peer: Remote address.
        client_id: API client id once ``startApi`` was accepted.
        connected_at: ``time.monotonic()`` of the accept.
        ready: True once ``startApi`` was accepted (in ``FakeGateway.clients``).
        client_versions: The ``(min, max)`` range the client offered.
        connect_options: Connect options the client sent.
        positions_subscribed: True after ``reqPositions``.
        account_subscription: Account of the active ``reqAccountUpdates``.
        mkt_data: Active market data subscriptions, reqId -> instrument.
    """

    conn_id: int
    peer: str
    transport: asyncio.Transport = field(repr=False)
    client_id: int | None = None
    connected_at: float = 0.0
    ready: bool = False
    client_versions: tuple[int, int] = (0, 0)
    connect_options: str = ""
    positions_subscribed: bool = False
    account_subscription: str | None = None
    mkt_data: dict[int, Instrument] = field(default_factory=dict)
    held: dict[str, list[bytes]] = field(default_factory=dict, repr=False)
    backlog: bytearray = field(default_factory=bytearray, repr=False)
    handles: list[asyncio.TimerHandle] = field(default_factory=list, repr=False)
    greeted: bool = False
    reader: p.FrameReader = field(default_factory=p.FrameReader, repr=False)

    def send(self, *fields: Field) -> None:
        """Send one message to this client (ignored once closing).

        Args:
            *fields: Message fields, the message id first.
        """
        self.send_raw(p.encode_message(fields))

    def send_raw(self, data: bytes) -> None:
        """Write pre-encoded frames to the socket (ignored once closing).

        Args:
            data: Framed bytes.
        """
        if not self.transport.is_closing():
            self.transport.write(data)


class _ClientProtocol(asyncio.Protocol):
    """asyncio protocol bridging one socket to the gateway."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.client: ApiClient | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = self.gateway._on_connect(transport)

    def data_received(self, data: bytes) -> None:
        if self.client is not None:
            self.gateway._on_data(self.client, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.gateway._on_disconnect(self.client, exc)


DEFAULT_ACCOUNT_VALUES: dict[str, tuple[str, str]] = {
    "NetLiquidation": ("1000000.00", "USD"),
    "TotalCashValue": ("1000000.00", "USD"),
    "BuyingPower": ("4000000.00", "USD"),
    "AvailableFunds": ("1000000.00", "USD"),
    "ExcessLiquidity": ("1000000.00", "USD"),
    "EquityWithLoanValue": ("1000000.00", "USD"),
    "AccountType": ("INDIVIDUAL", ""),
}


class FakeGateway:
    """A fault-injecting TWS / IB Gateway simulator.

    Use as ``async with FakeGateway(...) as gw`` or call :meth:`start` and
    :meth:`stop` (both work with ``loop.run_until_complete`` on a loop that
    is not running, for sync clients).

    Args:
        accounts: Managed accounts announced to clients.
        next_order_id: First ``nextValidId`` given out.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        host: Interface to bind, 127.0.0.1 by default.
        prices: Initial last prices per symbol; instruments are created on
            demand for other symbols (price 100).
        fill_mode: ``"immediate"`` fills orders in full right after
            ``Submitted``; ``"manual"`` leaves them working until
            :meth:`fill_order`; ``("parts", n)`` fills in ``n`` executions.
        farms: Data farms announced as OK (2104/2106/2158) after each
            ``startApi``, as TWS does; ``[]`` to stay quiet.
        server_version: Protocol version announced (default 157).
        commission: Commission charged per execution.
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
    ) -> None:
        self.accounts: list[str] = list(accounts)
        self.host = host
        self._port = port
        self.server_version = server_version
        self.fill_mode: FillMode = fill_mode
        self.commission = commission
        self.handshake_delay: float = 0.0
        self.sync_delays: dict[str, float] = {}
        self.account_values: dict[str, tuple[str, str]] = dict(DEFAULT_ACCOUNT_VALUES)
        self.farms: dict[str, bool] = {farm: True for farm in farms}
        self.requests: list[Request] = []
        self.accepted_connections = 0
        self.handshakes = 0
        self.instruments: dict[str, Instrument] = {}
        self.orders: dict[int, SimOrder] = {}
        self.executions: list[SimExecution] = []
        self.positions: dict[tuple[str, int], SimPosition] = {}
        self._next_valid_id = next_order_id
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[int, ApiClient] = {}
        self._conn_seq = itertools.count(1)
        self._perm_seq = itertools.count(1_000_001)
        self._exec_seq = itertools.count(1)
        self._con_id_seq = itertools.count(700_001)
        self._held: set[str] = set()
        self._stalled = False
        self._request_waiters: list[tuple[str, int | None, asyncio.Future[Request]]] = []
        for symbol, price in (prices or {}).items():
            self.add_instrument(symbol, price)

    # ------------------------------------------------------------ lifecycle
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

    @property
    def port(self) -> int:
        """The TCP port the gateway listens (or last listened) on."""
        return self._port

    @property
    def listening(self) -> bool:
        """True while the gateway accepts connections."""
        return self._server is not None

    @property
    def clients(self) -> list[ApiClient]:
        """Connected clients whose ``startApi`` was accepted."""
        return [c for c in self._conns.values() if c.ready]

    @property
    def connections(self) -> list[ApiClient]:
        """All open TCP connections, including those still handshaking."""
        return list(self._conns.values())

    @property
    def stalled(self) -> bool:
        """True while the gateway is hung (see :meth:`stall`)."""
        return self._stalled

    async def start(self) -> None:
        """Start listening on :attr:`host` / :attr:`port`."""
        await self.start_listening()

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.stop_listening()
        for conn in list(self._conns.values()):
            conn.transport.abort()
        await asyncio.sleep(0)

    async def start_listening(self) -> None:
        """Listen again on the same port (no-op if already listening)."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ClientProtocol(self), self.host, self._port, reuse_address=True
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("gateway listening on %s:%d", self.host, self._port)

    async def stop_listening(self) -> None:
        """Stop accepting connections (new ones are refused); existing stay."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            logger.info("gateway stopped listening on port %d", self._port)
        await asyncio.sleep(0)

    # ---------------------------------------------------------- connections
    def _on_connect(self, transport: asyncio.Transport) -> ApiClient:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        conn = ApiClient(
            conn_id=next(self._conn_seq),
            peer=f"{peer[0]}:{peer[1]}" if peer else "?",
            transport=transport,
            connected_at=time.monotonic(),
        )
        self._conns[conn.conn_id] = conn
        self.accepted_connections += 1
        logger.info("connection %d accepted from %s", conn.conn_id, conn.peer)
        return conn

    def _on_disconnect(self, conn: ApiClient, exc: Exception | None) -> None:
        self._conns.pop(conn.conn_id, None)
        for handle in conn.handles:
            handle.cancel()
        logger.info(
            "client %s (connection %d) disconnected%s",
            conn.client_id,
            conn.conn_id,
            f": {exc}" if exc else "",
        )

    def _close_broken(self, conn: ApiClient, reason: str) -> None:
        logger.warning(
            "closing connection %d (client %s): %s", conn.conn_id, conn.client_id, reason
        )
        conn.transport.abort()

    def _on_data(self, conn: ApiClient, data: bytes) -> None:
        if self._stalled:
            conn.backlog += data
            return
        try:
            if not conn.greeted:
                conn.reader._buffer += data
                prefix = conn.reader.take_prefix(len(p.API_PREFIX))
                if prefix is None:
                    return
                if prefix != p.API_PREFIX:
                    self._close_broken(conn, f"bad API prefix {prefix!r}")
                    return
                conn.greeted = True
                data = b""
            for payload in conn.reader.feed(data):
                if conn.transport.is_closing():
                    return
                self._on_frame(conn, payload)
        except p.ProtocolError as exc:
            self._close_broken(conn, str(exc))

    def _on_frame(self, conn: ApiClient, payload: bytes) -> None:
        if conn.client_versions == (0, 0):
            low, high, options = p.parse_version_range(payload)
            conn.client_versions = (low, high)
            conn.connect_options = options
            if not low <= self.server_version <= high:
                self._close_broken(
                    conn, f"client versions {low}..{high} exclude {self.server_version}"
                )
                return
            self._later(conn, self.handshake_delay, self._send_server_version, conn)
            return
        fields = p.split_fields(payload)
        if not fields:
            return
        try:
            msg_id = int(fields[0])
        except ValueError:
            logger.warning("connection %d sent garbage %r; ignored", conn.conn_id, fields[:3])
            return
        name = p.INCOMING.get(msg_id, f"unknown{msg_id}")
        request = Request(conn.client_id, msg_id, name, fields, time.monotonic(), conn.conn_id)
        self.requests.append(request)
        self._notify_waiters(request)
        handler = self._handlers.get(name)
        if handler is None:
            logger.info("client %s sent %s %s; ignored", conn.client_id, name, fields[1:])
            return
        if msg_id != 71 and not conn.ready:
            logger.warning("client sent %s before startApi; ignored", name)
            return
        try:
            handler(self, conn, fields)
        except (ValueError, IndexError) as exc:
            logger.warning("malformed %s from client %s: %s", name, conn.client_id, exc)

    def _later(
        self, conn: ApiClient, delay: float, func: Callable[..., None], *args: object
    ) -> None:
        if delay <= 0:
            func(*args)
            return
        handle = asyncio.get_running_loop().call_later(delay, func, *args)
        conn.handles.append(handle)

    def _send_server_version(self, conn: ApiClient) -> None:
        now = datetime.now(timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
        conn.send(self.server_version, now)

    # ------------------------------------------------------------ replies
    def _reply(self, conn: ApiClient, name: str, body: Iterable[bytes], end: bytes | None) -> None:
        """Send a request's reply honouring sync delays and held ends."""
        data = b"".join(body)

        def deliver() -> None:
            conn.send_raw(data)
            if end is None:
                return
            if name in self._held:
                conn.held.setdefault(name, []).append(end)
                logger.info("holding end of %s for client %s", name, conn.client_id)
            else:
                conn.send_raw(end)

        self._later(conn, self.sync_delays.get(name, 0.0), deliver)

    def _start_api(self, conn: ApiClient, fields: list[str]) -> None:
        client_id = int(fields[2])
        conn.client_id = client_id
        if any(c.client_id == client_id for c in self.clients):
            logger.warning(
                "client id %d already in use; rejecting connection %d", client_id, conn.conn_id
            )
            conn.send(p.ERR_MSG, 2, -1, 326, p.default_message(326))
            conn.transport.close()
            return
        conn.ready = True
        self.handshakes += 1
        logger.info("client %d connected (connection %d)", client_id, conn.conn_id)
        conn.send(p.MANAGED_ACCTS, 1, ",".join(self.accounts))
        conn.send(p.NEXT_VALID_ID, 1, self._next_valid_id)
        for farm, ok in self.farms.items():
            broken_code, ok_code = p.farm_codes(farm)
            code = ok_code if ok else broken_code
            conn.send(p.ERR_MSG, 2, -1, code, p.default_message(code, farm=farm))

    def _req_current_time(self, conn: ApiClient, fields: list[str]) -> None:
        msg = p.encode_message([p.CURRENT_TIME, 1, int(time.time())])
        self._reply(conn, "reqCurrentTime", [], msg)

    def _req_ids(self, conn: ApiClient, fields: list[str]) -> None:
        conn.send(p.NEXT_VALID_ID, 1, self._next_valid_id)

    def _req_managed_accts(self, conn: ApiClient, fields: list[str]) -> None:
        conn.send(p.MANAGED_ACCTS, 1, ",".join(self.accounts))

    def _req_positions(self, conn: ApiClient, fields: list[str]) -> None:
        conn.positions_subscribed = True
        body = [self._position_msg(pos) for pos in self.positions.values()]
        self._reply(conn, "reqPositions", body, p.encode_message([p.POSITION_END, 1]))

    def _cancel_positions(self, conn: ApiClient, fields: list[str]) -> None:
        conn.positions_subscribed = False

    def _req_open_orders(self, conn: ApiClient, fields: list[str]) -> None:
        everyone = fields[0] == "16"
        body: list[bytes] = []
        for order in self.orders.values():
            if order.is_done or not (everyone or order.client_id == conn.client_id):
                continue
            body += [self._open_order_msg(order), self._order_status_msg(order)]
        name = "reqAllOpenOrders" if everyone else "reqOpenOrders"
        self._reply(conn, name, body, p.encode_message([p.OPEN_ORDER_END, 1]))

    def _req_completed_orders(self, conn: ApiClient, fields: list[str]) -> None:
        body = [self._completed_order_msg(o) for o in self.orders.values() if o.is_done]
        self._reply(conn, "reqCompletedOrders", body, p.encode_message([p.COMPLETED_ORDERS_END]))

    def _req_account_updates(self, conn: ApiClient, fields: list[str]) -> None:
        subscribe = fields[2] == "1"
        account = fields[3] if len(fields) > 3 and fields[3] else self.accounts[0]
        if not subscribe:
            conn.account_subscription = None
            return
        conn.account_subscription = account
        body = [
            p.encode_message([p.ACCT_VALUE, 2, key, value, currency, account])
            for key, (value, currency) in self.account_values.items()
        ]
        body += [
            self._portfolio_msg(pos) for pos in self.positions.values() if pos.account == account
        ]
        body.append(p.encode_message([p.ACCT_UPDATE_TIME, 1, time.strftime("%H:%M")]))
        end = p.encode_message([p.ACCT_DOWNLOAD_END, 1, account])
        self._reply(conn, "reqAccountUpdates", body, end)

    def _req_account_updates_multi(self, conn: ApiClient, fields: list[str]) -> None:
        req_id, account, model = int(fields[2]), fields[3], fields[4]
        body = [
            p.encode_message([p.ACCOUNT_UPDATE_MULTI, 1, req_id, account, model, key, value, cur])
            for key, (value, cur) in self.account_values.items()
        ]
        end = p.encode_message([p.ACCOUNT_UPDATE_MULTI_END, 1, req_id])
        self._reply(conn, "reqAccountUpdatesMulti", body, end)

    def _req_positions_multi(self, conn: ApiClient, fields: list[str]) -> None:
        req_id = int(fields[2])
        self._reply(
            conn, "reqPositionsMulti", [], p.encode_message([p.POSITION_MULTI_END, 1, req_id])
        )

    def _req_account_summary(self, conn: ApiClient, fields: list[str]) -> None:
        req_id = int(fields[2])
        tags = {t for t in fields[4].split(",") if t} if len(fields) > 4 else set()
        body = [
            p.encode_message([p.ACCOUNT_SUMMARY, 1, req_id, account, key, value, cur])
            for account in self.accounts
            for key, (value, cur) in self.account_values.items()
            if not tags or key in tags or "All" in tags
        ]
        end = p.encode_message([p.ACCOUNT_SUMMARY_END, 1, req_id])
        self._reply(conn, "reqAccountSummary", body, end)

    def _req_executions(self, conn: ApiClient, fields: list[str]) -> None:
        req_id = int(fields[2])
        f_client = int(fields[3] or 0) if len(fields) > 3 else 0
        f_account = fields[4] if len(fields) > 4 else ""
        f_symbol = fields[6] if len(fields) > 6 else ""
        f_sectype = fields[7] if len(fields) > 7 else ""
        f_side = fields[9] if len(fields) > 9 else ""
        body: list[bytes] = []
        for ex in self.executions:
            order = ex.order
            if f_client and order.client_id != f_client:
                continue
            if f_account and order.account != f_account:
                continue
            if f_symbol and order.instrument.symbol != f_symbol:
                continue
            if f_sectype and order.instrument.sec_type != f_sectype:
                continue
            if f_side and not _side(order.action).startswith(f_side[:1].upper()):
                continue
            body += [self._exec_msg(ex, req_id), self._commission_msg(ex)]
        self._reply(
            conn, "reqExecutions", body, p.encode_message([p.EXECUTION_DATA_END, 1, req_id])
        )

    def _req_contract_details(self, conn: ApiClient, fields: list[str]) -> None:
        req_id = int(fields[2])
        con_id = int(fields[3] or 0)
        symbol = fields[4]
        inst = self._lookup(con_id, symbol, create=False)
        if inst is None:
            conn.send(p.ERR_MSG, 2, req_id, 200, p.default_message(200))
            return
        body = [p.encode_message(self._contract_details_fields(inst, req_id))]
        end = p.encode_message([p.CONTRACT_DATA_END, 1, req_id])
        self._reply(conn, "reqContractDetails", body, end)

    def _req_mkt_data(self, conn: ApiClient, fields: list[str]) -> None:
        req_id = int(fields[2])
        inst = self._get_or_create(int(fields[3] or 0), fields[4], fields[5], fields[12])
        snapshot = len(fields) > 17 and fields[17] == "1"
        if not snapshot:
            conn.mkt_data[req_id] = inst
        if self._stalled:
            return
        conn.send(p.MARKET_DATA_TYPE, 1, req_id, 1)
        for msg in self._tick_burst(req_id, inst):
            conn.send_raw(msg)
        if snapshot:
            conn.send(p.TICK_SNAPSHOT_END, 1, req_id)

    def _cancel_mkt_data(self, conn: ApiClient, fields: list[str]) -> None:
        conn.mkt_data.pop(int(fields[2]), None)

    def _place_order(self, conn: ApiClient, fields: list[str]) -> None:
        assert conn.client_id is not None
        order_id = int(fields[1])
        existing = self.orders.get(order_id)
        if existing is not None:
            if existing.client_id != conn.client_id or existing.is_done:
                conn.send(p.ERR_MSG, 2, order_id, 103, p.default_message(103))
                return
            # modification of a working order
            existing.total_quantity = float(fields[17] or existing.total_quantity)
            existing.lmt_price = float(fields[19] or 0)
            existing.aux_price = float(fields[20] or 0)
            conn.send_raw(self._open_order_msg(existing))
            conn.send_raw(self._order_status_msg(existing))
            return
        inst = self._get_or_create(int(fields[2] or 0), fields[3], fields[4], fields[11])
        order = SimOrder(
            order_id=order_id,
            client_id=conn.client_id,
            perm_id=next(self._perm_seq),
            account=fields[23] or self.accounts[0],
            instrument=inst,
            action=fields[16],
            total_quantity=float(fields[17] or 0),
            order_type=fields[18],
            lmt_price=float(fields[19] or 0),
            aux_price=float(fields[20] or 0),
            tif=fields[21] or "DAY",
            order_ref=fields[26],
        )
        self.orders[order_id] = order
        self._next_valid_id = max(self._next_valid_id, order_id + 1)
        logger.info(
            "client %s placed order %d: %s %s %s %s",
            conn.client_id,
            order_id,
            order.action,
            order.total_quantity,
            inst.symbol,
            order.order_type,
        )
        conn.send_raw(self._open_order_msg(order))
        conn.send_raw(self._order_status_msg(order))
        mode = self.fill_mode
        if mode == "immediate":
            self.fill_order(order_id)
        elif isinstance(mode, tuple) and mode[0] == "parts":
            parts = max(int(mode[1]), 1)
            base = order.total_quantity // parts
            for i in range(parts):
                qty = order.remaining if i == parts - 1 else base
                if qty > 0:
                    self.fill_order(order_id, quantity=qty)

    def _cancel_order(self, conn: ApiClient, fields: list[str]) -> None:
        order_id = int(fields[2])
        order = self.orders.get(order_id)
        if order is None or order.is_done:
            conn.send(
                p.ERR_MSG, 2, order_id, 10147, p.DEFAULT_MESSAGES[10147].format(order_id=order_id)
            )
            return
        self.cancel_order(order_id)

    def _global_cancel(self, conn: ApiClient, fields: list[str]) -> None:
        for order in list(self.orders.values()):
            if not order.is_done:
                self.cancel_order(order.order_id)

    _handlers: dict[str, Callable[[FakeGateway, ApiClient, list[str]], None]] = {
        "startApi": _start_api,
        "reqCurrentTime": _req_current_time,
        "reqIds": _req_ids,
        "reqManagedAccts": _req_managed_accts,
        "reqPositions": _req_positions,
        "cancelPositions": _cancel_positions,
        "reqOpenOrders": _req_open_orders,
        "reqAllOpenOrders": _req_open_orders,
        "reqCompletedOrders": _req_completed_orders,
        "reqAccountUpdates": _req_account_updates,
        "reqAccountUpdatesMulti": _req_account_updates_multi,
        "reqPositionsMulti": _req_positions_multi,
        "reqAccountSummary": _req_account_summary,
        "reqExecutions": _req_executions,
        "reqContractDetails": _req_contract_details,
        "reqMktData": _req_mkt_data,
        "cancelMktData": _cancel_mkt_data,
        "placeOrder": _place_order,
        "cancelOrder": _cancel_order,
        "reqGlobalCancel": _global_cancel,
    }

    # ------------------------------------------------------------ encoders
    def _position_msg(self, pos: SimPosition) -> bytes:
        return p.encode_message(
            [
                p.POSITION_DATA,
                3,
                pos.account,
                *pos.instrument.contract_fields(),
                pos.quantity,
                pos.avg_cost,
            ]
        )

    def _portfolio_msg(self, pos: SimPosition) -> bytes:
        inst = pos.instrument
        price = inst.last
        value = price * pos.quantity
        unrealized = (price - pos.avg_cost) * pos.quantity
        return p.encode_message(
            [
                p.PORTFOLIO_VALUE,
                8,
                *inst.contract_fields(exchange=False),
                pos.quantity,
                price,
                value,
                pos.avg_cost,
                unrealized,
                pos.realized_pnl,
                pos.account,
            ]
        )

    def _order_status_msg(self, order: SimOrder) -> bytes:
        return p.encode_message(
            [
                p.ORDER_STATUS,
                order.order_id,
                order.status,
                order.filled,
                order.remaining,
                order.avg_fill_price,
                order.perm_id,
                0,
                order.last_fill_price,
                order.client_id,
                "",
                0.0,
            ]
        )

    def _open_order_msg(self, order: SimOrder) -> bytes:
        inst = order.instrument
        f: list[Field] = [p.OPEN_ORDER, order.order_id, *inst.contract_fields()]
        f += [
            order.action,
            order.total_quantity,
            order.order_type,
            order.lmt_price,
            order.aux_price,
        ]
        f += [order.tif, "", order.account, "O", 0, order.order_ref, order.client_id, order.perm_id]
        f += [
            "0",
            "0",
            0.0,
            "",
            "",
        ]  # outsideRth hidden discretionaryAmt goodAfterTime sharesAllocation
        f += ["", "", "", "", ""]  # faGroup faMethod faPercentage faProfile modelCode
        f += ["", "", "", "", "", "", ""]  # goodTillDate rule80A percentOffset settlingFirm ..
        f += ["", "", "", "", "", ""]  # auctionStrategy startingPrice .. stockRangeUpper
        f += ["", "0", "0", "0", "", "", "0", "0", ""]  # displaySize .. nbboPriceCap
        f += [0, 0, "", "", "", ""]  # parentId triggerMethod volatility volType dnOrderType dnAux
        f += ["0", "", "", "", "", "", ""]  # continuousUpdate .. comboLegsDescrip
        f += [0, 0, 0]  # comboLegs orderComboLegs smartComboRoutingParams
        f += ["", "", ""]  # scaleInitLevelSize scaleSubsLevelSize scalePriceIncrement
        f += [""]  # hedgeType
        f += [
            "0",
            "",
            "",
            "0",
            "0",
        ]  # optOutSmartRouting clearingAccount clearingIntent notHeld dnc
        f += [""]  # algoStrategy
        f += ["0", "0", order.status]  # solicited whatIf status
        f += ["", "", "", "", "", "", "", "", ""]  # margin fields
        f += ["", "", "", "", ""]  # commission min max currency warningText
        f += ["0", "0"]  # randomizeSize randomizePrice
        f += [0]  # conditions
        f += ["", "", "", "", "", "", "", ""]  # adjusted* fields
        f += ["", "", ""]  # softDollarTier
        f += ["", "0", "0", "", "0"]  # cashQty dontUseAutoPriceForHedge isOms discUpTo usePriceMgmt
        return p.encode_message(f)

    def _completed_order_msg(self, order: SimOrder) -> bytes:
        inst = order.instrument
        f: list[Field] = [p.COMPLETED_ORDER, *inst.contract_fields()]
        f += [
            order.action,
            order.total_quantity,
            order.order_type,
            order.lmt_price,
            order.aux_price,
        ]
        f += [order.tif, "", order.account, "O", 0, order.order_ref, order.perm_id]
        f += ["0", "0", 0.0, ""]  # outsideRth hidden discretionaryAmt goodAfterTime
        f += ["", "", "", "", ""]  # fa* modelCode
        f += ["", "", "", "", "", "", ""]  # goodTillDate .. exemptCode
        f += ["", "", "", "", ""]  # startingPrice stockRefPrice delta rangeLower rangeUpper
        f += ["", "0", "0", "", ""]  # displaySize sweepToFill allOrNone minQty ocaType
        f += [0, "", "", "", ""]  # triggerMethod volatility volType dnOrderType dnAux
        f += [
            "0",
            "",
            "",
            "",
            "",
        ]  # continuousUpdate refPriceType trailStop trailingPct legsDescrip
        f += [0, 0, 0]
        f += ["", "", ""]
        f += [""]  # hedgeType
        f += ["", "", "0", "0"]  # clearingAccount clearingIntent notHeld dnc
        f += [""]  # algoStrategy
        f += ["0", order.status, "0", "0"]  # solicited status randomizeSize randomizePrice
        f += [0]  # conditions
        f += ["", "", "", "0", "0", "", order.filled, "", "0", "", "0", "0", ""]
        f += [order.completed_time, order.status]
        return p.encode_message(f)

    def _exec_msg(self, ex: SimExecution, req_id: int) -> bytes:
        order = ex.order
        inst = order.instrument
        return p.encode_message(
            [
                p.EXECUTION_DATA,
                req_id,
                order.order_id,
                *inst.contract_fields(),
                ex.exec_id,
                ex.time.strftime("%Y%m%d %H:%M:%S UTC"),
                order.account,
                "ISLAND",
                _side(order.action),
                ex.shares,
                ex.price,
                order.perm_id,
                order.client_id,
                0,
                ex.cum_qty,
                ex.avg_price,
                order.order_ref,
                "",
                "",
                "",
                1,
            ]
        )

    def _commission_msg(self, ex: SimExecution) -> bytes:
        return p.encode_message(
            [p.COMMISSION_REPORT, 1, ex.exec_id, ex.commission, "USD", ex.realized_pnl, "", ""]
        )

    def _contract_details_fields(self, inst: Instrument, req_id: int) -> list[Field]:
        f: list[Field] = [p.CONTRACT_DATA, 8, req_id, inst.symbol, inst.sec_type, "", 0.0, ""]
        f += [inst.exchange, inst.currency, inst.symbol, inst.primary_exchange, inst.symbol]
        f += [inst.con_id, 0.01, 1, "", "LMT,MKT", "SMART," + inst.primary_exchange, 1, 0]
        f += [inst.symbol, inst.primary_exchange, "", "", "", "", "US/Eastern", "", "", "", ""]
        f += [0, 1, "", "", "", "", "COMMON"]
        return f

    def _tick_burst(self, req_id: int, inst: Instrument) -> list[bytes]:
        return [
            p.encode_message([p.TICK_PRICE, 6, req_id, p.TICK_BID, inst.bid, 100, 0]),
            p.encode_message([p.TICK_PRICE, 6, req_id, p.TICK_ASK, inst.ask, 100, 0]),
            p.encode_message([p.TICK_PRICE, 6, req_id, p.TICK_LAST, inst.last, 100, 0]),
            p.encode_message([p.TICK_SIZE, 6, req_id, p.TICK_VOLUME, 1000]),
        ]

    # ------------------------------------------------------------ books
    def add_instrument(
        self,
        symbol: str,
        price: float = 100.0,
        *,
        con_id: int | None = None,
        sec_type: str = "STK",
        currency: str = "USD",
        spread: float = 0.02,
    ) -> Instrument:
        """Add (or reprice) an instrument.

        Args:
            symbol: Ticker symbol.
            price: Last price; bid/ask are set ``spread`` apart around it.
            con_id: Contract id (a fresh one if omitted).
            sec_type: Security type.
            currency: Currency.
            spread: Bid/ask spread.

        Returns:
            The instrument.
        """
        inst = self.instruments.get(symbol)
        if inst is None:
            inst = Instrument(
                symbol=symbol,
                con_id=con_id or next(self._con_id_seq),
                sec_type=sec_type,
                currency=currency,
            )
            self.instruments[symbol] = inst
        inst.last = price
        inst.bid = round(price - spread / 2, 6)
        inst.ask = round(price + spread / 2, 6)
        return inst

    def _lookup(
        self,
        con_id: int,
        symbol: str,
        *,
        sec_type: str = "STK",
        currency: str = "USD",
        create: bool = True,
    ) -> Instrument | None:
        if con_id:
            for inst in self.instruments.values():
                if inst.con_id == con_id:
                    return inst
        if symbol in self.instruments:
            return self.instruments[symbol]
        if not create or not symbol:
            return None
        return self.add_instrument(
            symbol, con_id=con_id or None, sec_type=sec_type or "STK", currency=currency or "USD"
        )

    def _get_or_create(self, con_id: int, symbol: str, sec_type: str, currency: str) -> Instrument:
        inst = self._lookup(con_id, symbol, sec_type=sec_type, currency=currency)
        if inst is None:
            raise ValueError(f"no symbol or known conId in request ({con_id}, {symbol!r})")
        return inst

    def _find_instrument(self, key: str | int) -> Instrument:
        inst = (
            self._lookup(key, "", create=False)
            if isinstance(key, int)
            else self.instruments.get(key)
        )
        if inst is None:
            if isinstance(key, int):
                raise KeyError(f"unknown conId {key}")
            inst = self.add_instrument(key)
        return inst

    def _client(self, client_id: int | None) -> list[ApiClient]:
        return [c for c in self.clients if client_id is None or c.client_id == client_id]

    def set_next_valid_id(self, n: int) -> None:
        """Set the order id announced by ``nextValidId`` (at connect and on ``reqIds``).

        Args:
            n: The next valid order id.
        """
        self._next_valid_id = n

    @property
    def next_valid_id(self) -> int:
        """The order id the next ``nextValidId`` message will carry."""
        return self._next_valid_id

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
        oid = order_id if order_id is not None else self._next_valid_id
        order = SimOrder(
            order_id=oid,
            client_id=client_id,
            perm_id=next(self._perm_seq),
            account=account or self.accounts[0],
            instrument=self._find_instrument(symbol),
            action=action,
            total_quantity=float(quantity),
            order_type=order_type,
            lmt_price=lmt_price,
        )
        self.orders[oid] = order
        self._next_valid_id = max(self._next_valid_id, oid + 1)
        return order

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
        now = datetime.now(timezone.utc)
        if order.remaining <= 0:
            order.status = "Filled"
            order.completed_time = now.strftime("%Y%m%d %H:%M:%S UTC")
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
        for conn in self._client(order.client_id):
            conn.send_raw(self._exec_msg(ex, -1))
            conn.send_raw(self._open_order_msg(order))
            conn.send_raw(self._order_status_msg(order))
            conn.send_raw(self._commission_msg(ex))
        pos = self.positions[(order.account, inst.con_id)]
        for conn in self.clients:
            if conn.positions_subscribed:
                conn.send_raw(self._position_msg(pos))
            if conn.account_subscription == order.account:
                conn.send_raw(self._portfolio_msg(pos))
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

    def cancel_order(self, order_id: int) -> None:
        """Cancel a working order and tell its owner (if connected).

        Args:
            order_id: The order to cancel.

        Raises:
            KeyError: If the order is unknown.
        """
        order = self.orders[order_id]
        if order.is_done:
            return
        order.status = "Cancelled"
        order.completed_time = datetime.now(timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
        logger.info("order %d cancelled", order_id)
        for conn in self._client(order.client_id):
            conn.send_raw(self._order_status_msg(order))

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
        inst = self._find_instrument(symbol_or_con_id)
        inst.last = price
        if bid is not None:
            inst.bid = bid
        if ask is not None:
            inst.ask = ask
        if self._stalled:
            return 0
        sent = 0
        for conn in self.clients:
            for req_id, sub in conn.mkt_data.items():
                if sub is not inst:
                    continue
                if bid is not None:
                    conn.send(p.TICK_PRICE, 6, req_id, p.TICK_BID, bid, size, 0)
                if ask is not None:
                    conn.send(p.TICK_PRICE, 6, req_id, p.TICK_ASK, ask, size, 0)
                conn.send(p.TICK_PRICE, 6, req_id, p.TICK_LAST, price, size, 0)
                sent += 1
        return sent

    # ------------------------------------------------------------ requests log
    def requests_named(self, name: str, client_id: int | None = None) -> list[Request]:
        """Return logged requests with the given name.

        Args:
            name: Readable request name, e.g. ``"reqMktData"``.
            client_id: Only this client's requests (``None`` = any).

        Returns:
            The matching requests, oldest first.
        """
        return [
            r
            for r in self.requests
            if r.name == name and (client_id is None or r.client_id == client_id)
        ]

    async def wait_for_request(
        self, name: str, client_id: int | None = None, timeout: float = 5.0
    ) -> Request:
        """Wait until a request with this name arrives (after the call).

        Args:
            name: Readable request name.
            client_id: Only this client's requests (``None`` = any).
            timeout: Seconds before ``asyncio.TimeoutError``.

        Returns:
            The request.
        """
        fut: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        entry = (name, client_id, fut)
        self._request_waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._request_waiters:
                self._request_waiters.remove(entry)

    def _notify_waiters(self, request: Request) -> None:
        for name, client_id, fut in list(self._request_waiters):
            if name == request.name and client_id in (None, request.client_id) and not fut.done():
                fut.set_result(request)

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.requests.clear()

    # ------------------------------------------------------------ faults
    async def send_error(
        self,
        code: int,
        client_id: int | None = None,
        message: str | None = None,
        req_id: int = -1,
    ) -> int:
        """Send an IB error / system message (sent even while stalled).

        Args:
            code: IB message code, e.g. 1100.
            client_id: Target client id; ``None`` for every connected client.
            message: Text; IB's wording for ``code`` if omitted.
            req_id: Request id; -1 for system messages, as TWS uses.

        Returns:
            Number of clients the message was sent to.
        """
        text = message if message is not None else p.default_message(code, port=self._port)
        targets = self._client(client_id)
        for conn in targets:
            conn.send(p.ERR_MSG, 2, req_id, code, text)
        logger.info("fault: sent %d %r to %d client(s)", code, text, len(targets))
        await asyncio.sleep(0)
        return len(targets)

    async def farm_broken(
        self, farm: str = "usfarm", client_id: int | None = None, code: int | None = None
    ) -> None:
        """Mark a data farm broken and send 2103 / 2105 / 2157 (by farm kind).

        Args:
            farm: Farm name (``usfarm``, ``ushmds``, ``secdefil`` ...).
            client_id: Target client; ``None`` for all.
            code: Explicit code instead of the one derived from the name.
        """
        self.farms[farm] = False
        broken, _ = p.farm_codes(farm)
        use = code if code is not None else broken
        await self.send_error(use, client_id, p.default_message(use, farm=farm))

    async def farm_ok(
        self, farm: str = "usfarm", client_id: int | None = None, code: int | None = None
    ) -> None:
        """Mark a data farm OK and send 2104 / 2106 / 2158 (by farm kind).

        Args:
            farm: Farm name.
            client_id: Target client; ``None`` for all.
            code: Explicit code instead of the one derived from the name.
        """
        self.farms[farm] = True
        _, ok = p.farm_codes(farm)
        use = code if code is not None else ok
        await self.send_error(use, client_id, p.default_message(use, farm=farm))

    async def drop_clients(self, client_id: int | None = None) -> int:
        """Abort client sockets abruptly (no goodbye), including handshaking ones.

        Args:
            client_id: Only this client (``None``: every connection).

        Returns:
            Number of connections aborted.
        """
        victims = [c for c in self._conns.values() if client_id is None or c.client_id == client_id]
        for conn in victims:
            conn.transport.abort()
        logger.info("fault: dropped %d connection(s)", len(victims))
        await asyncio.sleep(0)
        return len(victims)

    async def restart(self, outage: float = 1.0) -> None:
        """Simulate a gateway restart: drop everyone, refuse for ``outage`` s, listen again.

        Args:
            outage: Seconds during which connections are refused.
        """
        logger.info("fault: gateway restart, outage %.2fs", outage)
        await self.stop_listening()
        await self.drop_clients()
        await asyncio.sleep(outage)
        await self.start_listening()

    async def reset_port(self, new_port: int = 0) -> int:
        """Move to a new port: send 1300 naming it, drop clients, listen there only.

        Args:
            new_port: Port to move to (0 = any free port).

        Returns:
            The new port.
        """
        loop = asyncio.get_running_loop()
        new_server = await loop.create_server(
            lambda: _ClientProtocol(self), self.host, new_port, reuse_address=True
        )
        port = int(new_server.sockets[0].getsockname()[1])
        await self.send_error(1300, message=p.default_message(1300, port=port))
        await self.drop_clients()
        await self.stop_listening()
        self._server = new_server
        self._port = port
        logger.info("fault: socket port reset, now listening on %d", port)
        return port

    def stall(self) -> None:
        """Hang: sockets stay open but requests (and handshakes) get no answer.

        Incoming bytes are buffered and processed on :meth:`unstall`; ticks
        are not streamed. :meth:`send_error` still goes through.
        """
        self._stalled = True
        logger.info("fault: gateway stalled")

    def unstall(self) -> None:
        """Resume after :meth:`stall`, processing everything received meanwhile."""
        self._stalled = False
        logger.info("fault: gateway unstalled")
        for conn in list(self._conns.values()):
            data, conn.backlog = bytes(conn.backlog), bytearray()
            if data:
                self._on_data(conn, data)

    def hold_sync(self, name: str) -> None:
        """Withhold the end message of a request type (e.g. ``execDetailsEnd``).

        Args:
            name: Request name from :data:`SYNC_REQUESTS`, e.g. ``"reqExecutions"``.

        Raises:
            ValueError: For a request without an end message.
        """
        if name not in SYNC_REQUESTS:
            raise ValueError(f"cannot hold {name!r}; choose from {', '.join(SYNC_REQUESTS)}")
        self._held.add(name)
        logger.info("fault: holding the end of %s", name)

    def release_sync(self, name: str | None = None) -> None:
        """Stop holding and deliver the withheld end messages.

        Args:
            name: Request name, or ``None`` for all.
        """
        names = set(self._held) if name is None else {name}
        self._held -= names
        for conn in self._conns.values():
            for n in names:
                for msg in conn.held.pop(n, []):
                    conn.send_raw(msg)
        logger.info("fault: released %s", ", ".join(sorted(names)) or "nothing")

    def delay_sync(self, name: str, seconds: float) -> None:
        """Answer a request type only after ``seconds`` (a slow startup sync).

        Args:
            name: Request name from :data:`SYNC_REQUESTS`.
            seconds: Delay; 0 removes it.
        """
        if seconds > 0:
            self.sync_delays[name] = seconds
        else:
            self.sync_delays.pop(name, None)

    async def nightly_reset(
        self,
        silence: float = 2.0,
        restore_code: int = 1101,
        farms: Sequence[str] | None = None,
        stall: bool = False,
    ) -> None:
        """Play the nightly server reset story.

        Sends 1100, marks the farms broken (2103/2105/2157), stays silent for
        ``silence`` seconds (optionally hung), then sends ``restore_code``
        (1101 data lost or 1102 data maintained) and the farms OK messages.

        Args:
            silence: Seconds between the loss and the restore.
            restore_code: 1101 or 1102.
            farms: Farms to break (default: all known farms).
            stall: Also hang requests during the silence.
        """
        names = list(farms) if farms is not None else list(self.farms) or ["usfarm"]
        logger.info("fault: nightly reset, silence %.2fs, restore %d", silence, restore_code)
        await self.send_error(1100)
        for farm in names:
            await self.farm_broken(farm)
        if stall:
            self.stall()
        await asyncio.sleep(silence)
        if stall:
            self.unstall()
        await self.send_error(restore_code)
        for farm in names:
            await self.farm_ok(farm)


def _side(action: str) -> str:
    return "BOT" if action.upper() == "BUY" else "SLD"
