"""The simulator keeps one trading day of history, as TWS does, over a real client."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from ib_insync import IB, MarketOrder, Stock

from ibkr_connection import ConnectionManager, ConnectionState
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.brokerage import DAY_ZONE

from .conftest import until
from conftest import on_live_session

#: A day passes in no wall-clock time; the sockets are real loopback ones.
VIRTUAL_TIME = True

Connect = Callable[..., Coroutine[Any, Any, IB]]
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture(autouse=True)
def _days(gw: FakeGateway) -> None:
    """The gateway keeps one trading day, as a real one does (the shared fixture keeps all)."""
    gw.book.day_zone = DAY_ZONE


def _until_next_midnight(now: datetime) -> float:
    """Seconds from ``now`` to one second past the next midnight in New York."""
    local = now.astimezone(NEW_YORK)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=1, microsecond=0)
    return (midnight - local).total_seconds()


async def test_yesterdays_fills_are_not_reported_after_midnight(
    gw: FakeGateway, connect: Connect
) -> None:
    """After midnight no request, and no new session's sync, sees yesterday's fills or orders."""
    ib = await connect(1)
    trade = ib.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 3, orderRef="day-1"))
    await until(lambda: trade.orderStatus.status == "Filled", "the order filled")
    assert [f.execution.orderRef for f in await ib.reqExecutionsAsync()] == ["day-1"]
    assert len(await ib.reqCompletedOrdersAsync(apiOnly=False)) == 1
    await asyncio.sleep(_until_next_midnight(gw.clock.wall()))
    assert await ib.reqExecutionsAsync() == []
    assert await ib.reqCompletedOrdersAsync(apiOnly=False) == []
    assert (gw.executions, gw.orders) == ([], {})
    later = await connect(2)
    assert (later.fills(), later.trades()) == ([], [])
    assert [p.position for p in later.positions()] == [3.0]  # the position carries over


@pytest.mark.parametrize("wire", [("ib_insync", 178), ("ib_async", 178)], indirect=True)
async def test_a_managed_bot_running_for_days_holds_one_days_orders(
    gw: FakeGateway, make_manager: Callable[..., ConnectionManager], wire: tuple[str, int]
) -> None:
    """A restart's sync brings the day's orders back, a restart after midnight none: no pile-up."""
    lib = importlib.import_module(wire[0])
    manager = make_manager(heartbeat_idle=600.0)  # days of idle probes would cost seconds
    await manager.start(timeout=30)
    ib = manager.ib
    held = []
    for day in range(3):
        for n in range(4):
            trade = ib.placeOrder(lib.Stock("AAPL", "SMART", "USD"),
                                  lib.MarketOrder("BUY", 1, orderRef=f"day{day}-{n}"))
            await until(lambda t=trade: t.orderStatus.status == "Filled", "the order filled")
        for wait in (0.0, _until_next_midnight(gw.clock.wall())):
            await asyncio.sleep(wait)
            await gw.restart(5.0)  # a new session, and its startup sync
            await on_live_session(manager, ConnectionState.CONNECTED)
            held.append((len(ib.trades()), len(ib.fills())))
    assert held == [(4, 4), (0, 0)] * 3
