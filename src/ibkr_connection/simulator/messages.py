"""Outgoing TWS messages: one encoder per message the gateway sends.

Each encoder takes plain data (a position, an order, an execution, ids and
texts) and returns one framed message, ready for ``ApiClient.send_raw``. They
hold no state and do no I/O, so the layout of every message the simulator
sends is in this one file.

The encoders of messages whose layout changes between server versions 157
and 178 (errMsg, openOrder, completedOrder, execDetails, contractDetails)
take the connection's negotiated ``version`` and lay the message out for it;
:mod:`~ibkr_connection.wire.versions` lists each change and its source.
Every other message has one layout at every version the simulator speaks.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ibkr_connection.wire import protocol as p
from ibkr_connection.wire import versions as v
from ibkr_connection.wire.protocol import Field

#: A frame's length prefix (wire.protocol.encode_message's ``>I``).
_LENGTH = struct.Struct(">I")

if TYPE_CHECKING:
    # Only for annotations: the book's types, which this module lays out.
    from ibkr_connection.simulator.brokerage import (
        Instrument,
        SimExecution,
        SimOrder,
        SimPosition,
    )

def contract_fields(inst: Instrument, *, exchange: bool = True) -> list[Field]:
    """Contract fields in the common decoder order.

    Args:
        inst: The contract.
        exchange: Emit ``exchange`` (True) or ``primaryExchange`` (False)
            in the exchange slot (``updatePortfolio`` uses the latter).

    Returns:
        conId, symbol, secType, expiry, strike, right, multiplier,
        exchange, currency, localSymbol, tradingClass.
    """
    return [
        inst.con_id,
        inst.symbol,
        inst.sec_type,
        "",
        0.0,
        "",
        "",
        inst.exchange if exchange else inst.primary_exchange,
        inst.currency,
        inst.symbol,
        inst.symbol if inst.sec_type == "STK" else "",
    ]


def exec_side(action: str) -> str:
    """Return the execution side IB reports for an order action.

    Args:
        action: ``BUY`` or ``SELL`` (any case).

    Returns:
        ``BOT`` for a buy, ``SLD`` otherwise.
    """
    return "BOT" if action.upper() == "BUY" else "SLD"


# ------------------------------------------------------------ handshake, session
def server_version(version: int, now: datetime) -> bytes:
    """The handshake reply: the server version and the connection time.

    Args:
        version: Server version announced.
        now: Connection time (UTC).

    Returns:
        The framed message.
    """
    return p.encode_message([version, now.strftime(p.TIME_FORMAT)])


def managed_accounts(accounts: Sequence[str]) -> bytes:
    """The managedAccounts message.

    Args:
        accounts: Account codes.

    Returns:
        The framed message.
    """
    return p.encode_message([p.MANAGED_ACCTS, 1, ",".join(accounts)])


def next_valid_id(order_id: int) -> bytes:
    """The nextValidId message.

    Args:
        order_id: The next valid order id.

    Returns:
        The framed message.
    """
    return p.encode_message([p.NEXT_VALID_ID, 1, order_id])


def current_time(seconds: int) -> bytes:
    """The currentTime reply.

    Args:
        seconds: Unix time in whole seconds.

    Returns:
        The framed message.
    """
    # The fields are msgId 49, version 1, the time (ib_insync 0.9.86 decoder.py:
    # ``49: self.wrap('currentTime', [int])``, which skips the first two). Laid out
    # here as encode_message lays them out (an int's str(), each field NUL-ended,
    # a 4-byte big-endian length first): the heartbeat's answer, ~837,000 times a
    # month (issue 21); tests/simulator/test_messages.py pins its bytes.
    body = b"%d\x001\x00%d\x00" % (p.CURRENT_TIME, seconds)
    return _LENGTH.pack(len(body)) + body


# ------------------------------------------------------------ positions, account
def position(pos: SimPosition) -> bytes:
    """A position message (version 3).

    Args:
        pos: The position.

    Returns:
        The framed message.
    """
    return p.encode_message(
        [
            p.POSITION_DATA,
            3,
            pos.account,
            *contract_fields(pos.instrument),
            pos.quantity,
            pos.avg_cost,
        ]
    )


def position_end() -> bytes:
    """The positionEnd message."""
    return p.encode_message([p.POSITION_END, 1])


def position_multi_end(req_id: int) -> bytes:
    """The positionMultiEnd message.

    Args:
        req_id: Request id of the ``reqPositionsMulti``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.POSITION_MULTI_END, 1, req_id])


def portfolio(pos: SimPosition) -> bytes:
    """An updatePortfolio message (version 8), valued at the last price.

    Args:
        pos: The position.

    Returns:
        The framed message.
    """
    inst = pos.instrument
    price = inst.last
    value = price * pos.quantity
    unrealized = (price - pos.avg_cost) * pos.quantity
    return p.encode_message(
        [
            p.PORTFOLIO_VALUE,
            8,
            *contract_fields(inst, exchange=False),
            pos.quantity,
            price,
            value,
            pos.avg_cost,
            unrealized,
            pos.realized_pnl,
            pos.account,
        ]
    )


def account_value(key: str, value: str, currency: str, account: str) -> bytes:
    """An updateAccountValue message.

    Args:
        key: Tag, e.g. ``NetLiquidation``.
        value: Value text.
        currency: Currency code (may be empty).
        account: Account code.

    Returns:
        The framed message.
    """
    return p.encode_message([p.ACCT_VALUE, 2, key, value, currency, account])


def account_update_time(stamp: str) -> bytes:
    """An updateAccountTime message.

    Args:
        stamp: Local time as ``HH:MM``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.ACCT_UPDATE_TIME, 1, stamp])


def account_download_end(account: str) -> bytes:
    """The accountDownloadEnd message.

    Args:
        account: Account code.

    Returns:
        The framed message.
    """
    return p.encode_message([p.ACCT_DOWNLOAD_END, 1, account])


def account_update_multi(
    req_id: int, account: str, model: str, key: str, value: str, currency: str
) -> bytes:
    """An accountUpdateMulti message.

    Args:
        req_id: Request id of the ``reqAccountUpdatesMulti``.
        account: Account code.
        model: Model code.
        key: Tag.
        value: Value text.
        currency: Currency code.

    Returns:
        The framed message.
    """
    return p.encode_message(
        [p.ACCOUNT_UPDATE_MULTI, 1, req_id, account, model, key, value, currency]
    )


def account_update_multi_end(req_id: int) -> bytes:
    """The accountUpdateMultiEnd message.

    Args:
        req_id: Request id of the ``reqAccountUpdatesMulti``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.ACCOUNT_UPDATE_MULTI_END, 1, req_id])


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> bytes:
    """An accountSummary message.

    Args:
        req_id: Request id of the ``reqAccountSummary``.
        account: Account code.
        tag: Tag.
        value: Value text.
        currency: Currency code.

    Returns:
        The framed message.
    """
    return p.encode_message([p.ACCOUNT_SUMMARY, 1, req_id, account, tag, value, currency])


def account_summary_end(req_id: int) -> bytes:
    """The accountSummaryEnd message.

    Args:
        req_id: Request id of the ``reqAccountSummary``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.ACCOUNT_SUMMARY_END, 1, req_id])


# ------------------------------------------------------------ orders
def order_status(order: SimOrder) -> bytes:
    """An orderStatus message.

    Args:
        order: The order.

    Returns:
        The framed message.
    """
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


def _fa_params(version: int) -> list[Field]:
    """faGroup, faMethod, faPercentage, then faProfile before version 177, then modelCode."""
    fa: list[Field] = ["", "", ""]
    if version < v.FA_PROFILE_DESUPPORT:
        fa.append("")
    return [*fa, ""]


def _peg_best_mid(version: int) -> list[Field]:
    """minTradeQty .. midOffsetAtHalf from version 170 on (all unset)."""
    return ["", "", "", "", ""] if version >= v.PEGBEST_PEGMID_OFFSETS else []


def open_order(order: SimOrder, *, version: int) -> bytes:
    """An openOrder message (no version field: the server version rules it).

    Args:
        order: The order.
        version: The connection's server version.

    Returns:
        The framed message.
    """
    f: list[Field] = [p.OPEN_ORDER, order.order_id, *contract_fields(order.instrument)]
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
    f += _fa_params(version)
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
    if version >= v.DURATION:
        f.append("")  # duration, unset
    if version >= v.POST_TO_ATS:
        f.append("")  # postToAts, unset
    if version >= v.AUTO_CANCEL_PARENT:
        f.append("0")  # autoCancelParent
    f += _peg_best_mid(version)
    return p.encode_message(f)


def open_order_end() -> bytes:
    """The openOrderEnd message."""
    return p.encode_message([p.OPEN_ORDER_END, 1])


def completed_order(order: SimOrder, *, version: int) -> bytes:
    """A completedOrder message.

    Args:
        order: The filled or cancelled order.
        version: The connection's server version.

    Returns:
        The framed message.
    """
    f: list[Field] = [p.COMPLETED_ORDER, *contract_fields(order.instrument)]
    f += [
        order.action,
        order.total_quantity,
        order.order_type,
        order.lmt_price,
        order.aux_price,
    ]
    f += [order.tif, "", order.account, "O", 0, order.order_ref, order.perm_id]
    f += ["0", "0", 0.0, ""]  # outsideRth hidden discretionaryAmt goodAfterTime
    f += _fa_params(version)
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
    f += _peg_best_mid(version)
    return p.encode_message(f)


def completed_orders_end() -> bytes:
    """The completedOrdersEnd message."""
    return p.encode_message([p.COMPLETED_ORDERS_END])


# ------------------------------------------------------------ executions
def exec_details(ex: SimExecution, req_id: int, *, version: int) -> bytes:
    """An execDetails message (no version field: the server version rules it).

    Args:
        ex: The execution.
        req_id: Request id of the ``reqExecutions``; -1 for a live fill.
        version: The connection's server version.

    Returns:
        The framed message.
    """
    order = ex.order
    # pendingPriceRevision: the price may still be revised (never here)
    revision: list[Field] = ["0"] if version >= v.PENDING_PRICE_REVISION else []
    return p.encode_message(
        [
            p.EXECUTION_DATA,
            req_id,
            order.order_id,
            *contract_fields(order.instrument),
            ex.exec_id,
            ex.time.strftime(p.TIME_FORMAT),
            order.account,
            "ISLAND",
            exec_side(order.action),
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
            *revision,
        ]
    )


def exec_details_end(req_id: int) -> bytes:
    """The execDetailsEnd message.

    Args:
        req_id: Request id of the ``reqExecutions``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.EXECUTION_DATA_END, 1, req_id])


def commission_report(ex: SimExecution) -> bytes:
    """The commissionReport of an execution.

    Args:
        ex: The execution.

    Returns:
        The framed message.
    """
    return p.encode_message(
        [p.COMMISSION_REPORT, 1, ex.exec_id, ex.commission, "USD", ex.realized_pnl, "", ""]
    )


# ------------------------------------------------------------ contracts
def contract_details(inst: Instrument, req_id: int, *, version: int) -> bytes:
    """A contractDetails message (message version 8 below server version 164).

    Args:
        inst: The contract.
        req_id: Request id of the ``reqContractDetails``.
        version: The connection's server version.

    Returns:
        The framed message.
    """
    f: list[Field] = [p.CONTRACT_DATA]
    if version < v.SIZE_RULES:
        f.append(8)
    f += [req_id, inst.symbol, inst.sec_type, "", 0.0, ""]
    f += [inst.exchange, inst.currency, inst.symbol, inst.primary_exchange, inst.symbol]
    f += [inst.con_id, 0.01]  # conId minTick
    if version < v.SIZE_RULES:
        f.append(1)  # mdSizeMultiplier, gone from 164 on
    f += ["", "LMT,MKT", "SMART," + inst.primary_exchange, 1, 0]
    f += [inst.symbol, inst.primary_exchange, "", "", "", "", "US/Eastern", "", "", "", ""]
    f += [0, 1, "", "", "", "", "COMMON"]  # secIdList .. stockType
    if version == v.FRACTIONAL_SIZE_SUPPORT:
        f.append(1)  # sizeMinTick, at 163 only
    if version >= v.SIZE_RULES:
        f += [1, 1, 1]  # minSize sizeIncrement suggestedSizeIncrement: whole shares
    return p.encode_message(f)


def contract_details_end(req_id: int) -> bytes:
    """The contractDetailsEnd message.

    Args:
        req_id: Request id of the ``reqContractDetails``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.CONTRACT_DATA_END, 1, req_id])


# ------------------------------------------------------------ market data
def market_data_type(req_id: int, data_type: int) -> bytes:
    """A marketDataType message.

    Args:
        req_id: Request id of the ``reqMktData``.
        data_type: 1 live, 2 frozen, 3 delayed, 4 delayed frozen.

    Returns:
        The framed message.
    """
    return p.encode_message([p.MARKET_DATA_TYPE, 1, req_id, data_type])


def tick_price(req_id: int, tick_type: int, price: float, size: float) -> bytes:
    """A tickPrice message (version 6, no attributes set).

    Args:
        req_id: Request id of the ``reqMktData``.
        tick_type: Tick type, e.g. :data:`~ibkr_connection.wire.protocol.TICK_LAST`.
        price: Price.
        size: Size.

    Returns:
        The framed message.
    """
    return p.encode_message([p.TICK_PRICE, 6, req_id, tick_type, price, size, 0])


def tick_size(req_id: int, tick_type: int, size: float) -> bytes:
    """A tickSize message.

    Args:
        req_id: Request id of the ``reqMktData``.
        tick_type: Tick type, e.g. :data:`~ibkr_connection.wire.protocol.TICK_VOLUME`.
        size: Size.

    Returns:
        The framed message.
    """
    return p.encode_message([p.TICK_SIZE, 6, req_id, tick_type, size])


def tick_burst(req_id: int, inst: Instrument) -> list[bytes]:
    """The ticks sent right after a ``reqMktData``: bid, ask, last and volume.

    Args:
        req_id: Request id of the ``reqMktData``.
        inst: The instrument quoted.

    Returns:
        The framed messages, in sending order.
    """
    return [
        tick_price(req_id, p.TICK_BID, inst.bid, 100),
        tick_price(req_id, p.TICK_ASK, inst.ask, 100),
        tick_price(req_id, p.TICK_LAST, inst.last, 100),
        tick_size(req_id, p.TICK_VOLUME, 1000),
    ]


def tick_snapshot_end(req_id: int) -> bytes:
    """The tickSnapshotEnd message.

    Args:
        req_id: Request id of the snapshot ``reqMktData``.

    Returns:
        The framed message.
    """
    return p.encode_message([p.TICK_SNAPSHOT_END, 1, req_id])
