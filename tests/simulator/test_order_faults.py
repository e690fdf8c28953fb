"""The simulator's order faults: a request lost on its way in, an answer lost, a drop after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from ib_insync import IB, LimitOrder, Stock

from ibkr_connection.simulator import FakeGateway

from conftest import round_trip

Connect = Callable[..., Coroutine[Any, Any, IB]]
AAPL = Stock("AAPL", "SMART", "USD")


async def _gone(ib: IB, timeout: float = 2.0) -> None:
    """Wait until the client has noticed its socket is gone."""
    for _ in range(int(timeout / 0.01)):
        if not ib.isConnected():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the client is still connected")


async def test_order_lost_in_transit_is_never_handled(gw: FakeGateway, connect: Connect) -> None:
    """The request leaves the log for lost_requests; nothing is booked; the socket dies."""
    gw.fill_mode = "manual"
    ib = await connect()
    gw.lose_next_order()
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 140.0))
    await _gone(ib)
    assert gw.orders == {}
    assert gw.requests_named("placeOrder") == []
    assert [int(r.fields[1]) for r in gw.lost_requests] == [trade.order.orderId]
    assert trade.orderStatus.status == "PendingSubmit"
    assert gw.armed_order_faults == []


async def test_order_booked_but_its_answer_lost(gw: FakeGateway, connect: Connect) -> None:
    """The order is booked and filled at the gateway; the client hears nothing of it."""
    ib = await connect()
    gw.lose_next_order_ack()
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 140.0))
    await _gone(ib)
    sim = gw.orders[trade.order.orderId]
    assert (sim.status, sim.filled) == ("Filled", 2)
    assert len(gw.requests_named("placeOrder")) == 1 and gw.lost_requests == []
    assert trade.orderStatus.status == "PendingSubmit" and trade.fills == []


async def test_drop_right_after_the_answer(gw: FakeGateway, connect: Connect) -> None:
    """The answer goes out, then the socket is dropped."""
    gw.fill_mode = "manual"
    ib = await connect()
    gw.drop_after_next_order()
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 140.0))
    await _gone(ib)
    assert trade.orderStatus.status == "Submitted"
    assert gw.orders[trade.order.orderId].status == "Submitted"


async def test_cancel_fault_catches_cancels_only(gw: FakeGateway, connect: Connect) -> None:
    """A fault armed for cancelOrder lets orders through and catches the cancel."""
    gw.fill_mode = "manual"
    ib = await connect()
    gw.lose_next_order_ack("cancelOrder")
    trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 140.0))
    await round_trip(ib)
    assert ib.isConnected() and trade.orderStatus.status == "Submitted"
    ib.cancelOrder(trade.order)
    await _gone(ib)
    assert gw.orders[trade.order.orderId].status == "Cancelled"
    assert trade.orderStatus.status == "PendingCancel"


async def test_fault_for_one_client_spares_the_others(gw: FakeGateway, connect: Connect) -> None:
    """A fault armed for client 2 waits for client 2's order."""
    gw.fill_mode = "manual"
    one = await connect(client_id=1)
    two = await connect(client_id=2)
    gw.lose_next_order(client_id=2)
    ones = one.placeOrder(AAPL, LimitOrder("BUY", 1, 140.0))
    await round_trip(one)
    assert one.isConnected() and ones.orderStatus.status == "Submitted"
    two.placeOrder(AAPL, LimitOrder("BUY", 1, 140.0))
    await _gone(two)
    assert one.isConnected() and list(gw.orders) == [ones.order.orderId]


def test_unknown_request_is_refused() -> None:
    """Only placeOrder and cancelOrder can be caught; the armed list is left as it was."""
    gw = FakeGateway()
    with pytest.raises(ValueError, match="placeOrder, cancelOrder"):
        gw.lose_next_order("reqPositions")
    assert gw.armed_order_faults == []
    gw.drop_after_next_order(client_id=3)
    assert gw.armed_order_faults == [("drop_after", "placeOrder", 3)]
    gw.clear_order_faults()
    assert gw.armed_order_faults == []
