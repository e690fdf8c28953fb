"""The broker wrapper's book over ib_async, which speaks up to server version 178.

The broker suites drive ib_insync 0.9.86, which stops at 176; here the same
wrapper drives an ``ib_async.IB`` so that its book is also proven on the
layouts of 177 (no faProfile) and 178 (pendingPriceRevision), and at 157.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import ib_async
import pytest

import broker_support
from broker_support import pump_until, round_trip, run, sessions
from ibkr_connection import Config, IBKRIBInsyncApi
from ibkr_connection.simulator import FakeGateway

loop = broker_support.loop

AAPL = ib_async.Stock("AAPL", "SMART", "USD", conId=265598)


@pytest.fixture(params=[157, 177, 178], ids=["ib_async-v157", "ib_async-v177", "ib_async-v178"])
def gw(loop: asyncio.AbstractEventLoop, request: pytest.FixtureRequest) -> Iterator[FakeGateway]:
    """A running gateway speaking up to the parameter's version, AAPL at 150."""
    gateway = FakeGateway(accounts=[broker_support.ACCOUNT], next_order_id=100,
                          server_version=request.param)
    gateway.add_instrument("AAPL", 150.0, con_id=265598)
    loop.run_until_complete(gateway.start())
    yield gateway
    loop.run_until_complete(gateway.stop())


@pytest.fixture
def make_api(gw: FakeGateway) -> Iterator[Callable[..., IBKRIBInsyncApi]]:
    """Factory of wrappers around an ib_async IB on ``gw``; all disconnected afterwards."""
    made: list[IBKRIBInsyncApi] = []

    def _make(client_id: int = 1) -> IBKRIBInsyncApi:
        config = Config(IBKR_HOST="127.0.0.1", IBKR_PORT=gw.port, IBKR_CLIENT_ID=client_id)
        api = IBKRIBInsyncApi(config, ib_async.IB(), connect_timeout=2.0)
        made.append(api)
        return api

    yield _make
    for api in made:
        api.disconnect()


def test_order_filled_in_parts_is_booked_whole(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
) -> None:
    """An order filled in three parts is booked with its terms, fills and commissions."""
    gw.fill_mode = ("parts", 3)
    api = make_api()
    assert api.connect() is True
    assert api.ib.client.serverVersion() == gw.server_version
    trade = api.place_order(AAPL, ib_async.LimitOrder("BUY", 9, 151.0, orderRef="parts"))
    key = str(trade.order.orderId)
    assert pump_until(api, lambda: len(api.orders.get(key, {}).get("commissions", [])) == 3)
    entry = api.snapshot()["orders"][key]
    assert (entry["symbol"], entry["action"], entry["quantity"]) == ("AAPL", "BUY", 9)
    assert (entry["order_type"], entry["order_ref"], entry["status"]) == ("LMT", "parts",
                                                                          "Filled")
    wanted = sorted(ex.exec_id for ex in gw.executions)
    assert sorted(e["execution_id"] for e in entry["executions"]) == wanted
    assert [e["shares"] for e in entry["executions"]] == [3.0, 3.0, 3.0]
    assert sorted(c["execution_id"] for c in entry["commissions"]) == wanted


def test_fills_and_cancel_while_away_are_recovered_once(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Fills and a cancel booked while the bot is disconnected arrive once after the reconnect."""
    gw.fill_mode = "manual"
    api = make_api()
    assert api.connect() is True
    filled = api.place_order(AAPL, ib_async.LimitOrder("BUY", 6, 149.0))
    cancelled = api.place_order(AAPL, ib_async.LimitOrder("SELL", 2, 160.0))
    assert pump_until(api, lambda: len(gw.orders) == 2)
    gw.fill_order(filled.order.orderId, quantity=2)  # while connected
    assert pump_until(api, lambda: len(api.orders[str(filled.order.orderId)]["executions"]) == 1)
    run(loop, gw.stop_listening())
    run(loop, gw.drop_clients())
    assert pump_until(api, lambda: not api.connected)
    gw.fill_order(filled.order.orderId, quantity=4)  # while away
    gw.cancel_order(cancelled.order.orderId)
    run(loop, gw.start_listening())
    assert pump_until(api, lambda: api.connected and sessions(api) == 2)
    wanted = sorted(ex.exec_id for ex in gw.executions)
    assert pump_until(api, lambda: sorted(
        e["execution_id"] for e in api.snapshot()["orders"][str(filled.order.orderId)][
            "executions"]) == wanted)
    round_trip(api)
    book = api.snapshot()["orders"]
    entry = book[str(filled.order.orderId)]
    assert (entry["filled"], entry["status"]) == (6.0, "Filled")
    assert sorted(c["execution_id"] for c in entry["commissions"]) == wanted
    assert book[str(cancelled.order.orderId)]["status"] == "Cancelled"
