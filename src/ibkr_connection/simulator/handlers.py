"""Request handlers: what the gateway does with each incoming message.

One function per incoming message, each taking the gateway, the client's
connection and the message's fields (the message id first), and the
:data:`HANDLERS` table mapping request names to them. Each handler reads its
request with :mod:`~ibkr_connection.simulator.layouts` at the connection's
negotiated version and answers with messages laid out for that version.
:func:`dispatch` runs the right one for a logged request; messages without a
handler are logged and ignored, as are requests sent before ``startApi``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from ibkr_connection.simulator import layouts, messages
from ibkr_connection.simulator.brokerage import Brokerage, SimExecution, SimOrder, SimPosition
from ibkr_connection.simulator.transport import ApiClient, Request, SimClock
from ibkr_connection.wire import protocol as p

logger = logging.getLogger(__name__)


class Gateway(Protocol):
    """What a handler needs of the gateway (:class:`FakeGateway
    <ibkr_connection.simulator.gateway.FakeGateway>` is one): the book, the
    replies that faults may hold or delay, and the calls that answer a client.
    Declared here so that the handlers do not import the gateway that
    dispatches to them.
    """

    book: Brokerage
    #: The time the gateway reads (the real clock, or a virtual one).
    clock: SimClock

    @property
    def stalled(self) -> bool: ...

    @property
    def accounts(self) -> list[str]: ...

    @property
    def account_values(self) -> dict[str, tuple[str, str]]: ...

    @property
    def orders(self) -> dict[int, SimOrder]: ...

    @property
    def executions(self) -> list[SimExecution]: ...

    @property
    def positions(self) -> dict[tuple[str, int], SimPosition]: ...

    @property
    def next_valid_id(self) -> int: ...

    def accept_client(self, conn: ApiClient, client_id: int) -> bool: ...

    def farm_notices(self, version: int) -> list[bytes]: ...

    def send_reply(self, conn: ApiClient, name: str, body: Iterable[bytes],
                   end: bytes | None) -> None: ...

    def fill_order(self, order_id: int, quantity: float | None = None,
                   price: float | None = None) -> SimExecution: ...

    def cancel_order(self, order_id: int) -> None: ...


Handler = Callable[[Gateway, ApiClient, list[str]], None]

#: Message id of ``startApi``, the one request accepted before the API is started.
START_API = 71

#: TWS's code for a request it cannot read ("Error reading request"), e.g. a
#: field missing or left over for the negotiated version.
ERROR_READING_REQUEST = 320

#: TWS's code for a contract it does not know ("No security definition has been
#: found for the request").
NO_SECURITY_DEFINITION = 200


def dispatch(gw: Gateway, conn: ApiClient, request: Request) -> None:
    """Run the handler of a request, if it has one and the client may send it.

    A request that does not match its layout at the connection's version
    (a field missing, left over or not a number) is answered as TWS answers
    it: error 320 "Error reading request. ..." with the request's id (-1 if
    that could not be read), and otherwise ignored; the session goes on
    (TWS 10.37 sends "Error reading request. Unable to parse field: 'Client
    Req Id' for input string: 'AAPL'" with id -1; ib_insync issue 634 shows
    "Error 320, reqId 4: Error reading request. Unable to parse data.").

    Args:
        gw: The gateway.
        conn: The connection the request came on.
        request: The request, already logged.
    """
    handler = HANDLERS.get(request.name)
    if handler is None:
        logger.info(
            "client %s sent %s %s; ignored", conn.client_id, request.name, request.fields[1:]
        )
        return
    if request.msg_id != START_API and not conn.ready:
        logger.warning("client sent %s before startApi; ignored", request.name)
        return
    try:
        handler(gw, conn, request.fields)
    except layouts.LayoutError as exc:
        logger.warning(
            "client %s sent a %s that does not match version %d: %s",
            conn.client_id,
            request.name,
            conn.version,
            exc.detail,
        )
        conn.send_error(exc.req_id, ERROR_READING_REQUEST, exc.text)
    except (ValueError, IndexError) as exc:
        # Readable but meaningless (e.g. an order naming no instrument): logged only.
        logger.warning("malformed %s from client %s: %s", request.name, conn.client_id, exc)


# ------------------------------------------------------------ session
def start_api(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``startApi``: accept the client id, then greet as TWS does."""
    request = layouts.fixed("startApi", fields)
    if not gw.accept_client(conn, int(request["clientId"])):
        return
    conn.send_raw(messages.managed_accounts(gw.accounts))
    conn.send_raw(messages.next_valid_id(gw.next_valid_id))
    for notice in gw.farm_notices(conn.version):
        conn.send_raw(notice)


def req_current_time(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqCurrentTime``: the gateway's clock, in whole seconds."""
    layouts.fixed("reqCurrentTime", fields)
    now = int(gw.clock.wall().timestamp())
    gw.send_reply(conn, "reqCurrentTime", [], messages.current_time(now))


def req_ids(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqIds``: the next valid order id."""
    layouts.fixed("reqIds", fields)
    conn.send_raw(messages.next_valid_id(gw.next_valid_id))


def req_managed_accts(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqManagedAccts``: the managed accounts."""
    layouts.fixed("reqManagedAccts", fields)
    conn.send_raw(messages.managed_accounts(gw.accounts))


# ------------------------------------------------------------ positions, account
def req_positions(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqPositions``: every position, then live updates on fills."""
    layouts.fixed("reqPositions", fields)
    conn.positions_subscribed = True
    body = [messages.position(pos) for pos in gw.positions.values()]
    gw.send_reply(conn, "reqPositions", body, messages.position_end())


def cancel_positions(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``cancelPositions``: stop the live position updates."""
    layouts.fixed("cancelPositions", fields)
    conn.positions_subscribed = False


def req_account_updates(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqAccountUpdates``: (un)subscribe to one account's values and portfolio."""
    request = layouts.fixed("reqAccountUpdates", fields)
    subscribe = request["subscribe"] == "1"
    account = request["acctCode"] or gw.accounts[0]
    if not subscribe:
        conn.account_subscription = None
        return
    conn.account_subscription = account
    body = [
        messages.account_value(key, value, currency, account)
        for key, (value, currency) in gw.account_values.items()
    ]
    body += [messages.portfolio(pos) for pos in gw.positions.values() if pos.account == account]
    body.append(messages.account_update_time(gw.clock.wall().astimezone().strftime("%H:%M")))
    end = messages.account_download_end(account)
    gw.send_reply(conn, "reqAccountUpdates", body, end)


def req_account_updates_multi(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqAccountUpdatesMulti``: the account values (one snapshot)."""
    request = layouts.fixed("reqAccountUpdatesMulti", fields)
    req_id, account, model = int(request["reqId"]), request["account"], request["modelCode"]
    body = [
        messages.account_update_multi(req_id, account, model, key, value, cur)
        for key, (value, cur) in gw.account_values.items()
    ]
    end = messages.account_update_multi_end(req_id)
    gw.send_reply(conn, "reqAccountUpdatesMulti", body, end)


def req_positions_multi(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqPositionsMulti``: no positions, only the end message."""
    req_id = int(layouts.fixed("reqPositionsMulti", fields)["reqId"])
    gw.send_reply(conn, "reqPositionsMulti", [], messages.position_multi_end(req_id))


def req_account_summary(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqAccountSummary``: the requested tags of every account."""
    request = layouts.fixed("reqAccountSummary", fields)
    req_id = int(request["reqId"])
    tags = {t for t in request["tags"].split(",") if t}
    body = [
        messages.account_summary(req_id, account, key, value, cur)
        for account in gw.accounts
        for key, (value, cur) in gw.account_values.items()
        if not tags or key in tags or "All" in tags
    ]
    end = messages.account_summary_end(req_id)
    gw.send_reply(conn, "reqAccountSummary", body, end)


# ------------------------------------------------------------ orders
def req_open_orders(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqOpenOrders`` (own working orders) and ``reqAllOpenOrders`` (everyone's)."""
    everyone = fields[0] == "16"
    name = "reqAllOpenOrders" if everyone else "reqOpenOrders"
    layouts.fixed(name, fields)
    body: list[bytes] = []
    for order in gw.orders.values():
        if order.is_done or not (everyone or order.client_id == conn.client_id):
            continue
        body += [messages.open_order(order, version=conn.version), messages.order_status(order)]
    gw.send_reply(conn, name, body, messages.open_order_end())


def req_completed_orders(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqCompletedOrders``: every order filled or cancelled today."""
    layouts.fixed("reqCompletedOrders", fields)
    gw.book.forget_earlier_days()  # the day's, as TWS lists them
    body = [
        messages.completed_order(o, version=conn.version) for o in gw.orders.values() if o.is_done
    ]
    gw.send_reply(conn, "reqCompletedOrders", body, messages.completed_orders_end())


def place_order(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``placeOrder``: a new order (filled per the fill mode) or a modification."""
    assert conn.client_id is not None
    book = gw.book
    request = layouts.place_order(fields, conn.version)
    order_id = request.order_id
    existing = book.orders.get(order_id)
    if existing is not None:
        if existing.client_id != conn.client_id or existing.is_done:
            conn.send_error(order_id, 103, p.default_message(103))
            return
        # modification of a working order
        existing.total_quantity = request.total_quantity or existing.total_quantity
        existing.lmt_price = request.lmt_price
        existing.aux_price = request.aux_price
        conn.send_raw(messages.open_order(existing, version=conn.version))
        conn.send_raw(messages.order_status(existing))
        return
    ref = request.contract
    inst = book.lookup(ref.con_id, ref.symbol, sec_type=ref.sec_type, currency=ref.currency)
    if inst is None:
        # TWS rejects an order for a contract it does not know with 200 on the
        # order id (ib_insync's wrapper.error then marks the trade Cancelled).
        _no_security_definition(conn, order_id, ref)
        return
    order = SimOrder(
        order_id=order_id,
        client_id=conn.client_id,
        perm_id=book.next_perm_id(),
        account=request.account or book.accounts[0],
        instrument=inst,
        action=request.action,
        total_quantity=request.total_quantity,
        order_type=request.order_type,
        lmt_price=request.lmt_price,
        aux_price=request.aux_price,
        tif=request.tif or "DAY",
        order_ref=request.order_ref,
    )
    book.add_order(order)
    logger.info(
        "client %s placed order %d: %s %s %s %s",
        conn.client_id,
        order_id,
        order.action,
        order.total_quantity,
        inst.symbol,
        order.order_type,
    )
    conn.send_raw(messages.open_order(order, version=conn.version))
    conn.send_raw(messages.order_status(order))
    for quantity in book.fill_plan(order):
        gw.fill_order(order_id, quantity=quantity)


def cancel_order(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``cancelOrder``: cancel a working order, or 10147 if there is none."""
    order_id = layouts.cancel_order(fields, conn.version)
    order = gw.orders.get(order_id)
    if order is None or order.is_done:
        text = p.DEFAULT_MESSAGES[10147].format(order_id=order_id)
        conn.send_error(order_id, 10147, text)
        return
    gw.cancel_order(order_id)


def global_cancel(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqGlobalCancel``: cancel every working order, whoever placed it."""
    layouts.fixed("reqGlobalCancel", fields)
    for order in list(gw.orders.values()):
        if not order.is_done:
            gw.cancel_order(order.order_id)


# ------------------------------------------------------------ executions, contracts
def req_executions(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqExecutions``: the executions matching the filter, with commissions."""
    request = layouts.fixed("reqExecutions", fields)
    req_id = int(request["reqId"])
    f_client = int(request["clientId"])
    f_account, f_symbol = request["acctCode"], request["symbol"]
    f_sectype, f_side = request["secType"], request["side"]
    gw.book.forget_earlier_days()  # the day's, as TWS reports them
    body: list[bytes] = []
    for ex in gw.executions:
        order = ex.order
        if f_client and order.client_id != f_client:
            continue
        if f_account and order.account != f_account:
            continue
        if f_symbol and order.instrument.symbol != f_symbol:
            continue
        if f_sectype and order.instrument.sec_type != f_sectype:
            continue
        if f_side and not messages.exec_side(order.action).startswith(f_side[:1].upper()):
            continue
        body += [
            messages.exec_details(ex, req_id, version=conn.version),
            messages.commission_report(ex),
        ]
    gw.send_reply(conn, "reqExecutions", body, messages.exec_details_end(req_id))


def _no_security_definition(conn: ApiClient, req_id: int, ref: layouts.ContractRef) -> None:
    """Answer a request naming an unknown contract as TWS does: error 200, nothing else.

    IB's message codes: 200 "No security definition has been found for the
    request" (interactivebrokers.github.io/tws-api/message_codes.html), for a
    reqContractDetails, a reqMktData or a placeOrder alike (erdewit/ib_insync
    #140, pilwon/node-ib #25). No contractDetailsEnd follows: ib_insync's and
    ib_async's ``Wrapper.error`` end the pending request on the error itself.
    """
    logger.info("client %s named an unknown contract (conId %s, %s %s %s): error 200",
                conn.client_id, ref.con_id, ref.symbol, ref.sec_type, ref.currency)
    conn.send_error(req_id, NO_SECURITY_DEFINITION, p.default_message(NO_SECURITY_DEFINITION))


def req_contract_details(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqContractDetails``: a known instrument's details, or 200."""
    request = layouts.contract_details(fields, conn.version)
    req_id, ref = request.req_id, request.contract
    inst = gw.book.lookup(ref.con_id, ref.symbol, sec_type=ref.sec_type, currency=ref.currency)
    if inst is None:
        _no_security_definition(conn, req_id, ref)
        return
    body = [messages.contract_details(inst, req_id, version=conn.version)]
    end = messages.contract_details_end(req_id)
    gw.send_reply(conn, "reqContractDetails", body, end)


# ------------------------------------------------------------ market data
def req_mkt_data(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``reqMktData``: subscribe (or snapshot) and send the current quote."""
    request = layouts.mkt_data(fields, conn.version)
    req_id, ref, snapshot = request.req_id, request.contract, request.snapshot
    inst = gw.book.lookup(ref.con_id, ref.symbol, sec_type=ref.sec_type, currency=ref.currency)
    if inst is None:
        _no_security_definition(conn, req_id, ref)
        return
    if not snapshot:
        conn.mkt_data[req_id] = inst
    if gw.stalled:
        return
    conn.send_raw(messages.market_data_type(req_id, 1))
    for msg in messages.tick_burst(req_id, inst):
        conn.send_raw(msg)
    if snapshot:
        conn.send_raw(messages.tick_snapshot_end(req_id))


def cancel_mkt_data(gw: Gateway, conn: ApiClient, fields: list[str]) -> None:
    """``cancelMktData``: stop streaming a subscription."""
    conn.mkt_data.pop(int(layouts.fixed("cancelMktData", fields)["reqId"]), None)


#: Request name -> handler. ``reqOpenOrders`` and ``reqAllOpenOrders`` share
#: one handler: the replies differ only in whose orders they list.
HANDLERS: dict[str, Handler] = {
    "startApi": start_api,
    "reqCurrentTime": req_current_time,
    "reqIds": req_ids,
    "reqManagedAccts": req_managed_accts,
    "reqPositions": req_positions,
    "cancelPositions": cancel_positions,
    "reqOpenOrders": req_open_orders,
    "reqAllOpenOrders": req_open_orders,
    "reqCompletedOrders": req_completed_orders,
    "reqAccountUpdates": req_account_updates,
    "reqAccountUpdatesMulti": req_account_updates_multi,
    "reqPositionsMulti": req_positions_multi,
    "reqAccountSummary": req_account_summary,
    "reqExecutions": req_executions,
    "reqContractDetails": req_contract_details,
    "reqMktData": req_mkt_data,
    "cancelMktData": cancel_mkt_data,
    "placeOrder": place_order,
    "cancelOrder": cancel_order,
    "reqGlobalCancel": global_cancel,
}
