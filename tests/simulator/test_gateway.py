"""Gateway simulator tests against the real ib_insync client over loopback."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

from ibkr_connection.simulator import FakeGateway, default_message

from .conftest import ACCOUNT, until

#: Every async test here runs on a VirtualTimeLoop: outages, held and delayed syncs,
#: and the clients' timeouts cost no wall clock; the sockets are real loopback ones.
VIRTUAL_TIME = True

Connect = Callable[..., Coroutine[Any, Any, IB]]
AAPL = Stock("AAPL", "SMART", "USD")


async def test_connect_shows_accounts_and_next_id(
    gw: FakeGateway, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """connectAsync completes with every startup request answered, the accounts and order ids.

    An unanswered startup request would not fail the connect: ib_insync waits
    its timeout out and logs "<name> request timed out". How long a connect
    takes is measured by benchmarks/connect_latency.py.
    """
    ib = await connect(1)
    assert ib.isConnected()
    assert ib.managedAccounts() == [ACCOUNT]
    assert ib.client.getReqId() >= 100
    first_multi = gw.requests_named("reqAccountUpdatesMulti", client_id=1)[0]
    assert first_multi.fields[2] == "100"  # ib_insync takes request ids from nextValidId
    assert [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()] == []
    assert gw.accepted_connections == 1 and gw.handshakes == 1
    assert [c.client_id for c in gw.clients] == [1]


async def test_startup_sync_requests_answered(gw: FakeGateway, connect: Connect) -> None:
    """Every startup sync request ib_insync sends is recorded and answered."""
    await connect(1)
    names = {r.name for r in gw.requests}
    expected = {"startApi", "reqPositions", "reqOpenOrders", "reqCompletedOrders"}
    assert expected | {"reqAccountUpdates", "reqAccountUpdatesMulti", "reqExecutions"} <= names


CODES = [
    (1100, "Connectivity between IB and Trader Workstation has been lost."),
    (1101, "Connectivity between IB and Trader Workstation has been restored - data lost."),
    (1102, "Connectivity between IB and Trader Workstation has been restored - data maintained."),
    (2103, "Market data farm connection is broken:usfarm"),
    (2104, "Market data farm connection is OK:usfarm"),
    (2105, "HMDS data farm connection is broken:ushmds"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2157, "Sec-def data farm connection is broken:secdefil"),
    (2158, "Sec-def data farm connection is OK:secdefil"),
    (2110, default_message(2110)),
    (10182, "Failed to request live updates (disconnected)."),
]


@pytest.mark.parametrize(("code", "text"), CODES)
async def test_error_code_arrives(gw: FakeGateway, connect: Connect, code: int, text: str) -> None:
    """An injected code arrives in errorEvent with reqId -1 and IB's wording."""
    ib = await connect(1)
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, err, msg, contract: seen.append((req_id, err, msg))
    assert await gw.send_error(code) == 1
    await until(lambda: seen, f"code {code} in errorEvent")
    assert seen == [(-1, code, text)]


async def test_1300_names_the_port(gw: FakeGateway, connect: Connect) -> None:
    """A 1300 message names the port to reconnect on."""
    ib = await connect(1)
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, err, msg, contract: seen.append((req_id, err, msg))
    await gw.send_error(1300)
    await until(lambda: seen, "1300 in errorEvent")
    expected = (
        "TWS socket port has been reset and this connection is being dropped. "
        f"Please reconnect on the new port - {gw.port}"
    )
    assert seen == [(-1, 1300, expected)]


async def test_error_to_one_client_only(gw: FakeGateway, connect: Connect) -> None:
    """send_error with a client id reaches only that client, with a custom text."""
    ib1, ib2 = await connect(1), await connect(2)
    seen1: list[int] = []
    seen2: list[int] = []
    ib1.errorEvent += lambda r, code, m, c: seen1.append(code)
    ib2.errorEvent += lambda r, code, m, c: seen2.append(code)
    await gw.send_error(4242, client_id=2, message="custom")
    await until(lambda: seen2, "4242 at client 2")
    # A fence for the negative half: client 1's socket delivers in order, so once
    # a later code reaches it, a stray 4242 would have arrived before.
    await gw.send_error(4243, client_id=1, message="fence")
    await until(lambda: seen1, "the fence at client 1")
    assert seen1 == [4243] and seen2 == [4242]


async def test_farm_helpers_pick_codes(gw: FakeGateway, connect: Connect) -> None:
    """farm_broken / farm_ok choose the code pair from the farm name."""
    ib = await connect(1)
    seen: list[tuple[int, str]] = []
    ib.errorEvent += lambda r, code, msg, c: seen.append((code, msg))
    await gw.farm_broken("usfarm.nj")
    await gw.farm_broken("euhmds")
    await gw.farm_ok("secdefnj")
    await until(lambda: len(seen) >= 3, "three farm codes")
    assert seen == [
        (2103, "Market data farm connection is broken:usfarm.nj"),
        (2105, "HMDS data farm connection is broken:euhmds"),
        (2158, "Sec-def data farm connection is OK:secdefnj"),
    ]


async def test_farm_status_announced_at_connect(gw: FakeGateway) -> None:
    """Like TWS, farm OK (or broken) messages follow the API handshake."""
    await gw.farm_broken("usfarm")
    ib = IB()
    seen: list[int] = []
    ib.errorEvent += lambda r, code, msg, c: seen.append(code)
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=2)
    ib.disconnect()
    assert sorted(seen) == [2103, 2106, 2158]


async def test_drop_emits_disconnected(gw: FakeGateway, connect: Connect) -> None:
    """drop_clients aborts the socket and the client sees disconnectedEvent."""
    ib = await connect(1)
    events: list[str] = []
    ib.disconnectedEvent += lambda: events.append("down")
    assert await gw.drop_clients() == 1
    await until(lambda: events, "disconnectedEvent")
    assert events == ["down"]
    assert not ib.isConnected()
    assert gw.clients == []


async def test_refused_while_not_listening(gw: FakeGateway) -> None:
    """Connections are refused after stop_listening and accepted after start_listening."""
    await gw.stop_listening()
    ib = IB()
    with pytest.raises(ConnectionRefusedError):
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=1)
    await gw.start_listening()
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=1)
    assert ib.isConnected()
    ib.disconnect()


async def test_restart_refuses_then_accepts(gw: FakeGateway, connect: Connect) -> None:
    """restart drops clients, refuses during the outage and listens again after."""
    ib = await connect(1)
    # the refused connect must land inside the outage: a window, so a generous one
    task = asyncio.ensure_future(gw.restart(outage=1.0))
    await until(lambda: not ib.isConnected() and not gw.listening, "the drop and the outage")
    assert not ib.isConnected()
    with pytest.raises(ConnectionRefusedError):
        await IB().connectAsync("127.0.0.1", gw.port, clientId=2, timeout=1)
    await task
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=1)
    assert ib.isConnected()


async def test_reset_port_moves(gw: FakeGateway, connect: Connect) -> None:
    """reset_port sends 1300 with the new port, drops clients and listens there."""
    old = gw.port
    ib = await connect(1)
    seen: list[tuple[int, str]] = []
    ib.errorEvent += lambda r, code, msg, c: seen.append((code, msg))
    new = await gw.reset_port(0)
    await until(lambda: seen and not ib.isConnected(), "1300 and the drop")
    assert new != old and gw.port == new
    assert seen and seen[0][0] == 1300 and seen[0][1].endswith(f"new port - {new}")
    assert not ib.isConnected()
    with pytest.raises(ConnectionRefusedError):
        await IB().connectAsync("127.0.0.1", old, clientId=1, timeout=1)
    await ib.connectAsync("127.0.0.1", new, clientId=1, timeout=1)
    assert ib.isConnected()


async def test_duplicate_client_id_326(gw: FakeGateway, connect: Connect) -> None:
    """A second client with a used id gets 326 and is closed; the id frees on disconnect."""
    first = await connect(7)
    second = IB()
    seen: list[tuple[int, int]] = []
    second.errorEvent += lambda r, code, msg, c: seen.append((r, code))
    with pytest.raises(asyncio.TimeoutError):
        await second.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=0.3)
    assert seen == [(-1, 326)]
    assert [c.client_id for c in gw.clients] == [7]
    first.disconnect()
    await until(lambda: gw.clients == [], "the gateway freeing client id 7")
    await second.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=1)
    assert second.isConnected()
    second.disconnect()


async def test_current_time_and_stall(gw: FakeGateway, connect: Connect) -> None:
    """reqCurrentTime round-trips, goes unanswered while stalled and is answered after unstall."""
    ib = await connect(1)
    asked = int(time.time())  # the gateway answers in whole seconds
    now = await asyncio.wait_for(ib.reqCurrentTimeAsync(), 5)
    assert asked <= now.timestamp() <= time.time()
    gw.stall()
    pending = asyncio.ensure_future(ib.reqCurrentTimeAsync())
    [conn] = gw.connections

    # the request reached the gateway, which sits on it
    await until(lambda: conn.backlog, "the request held in the backlog")
    assert not pending.done() and ib.isConnected()
    gw.unstall()
    assert (await asyncio.wait_for(pending, 5)).timestamp() >= asked


async def test_order_filled_with_commission(gw: FakeGateway, connect: Connect) -> None:
    """An order fills immediately with execDetails, orderStatus and a commission report."""
    ib = await connect(1)
    statuses: list[str] = []
    fills: list[float] = []
    reports: list[float] = []
    ib.orderStatusEvent += lambda trade: statuses.append(trade.orderStatus.status)
    ib.execDetailsEvent += lambda trade, fill: fills.append(fill.execution.shares)
    ib.commissionReportEvent += lambda trade, fill, rep: reports.append(rep.commission)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    await until(lambda: trade.isDone() and reports, "the fill and its commission report")
    assert statuses[0] == "Submitted" and statuses[-1] == "Filled"
    assert fills == [10.0] and reports == [1.0]
    assert trade.orderStatus.avgFillPrice == 150.0
    assert trade.isDone()


async def test_order_filled_in_two_parts(gw: FakeGateway, connect: Connect) -> None:
    """fill_mode ("parts", 2) gives two executions and two commission reports."""
    gw.fill_mode = ("parts", 2)
    ib = await connect(1)
    fills: list[float] = []
    reports: list[str] = []
    ib.execDetailsEvent += lambda trade, fill: fills.append(fill.execution.shares)
    ib.commissionReportEvent += lambda trade, fill, rep: reports.append(rep.execId)
    trade = ib.placeOrder(AAPL, MarketOrder("SELL", 5))
    await until(lambda: trade.isDone() and len(reports) >= 2, "both parts and their reports")
    assert fills == [2.0, 3.0]
    assert len(set(reports)) == 2
    assert trade.orderStatus.status == "Filled" and trade.orderStatus.filled == 5


async def test_positions_and_portfolio_updated(gw: FakeGateway, connect: Connect) -> None:
    """A fill updates ib.positions() and ib.portfolio() with PnL fields."""
    ib = await connect(1)
    bought = ib.placeOrder(AAPL, MarketOrder("BUY", 10))
    await until(lambda: bought.isDone() and ib.positions(), "the buy filled and booked")
    gw.push_tick("AAPL", 155.0)
    gw.fill_mode = "manual"
    trade = ib.placeOrder(AAPL, LimitOrder("SELL", 4, 160.0))
    await until(lambda: trade.orderStatus.status == "Submitted", "the sell working")
    gw.fill_order(trade.order.orderId)
    await until(
        lambda: trade.isDone()
        and [p.position for p in ib.positions()] == [6]
        and [i.position for i in ib.portfolio()] == [6],
        "the sell filled and booked",
    )
    [pos] = ib.positions()
    assert pos.position == 6 and pos.avgCost == 150.0 and pos.account == ACCOUNT
    [item] = ib.portfolio()
    assert item.position == 6 and item.marketPrice == 155.0
    assert item.marketValue == 930.0 and item.unrealizedPNL == 30.0 and item.realizedPNL == 40.0


async def test_manual_order_cancel(gw: FakeGateway, connect: Connect) -> None:
    """In manual mode an order stays working until cancelled."""
    gw.fill_mode = "manual"
    ib = await connect(1)
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 140.0))
    await until(lambda: trade.orderStatus.status != "PendingSubmit", "the gateway's status")
    assert trade.orderStatus.status == "Submitted"
    ib.cancelOrder(trade.order)
    await until(trade.isDone, "the order done")
    assert trade.orderStatus.status == "Cancelled"


async def test_fill_while_disconnected(gw: FakeGateway, connect: Connect) -> None:
    """A fill booked while no client is connected shows up in ib.fills() after reconnect."""
    gw.fill_mode = "manual"
    ib = await connect(3)
    trade = ib.placeOrder(AAPL, MarketOrder("BUY", 8))
    await until(lambda: trade.orderStatus.status == "Submitted", "the order working")
    await gw.drop_clients()  # a server-side drop also clears ib_insync's session state
    await until(lambda: not ib.isConnected(), "the client seeing the drop")
    assert gw.clients == [] and not ib.isConnected()
    ex = gw.fill_order(trade.order.orderId, price=151.0)
    await ib.connectAsync("127.0.0.1", gw.port, clientId=3, timeout=2)
    [fill] = ib.fills()
    assert fill.execution.execId == ex.exec_id and fill.execution.shares == 8
    assert fill.commissionReport.commission == 1.0
    assert ib.positions()[0].position == 8
    assert not ib.openTrades()
    assert [t.orderStatus.status for t in await ib.reqCompletedOrdersAsync(False)] == ["Filled"]


async def test_open_orders_replayed(gw: FakeGateway, connect: Connect) -> None:
    """A working order is replayed by the startup sync after a reconnect."""
    gw.fill_mode = "manual"
    ib = await connect(4)
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 100.0))
    await until(lambda: trade.orderStatus.status == "Submitted", "the order working")
    ib.disconnect()
    await until(lambda: gw.clients == [], "the gateway freeing client id 4")
    await ib.connectAsync("127.0.0.1", gw.port, clientId=4, timeout=2)
    [open_trade] = ib.openTrades()
    assert open_trade.order.orderId == trade.order.orderId
    assert open_trade.orderStatus.status == "Submitted"


async def test_ticks_received(gw: FakeGateway, connect: Connect) -> None:
    """reqMktData gets a burst of bid/ask/last and pushed ticks until cancelled."""
    ib = await connect(1)
    batches: list[int] = []
    ib.pendingTickersEvent += lambda tickers: batches.append(len(tickers))
    ticker = ib.reqMktData(AAPL)
    await until(
        lambda: not any(math.isnan(x) for x in (ticker.bid, ticker.ask, ticker.last)),
        "bid, ask and last",
    )
    assert (ticker.bid, ticker.ask, ticker.last) == (149.99, 150.01, 150.0)
    assert gw.push_tick("AAPL", 151.5) == 1
    await until(lambda: ticker.last != 150.0, "the pushed tick")
    assert ticker.last == 151.5 and batches
    ib.cancelMktData(AAPL)
    await until(lambda: gw.requests_named("cancelMktData"), "cancelMktData at the gateway")
    assert gw.push_tick("AAPL", 152.0) == 0


async def test_request_log_records_mkt_data(gw: FakeGateway, connect: Connect) -> None:
    """The request log records reqMktData with the client id and fields."""
    ib = await connect(5)
    ib.reqMktData(AAPL)
    req = await gw.wait_for_request("reqMktData", client_id=5, timeout=1)
    assert req.msg_id == 1 and req.fields[4] == "AAPL"
    assert gw.requests_named("reqMktData", client_id=5) == [req]
    assert gw.requests_named("reqMktData", client_id=6) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"API\0" + struct.pack(">I", 0x7FFFFFFF) + b"xx",  # absurd length
        b"GARBAGE GARBAGE\r\n",  # not the API prefix
        b"API\0" + struct.pack(">I", 9) + b"v157..176" + struct.pack(">I", 6) + b"999\0x\0",
        b"API\0" + struct.pack(">I", 9) + b"v157..176" + struct.pack(">I", 4) + b"zz\0\0",
    ],
)
async def test_malformed_input_isolated(
    gw: FakeGateway, connect: Connect, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed frames close (or are ignored for) one client; others keep working."""
    ib = await connect(1)
    caplog.clear()
    _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(payload)
    await writer.drain()
    # the gateway warns when it closes on, or ignores, a malformed frame, and logs
    # a readable frame of an unknown kind in its request log (with no client id)
    await until(
        lambda: any(
            r.levelno >= logging.WARNING and r.name.startswith("ibkr_connection.simulator")
            for r in caplog.records
        )
        or any(r.client_id is None for r in gw.requests),
        "the gateway dealing with the payload",
    )
    await asyncio.wait_for(ib.reqCurrentTimeAsync(), 1)
    writer.close()
    ib2 = await connect(2)
    assert ib2.isConnected() and ib.isConnected()


async def test_handshake_delay_times_out(gw: FakeGateway) -> None:
    """A handshake delay longer than the timeout makes connectAsync time out."""
    gw.handshake_delay = 0.5
    ib = IB()
    with pytest.raises(asyncio.TimeoutError):
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=0.2)
    assert gw.handshakes == 0
    gw.handshake_delay = 0.0
    await until(lambda: not gw.connections, "the gateway closing the timed-out connection")
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=1)
    ib.disconnect()


async def test_held_sync_times_out(gw: FakeGateway) -> None:
    """Holding execDetailsEnd makes connectAsync time out; release_sync lets it finish."""
    gw.hold_sync("reqExecutions")
    ib = IB()
    with pytest.raises(asyncio.TimeoutError):
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=0.2)
    ib2 = IB()
    task = asyncio.ensure_future(ib2.connectAsync("127.0.0.1", gw.port, clientId=2, timeout=2))
    await gw.wait_for_request("reqExecutions", client_id=2)
    gw.release_sync("reqExecutions")
    await task
    assert ib2.isConnected()
    ib2.disconnect()


async def test_delayed_sync(gw: FakeGateway, caplog: pytest.LogCaptureFixture) -> None:
    """delay_sync slows one startup reply down without breaking it.

    ib_insync sends reqExecutions only once the other startup replies are in,
    so in the gateway's request log it follows reqPositions by the delay; and
    the slowed reply still came before ib_insync gave up on it.
    """
    gw.delay_sync("reqPositions", 0.2)
    ib = IB()
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=5)
    [positions] = gw.requests_named("reqPositions")
    [executions] = gw.requests_named("reqExecutions")
    assert executions.at - positions.at >= 0.2 - 1e-3
    assert [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()] == []
    ib.disconnect()


async def test_nightly_reset_story(gw: FakeGateway, connect: Connect) -> None:
    """nightly_reset sends 1100, farms broken, then 1102 and farms OK."""
    ib = await connect(1)
    seen: list[int] = []
    ib.errorEvent += lambda r, code, m, c: seen.append(code)
    await gw.nightly_reset(silence=0.05, restore_code=1102)
    await until(lambda: len(seen) >= 8, "the whole story")
    assert seen == [1100, 2103, 2105, 2157, 1102, 2104, 2106, 2158]


async def test_ib_async_connects(gw: FakeGateway) -> None:
    """ib_async's IB completes the same connect and sees the accounts."""
    import ib_async

    ib = ib_async.IB()
    await ib.connectAsync("127.0.0.1", gw.port, clientId=9, timeout=2)
    try:
        assert ib.managedAccounts() == [ACCOUNT]
        trade = ib.placeOrder(
            ib_async.Stock("AAPL", "SMART", "USD"), ib_async.MarketOrder("BUY", 1)
        )
        await until(trade.isDone, "the order done")
        assert trade.orderStatus.status == "Filled"
        assert [f.execution.shares for f in trade.fills] == [1.0]
    finally:
        ib.disconnect()


def test_sync_mode_on_idle_loop() -> None:
    """A gateway started with run_until_complete serves a sync IB.connect()."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        gw = FakeGateway(accounts=["DU1", "DU2"])
        loop.run_until_complete(gw.start())
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=2)
        assert ib.managedAccounts() == ["DU1", "DU2"]
        assert ib.reqCurrentTime() is not None
        ib.disconnect()
        loop.run_until_complete(gw.stop())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
