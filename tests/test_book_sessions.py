"""The wrapper's book across sessions: orders are told apart by client id and permId."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ib_insync import LimitOrder, MarketOrder, Stock

import broker_support
from broker_support import pump_until, round_trip, run, sessions
from ibkr_connection import IBKRIBInsyncApi
from ibkr_connection.simulator import FakeGateway

# The shared fixtures, taken into this module so pytest finds them.
gw = broker_support.gw
loop = broker_support.loop
make_api = broker_support.make_api

AAPL = Stock("AAPL", "SMART", "USD")


def test_master_session_keeps_another_clients_order_apart(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Client 0 books client 2's order 100 under its own key, apart from its own order 100."""
    api = make_api(client_id=0)
    assert api.connect() is True
    own = api.place_order(AAPL, MarketOrder("BUY", 2))
    key = str(own.order.orderId)
    assert pump_until(api, lambda: len(api.orders[key]["commissions"]) == 1)
    [own_exec] = [e["execution_id"] for e in api.orders[key]["executions"]]
    # Another API client's order with the same order id fills; a master session
    # learns of it from the executions the gateway reports after a reconnect.
    gw.create_order("AAPL", "SELL", 3, client_id=2, order_id=own.order.orderId)
    other_exec = gw.fill_order(own.order.orderId, price=151.0)
    run(loop, gw.drop_clients())
    assert pump_until(api, lambda: api.connected and sessions(api) == 2)
    round_trip(api)
    orders = api.snapshot()["orders"]
    assert [e["execution_id"] for e in orders[key]["executions"]] == [own_exec]
    assert [c["execution_id"] for c in orders[key]["commissions"]] == [own_exec]
    assert (orders[key]["action"], orders[key]["filled"]) == ("BUY", 2)
    other = orders[f"2:{own.order.orderId}"]
    assert (other["client_id"], other["order_id"]) == (2, own.order.orderId)
    assert (other["action"], other["quantity"], other["status"]) == ("SELL", 3, "Filled")
    assert [e["execution_id"] for e in other["executions"]] == [other_exec.exec_id]
    assert [c["execution_id"] for c in other["commissions"]] == [other_exec.exec_id]
    assert sorted(orders) == sorted([key, f"2:{own.order.orderId}"])


def test_order_cancelled_while_away_shows_cancelled_after_the_reconnect(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The gateway's completed orders give the final status of an order done while away."""
    gw.fill_mode = "manual"
    api = make_api()
    assert api.connect() is True
    working = api.place_order(AAPL, LimitOrder("BUY", 5, 140.0))
    key = str(working.order.orderId)
    assert pump_until(api, lambda: api.orders[key]["status"] == "Submitted")
    run(loop, gw.stop_listening())
    run(loop, gw.drop_clients())
    assert pump_until(api, lambda: not api.connected)
    gw.cancel_order(working.order.orderId)
    run(loop, gw.start_listening())
    assert pump_until(api, lambda: api.connected and sessions(api) == 2)
    round_trip(api)
    assert api.orders[key]["status"] == "Cancelled"
