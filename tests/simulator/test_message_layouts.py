"""Each message the simulator sends, decoded by ib_insync and ib_async at every version.

The clients' own ``Decoder`` reads what the encoders send, at each server
version 157..178 the client offers (ib_insync 0.9.86 stops at 176), and every
field the simulator sets must come back. The decoders skip trailing fields, so
the number of fields per version is also written out here, counted by hand
from IB's ibapi decoder (``decoder.py``, ``orderdecoder.py``).
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from ibkr_connection.simulator import messages
from ibkr_connection.simulator.brokerage import Instrument, SimExecution, SimOrder
from ibkr_connection.wire import protocol as p

#: Highest version each client library offers in its handshake.
CLIENT_MAX = {"ib_insync": 176, "ib_async": 178}

CASES = [
    (lib, version) for lib in CLIENT_MAX for version in range(157, CLIENT_MAX[lib] + 1)
]
IDS = [f"{lib}-v{version}" for lib, version in CASES]

MSFT = Instrument("MSFT", 272093, primary_exchange="NASDAQ", last=410.0)


def _order(status: str = "Submitted") -> SimOrder:
    """An order whose every term differs from the clients' defaults."""
    return SimOrder(
        order_id=41,
        client_id=3,
        perm_id=1000123,
        account="DU777",
        instrument=MSFT,
        action="SELL",
        total_quantity=25.0,
        order_type="LMT",
        lmt_price=410.5,
        aux_price=1.25,
        tif="GTC",
        order_ref="ref-9",
        status=status,
        filled=10.0,
        avg_fill_price=410.6,
        last_fill_price=410.7,
        completed_time="20260105 15:04:05 America/New_York",
    )


def _execution() -> SimExecution:
    """One fill of the order, at a whole second (the wire drops fractions)."""
    return SimExecution(
        exec_id="0000e0d5.6578a1b2.01.01",
        order=_order(),
        shares=10.0,
        price=410.6,
        cum_qty=10.0,
        avg_price=410.6,
        time=datetime(2026, 1, 5, 15, 4, 5, tzinfo=timezone.utc),
        commission=1.25,
        realized_pnl=12.5,
    )


class Recorder:
    """Stands in for a client library's Wrapper: records each callback of its Decoder."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        # what the execDetails decoders read for the time zone
        self.ib = SimpleNamespace(TimezoneTWS=None)
        self.defaultTimezone = timezone.utc

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


def decode(lib: str, version: int, frame: bytes) -> tuple[str, tuple[Any, ...]]:
    """Feed one framed message to ``lib``'s Decoder at ``version``; return the one callback."""
    recorder = Recorder()
    decoder = importlib.import_module(f"{lib}.decoder").Decoder(recorder, version)
    fields = p.split_fields(frame[4:])
    # the handler itself, not interpret(), which would log and swallow a failure
    decoder.handlers[int(fields[0])](fields)
    [call] = recorder.calls
    return call


def field_count(frame: bytes) -> int:
    """Number of fields in a framed message, its id included."""
    return len(p.split_fields(frame[4:]))


def by_version(table: dict[int, int], version: int) -> int:
    """The row of ``table`` in force at ``version`` (the highest key not above it)."""
    return table[max(k for k in table if k <= version)]


# -- errMsg --------------------------------------------------------------------------------------

#: errMsg: id, version 2, reqId, code, text; advancedOrderRejectJson from 166.
ERROR_FIELDS = {157: 5, 166: 6}

REJECT_JSON = '{"rejectReason":"size","options":["override"]}'


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_error_round_trips(lib: str, version: int) -> None:
    """An error's id, code, text and (from 166 on) advanced-reject JSON come back."""
    frame = p.error(
        41, 201, "Order rejected - reason: size", version=version, advanced_reject_json=REJECT_JSON
    )
    assert field_count(frame) == by_version(ERROR_FIELDS, version)
    name, args = decode(lib, version, frame)
    json = REJECT_JSON if version >= 166 else ""
    assert (name, args) == ("error", (41, 201, "Order rejected - reason: size", json))


# -- openOrder, orderStatus, completedOrder -----------------------------------------------------

#: openOrder, a plain LMT order: 120 fields at 157; + duration 158, + postToAts 160,
#: + autoCancelParent 162, + 5 peg best/mid fields 170, - faProfile 177.
OPEN_ORDER_FIELDS = {157: 120, 158: 121, 160: 122, 162: 123, 170: 128, 177: 127}

#: completedOrder: 92 fields at 157; + 5 peg best/mid fields 170, - faProfile 177.
COMPLETED_ORDER_FIELDS = {157: 92, 170: 97, 177: 96}


def _assert_contract(contract: Any) -> None:
    assert (contract.conId, contract.symbol, contract.secType) == (272093, "MSFT", "STK")
    assert (contract.exchange, contract.currency) == ("SMART", "USD")
    assert (contract.localSymbol, contract.tradingClass) == ("MSFT", "MSFT")


def _assert_terms(order: Any) -> None:
    assert (order.action, order.totalQuantity, order.orderType) == ("SELL", 25.0, "LMT")
    assert (order.lmtPrice, order.auxPrice, order.tif) == (410.5, 1.25, "GTC")
    assert (order.account, order.orderRef, order.permId) == ("DU777", "ref-9", 1000123)


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_open_order_round_trips(lib: str, version: int) -> None:
    """An open order's ids, contract, terms and status come back."""
    frame = messages.open_order(_order(), version=version)
    assert field_count(frame) == by_version(OPEN_ORDER_FIELDS, version)
    name, (order_id, contract, order, state) = decode(lib, version, frame)
    assert name == "openOrder" and order_id == 41
    _assert_contract(contract)
    _assert_terms(order)
    assert (order.orderId, order.clientId) == (41, 3)
    assert state.status == "Submitted"


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_order_status_round_trips(lib: str, version: int) -> None:
    """An order status's quantities, prices and ids come back (one layout at every version)."""
    frame = messages.order_status(_order())
    assert field_count(frame) == 12
    name, args = decode(lib, version, frame)
    assert name == "orderStatus"
    assert args == (41, "Submitted", 10.0, 15.0, 410.6, 1000123, 0, 410.7, 3, "", 0.0)


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_completed_order_round_trips(lib: str, version: int) -> None:
    """A completed order's contract, terms, filled quantity, time and status come back."""
    frame = messages.completed_order(_order(status="Filled"), version=version)
    assert field_count(frame) == by_version(COMPLETED_ORDER_FIELDS, version)
    name, (contract, order, state) = decode(lib, version, frame)
    assert name == "completedOrder"
    _assert_contract(contract)
    _assert_terms(order)
    assert order.filledQuantity == 10.0
    assert (state.status, state.completedStatus) == ("Filled", "Filled")
    assert state.completedTime == "20260105 15:04:05 America/New_York"


# -- execDetails, commissionReport ----------------------------------------------------------------

#: execDetails (no version field since 136): 31 fields; + pendingPriceRevision 178.
EXEC_FIELDS = {157: 31, 178: 32}


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_execution_round_trips(lib: str, version: int) -> None:
    """An execution's id, time, price, quantities, ids and liquidity come back."""
    frame = messages.exec_details(_execution(), 9, version=version)
    assert field_count(frame) == by_version(EXEC_FIELDS, version)
    name, (req_id, contract, ex) = decode(lib, version, frame)
    assert name == "execDetails" and req_id == 9
    assert (contract.conId, contract.symbol) == (272093, "MSFT")
    assert ex.execId == "0000e0d5.6578a1b2.01.01"
    assert ex.time == datetime(2026, 1, 5, 15, 4, 5, tzinfo=timezone.utc)
    assert (ex.side, ex.shares, ex.price) == ("SLD", 10.0, 410.6)
    assert (ex.cumQty, ex.avgPrice, ex.orderRef) == (10.0, 410.6, "ref-9")
    assert (ex.orderId, ex.clientId, ex.permId) == (41, 3, 1000123)
    assert (ex.acctNumber, ex.exchange) == ("DU777", "ISLAND")
    assert ex.lastLiquidity == 1  # added liquidity
    if version >= 178:
        assert ex.pendingPriceRevision is False


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_commission_report_round_trips(lib: str, version: int) -> None:
    """A commission report's execution id, amount, currency and realized PnL come back."""
    frame = messages.commission_report(_execution())
    assert field_count(frame) == 8
    name, (report,) = decode(lib, version, frame)
    assert name == "commissionReport"
    assert (report.execId, report.commission) == ("0000e0d5.6578a1b2.01.01", 1.25)
    assert (report.currency, report.realizedPNL) == ("USD", 12.5)


# -- contractDetails -----------------------------------------------------------------------------

#: contractDetails: 39 fields at 157 (version field and mdSizeMultiplier included);
#: + sizeMinTick at 163 only; from 164 without both, + minSize, sizeIncrement,
#: suggestedSizeIncrement.
CONTRACT_FIELDS = {157: 39, 163: 40, 164: 40}


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_contract_details_round_trip(lib: str, version: int) -> None:
    """A contract's ids, exchanges, tick and (from 163 on) size rules come back."""
    frame = messages.contract_details(MSFT, 12, version=version)
    assert field_count(frame) == by_version(CONTRACT_FIELDS, version)
    name, (req_id, details) = decode(lib, version, frame)
    assert name == "contractDetails" and req_id == 12
    c = details.contract
    assert (c.conId, c.symbol, c.secType, c.exchange) == (272093, "MSFT", "STK", "SMART")
    assert (c.currency, c.localSymbol, c.tradingClass) == ("USD", "MSFT", "MSFT")
    assert c.primaryExchange == "NASDAQ"
    assert (details.marketName, details.minTick, details.longName) == ("NASDAQ", 0.01, "MSFT")
    assert details.orderTypes == "LMT,MKT" and details.validExchanges == "SMART,NASDAQ"
    assert (details.timeZoneId, details.stockType) == ("US/Eastern", "COMMON")
    if version >= 164:
        assert (details.minSize, details.sizeIncrement) == (1, 1)
    if version >= 163:
        # at 163 the clients read the one size field, sizeMinTick, into this one
        assert details.suggestedSizeIncrement == 1
