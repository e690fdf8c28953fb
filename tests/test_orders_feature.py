"""Step definitions for features/orders.feature, against the gateway simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock
from pytest_bdd import given, parsers, scenarios, then, when

import broker_support
from broker_support import ACCOUNT, Context, pump_until, round_trip, run, sessions
from ibkr_connection import (
    Config,
    ConnectionState,
    IBKRIBInsyncApi,
    OrderRejectedError,
    UsageError,
)
from ibkr_connection.inputs import InputKind
from ibkr_connection.simulator import FakeGateway

# The shared fixtures, taken into this module so pytest finds them.
ctx = broker_support.ctx
gw = broker_support.gw
loop = broker_support.loop
make_api = broker_support.make_api

scenarios("orders.feature")

AAPL = Stock("AAPL", "SMART", "USD")


def _entry(api: IBKRIBInsyncApi, ctx: Context) -> dict[str, Any]:
    """The book's entry for the scenario's order."""
    return api.snapshot()["orders"][str(ctx.trade.order.orderId)]


def _refused(api: IBKRIBInsyncApi, since: int) -> int:
    """How many connect attempts failed after transition ``since``."""
    return sum(1 for t in api.manager.transcript[since:] if t.trigger is InputKind.ATTEMPT_FAILED)


def _aapl(api: IBKRIBInsyncApi) -> dict[str, Any]:
    """The book's AAPL position."""
    [position] = [p for p in api.snapshot()["positions"].values() if p["symbol"] == "AAPL"]
    return position


@given("the IBKR TWS/Gateway is running")
def _gateway_running(gw: FakeGateway) -> None:
    """The simulator listens on its port."""
    assert gw.listening


@given("I am connected to IBKR", target_fixture="api")
def _connected(make_api: Callable[..., IBKRIBInsyncApi]) -> IBKRIBInsyncApi:
    """A wrapper connected to the simulator."""
    api = make_api()
    assert api.connect() is True
    return api


@given("I am connected to IBKR in read-only mode", target_fixture="api")
def _connected_readonly(make_api: Callable[..., IBKRIBInsyncApi]) -> IBKRIBInsyncApi:
    """A read-only wrapper connected to the simulator."""
    api = make_api(readonly=True)
    assert api.connect() is True
    return api


@given(parsers.parse("the gateway fills orders in {parts:d} parts"))
def _fill_in_parts(gw: FakeGateway, parts: int) -> None:
    """Orders fill in several executions."""
    gw.fill_mode = ("parts", parts)


@given(parsers.parse("I have a working order to buy {quantity:d} AAPL"))
def _working_order(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context, quantity: int) -> None:
    """A limit order the gateway leaves working."""
    gw.fill_mode = "manual"
    ctx.trade = api.place_order(AAPL, LimitOrder("BUY", quantity, 152.0))
    assert pump_until(api, lambda: _entry(api, ctx)["status"] == "Submitted")


@given(parsers.parse("I bought {quantity:d} AAPL at market"))
@when(parsers.parse("I buy {quantity:d} AAPL at market"))
def _buy(api: IBKRIBInsyncApi, ctx: Context, quantity: int) -> None:
    """A market buy, run until filled with its commissions booked."""
    ctx.trade = api.place_order(AAPL, MarketOrder("BUY", quantity))
    assert pump_until(api, lambda: (
        _entry(api, ctx)["status"] == "Filled"
        and len(_entry(api, ctx)["commissions"]) == len(_entry(api, ctx)["executions"])
    ))


@given("TWS loses its connection to IB")
def _link_lost(api: IBKRIBInsyncApi, gw: FakeGateway, loop: asyncio.AbstractEventLoop) -> None:
    """The gateway sends 1100."""
    run(loop, gw.send_error(1100))
    assert pump_until(api, lambda: api.state is ConnectionState.LOST)


@given(parsers.parse("AAPL trades at {price:g}"))
def _tick(gw: FakeGateway, price: float) -> None:
    """The last price moves."""
    gw.push_tick("AAPL", price)


@when("the gateway drops me and stops answering")
def _drop_and_refuse(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context,
                     loop: asyncio.AbstractEventLoop) -> None:
    """The gateway stops listening and aborts our socket."""
    ctx.sessions_before = sessions(api)
    since = len(api.manager.transcript)
    run(loop, gw.stop_listening())
    run(loop, gw.drop_clients())
    assert pump_until(api, lambda: not api.connected)
    assert pump_until(api, lambda: _refused(api, since) >= 2, timeout=30), "hang guard"
    assert not api.connected


@when("the gateway drops me")
def _drop(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context,
          loop: asyncio.AbstractEventLoop) -> None:
    """The gateway aborts our socket."""
    ctx.sessions_before = sessions(api)
    run(loop, gw.drop_clients())


@when(parsers.parse("the order fills {quantity:d} shares at {price:g} while I am away"))
def _fill_away(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context,
               quantity: int, price: float) -> None:
    """The gateway books a fill while no client is connected."""
    assert gw.clients == []
    ctx.extra["exec"] = gw.fill_order(ctx.trade.order.orderId, quantity, price)


@when("the gateway answers again")
def _listen(gw: FakeGateway, loop: asyncio.AbstractEventLoop) -> None:
    """The gateway accepts connections again."""
    run(loop, gw.start_listening())


@when("I disconnect from IBKR")
def _disconnect(api: IBKRIBInsyncApi, gw: FakeGateway) -> None:
    """Log off."""
    api.disconnect()
    assert pump_until(api, lambda: not gw.connections)


@when("I connect to IBKR again")
def _reconnect(api: IBKRIBInsyncApi) -> None:
    """Log on again."""
    assert api.connect() is True
    round_trip(api)


@when(parsers.parse("I try to buy {quantity:d} AAPL at market"))
def _try_buy(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context, quantity: int) -> None:
    """Try to place an order, recording a refusal."""
    gw.clear_requests()
    try:
        ctx.trade = api.place_order(AAPL, MarketOrder("BUY", quantity))
    except OrderRejectedError as exc:
        ctx.error = exc
    round_trip(api)  # an order sent would have reached the gateway before the answer


@when(parsers.parse("I sell {quantity:d} AAPL with a limit of {price:g} and it fills"))
def _sell(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context, quantity: int,
          price: float) -> None:
    """A limit sell, filled by the gateway."""
    gw.fill_mode = "manual"
    ctx.trade = api.place_order(AAPL, LimitOrder("SELL", quantity, price))
    assert pump_until(api, lambda: _entry(api, ctx)["status"] == "Submitted")
    gw.fill_order(ctx.trade.order.orderId)
    assert pump_until(api, lambda: _entry(api, ctx)["status"] == "Filled")
    round_trip(api)  # the portfolio update sent with the fill


@then("I should be reconnected")
def _reconnected(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """A new session is up, driven by handle_callbacks alone."""
    assert pump_until(api, lambda: api.connected and sessions(api) > ctx.sessions_before)
    round_trip(api)


@then(parsers.parse("the order should be filled for {quantity:d} shares"))
def _filled(api: IBKRIBInsyncApi, ctx: Context, quantity: int) -> None:
    """Status Filled, everything filled, nothing remaining."""
    entry = _entry(api, ctx)
    assert (entry["status"], entry["filled"], entry["remaining"]) == ("Filled", quantity, 0)


@then(parsers.parse("the order should show {count:d} fills"))
@then(parsers.parse("the order should show {count:d} fill"))
def _fill_count(api: IBKRIBInsyncApi, ctx: Context, count: int) -> None:
    """The order has exactly this many executions, each id once."""
    executions = _entry(api, ctx)["executions"]
    assert len(executions) == count
    assert len({e["execution_id"] for e in executions}) == count


@then(parsers.parse("the order should show 1 fill of {quantity:d} shares at {price:g}"))
def _one_fill(api: IBKRIBInsyncApi, ctx: Context, quantity: int, price: float) -> None:
    """Exactly the fill the gateway booked while we were away."""
    [execution] = _entry(api, ctx)["executions"]
    assert execution["execution_id"] == ctx.extra["exec"].exec_id
    assert (execution["shares"], execution["price"]) == (quantity, price)


@then("the log should say the fill was recovered")
def _logged_recovered(caplog: pytest.LogCaptureFixture, ctx: Context) -> None:
    """The reconciliation logged the recovered execution by its id."""
    exec_id = ctx.extra["exec"].exec_id
    assert any("recovered" in r.getMessage() and exec_id in r.getMessage()
               for r in caplog.records)


@then("a commission should be recorded for each fill")
def _commission_each(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """One commission per execution id, as the gateway charges it."""
    entry = _entry(api, ctx)
    assert sorted(c["execution_id"] for c in entry["commissions"]) == sorted(
        e["execution_id"] for e in entry["executions"])
    assert all(c["commission"] == 1.0 for c in entry["commissions"])


@then("the commission of that fill should be recorded once")
def _commission_once(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """One commission, for the one execution."""
    entry = _entry(api, ctx)
    [commission] = entry["commissions"]
    [execution] = entry["executions"]
    assert commission["execution_id"] == execution["execution_id"]
    assert commission["commission"] == 1.0


@then("the order should be refused because the session is read-only")
def _refused_readonly(ctx: Context) -> None:
    """place_order raised OrderRejectedError naming read-only."""
    assert isinstance(ctx.error, OrderRejectedError) and "read-only" in str(ctx.error)


@then("the order should be refused because the connection is lost")
def _refused_lost(ctx: Context) -> None:
    """place_order raised OrderRejectedError naming the state."""
    assert isinstance(ctx.error, OrderRejectedError) and "lost" in str(ctx.error)


@then("the gateway should not have received an order")
def _no_order(gw: FakeGateway) -> None:
    """No placeOrder request reached the simulator."""
    assert gw.requests_named("placeOrder") == []


@then(parsers.parse(
    "my AAPL position should be {quantity:d} shares at an average price of {price:g}"))
def _position(api: IBKRIBInsyncApi, quantity: int, price: float) -> None:
    """Quantity and average cost from positionEvent, keyed by account and conId."""
    position = _aapl(api)
    assert (position["quantity"], position["avg_price"]) == (quantity, price)
    assert position["account"] == ACCOUNT


@then(parsers.parse(
    "my AAPL position should show a market price of {price:g} and a market value of {value:g}"))
def _market(api: IBKRIBInsyncApi, price: float, value: float) -> None:
    """Market price and value from updatePortfolio."""
    position = _aapl(api)
    assert (position["market_price"], position["market_value"]) == (price, value)


@then(parsers.parse("my AAPL position should show an unrealized profit of {unrealized:g} "
                    "and a realized profit of {realized:g}"))
def _pnl(api: IBKRIBInsyncApi, unrealized: float, realized: float) -> None:
    """PnL from updatePortfolio."""
    position = _aapl(api)
    assert (position["unrealized_pnl"], position["realized_pnl"]) == (unrealized, realized)



@given(parsers.parse("my earlier run bought {quantity:d} AAPL at market in {parts:d} fills"))
def _earlier_bought(make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway, ctx: Context,
                    quantity: int, parts: int) -> None:
    """A first bot (client 1) buys at market, filled in parts, and logs off."""
    earlier = make_api()
    assert earlier.connect() is True
    gw.fill_mode = ("parts", parts)
    trade = earlier.place_order(AAPL, MarketOrder("BUY", quantity))
    key = str(trade.order.orderId)
    assert pump_until(earlier, lambda: len(earlier.orders[key]["commissions"]) == parts)
    earlier.disconnect()
    assert pump_until(earlier, lambda: not gw.connections)
    ctx.extra["bought"] = key


@given(parsers.parse(
    "my earlier run left an order to buy {quantity:d} AAPL with {filled:d} filled"))
def _earlier_working(make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway, ctx: Context,
                     quantity: int, filled: int) -> None:
    """A first bot (client 1) leaves a partly filled limit order working, and logs off."""
    earlier = make_api()
    assert earlier.connect() is True
    gw.fill_mode = "manual"
    trade = earlier.place_order(AAPL, LimitOrder("BUY", quantity, 152.0))
    key = str(trade.order.orderId)
    assert pump_until(earlier, lambda: earlier.orders[key]["status"] == "Submitted")
    gw.fill_order(trade.order.orderId, filled)
    assert pump_until(earlier, lambda: len(earlier.orders[key]["commissions"]) == 1)
    earlier.disconnect()
    assert pump_until(earlier, lambda: not gw.connections)
    ctx.extra["working"] = key


@when("I start the bot again and connect to IBKR", target_fixture="api")
def _restart(make_api: Callable[..., IBKRIBInsyncApi]) -> IBKRIBInsyncApi:
    """A fresh wrapper with the same client id connects."""
    api = make_api()
    assert api.connect() is True
    round_trip(api)
    return api


@then(parsers.re(
    r"the (?P<which>bought|working) order should show (?P<action>BUY|SELL) (?P<quantity>\d+) "
    r"AAPL, (?P<status>\w+), (?P<filled>\d+) filled, with (?P<fills>\d+) fills?"))
def _whole(api: IBKRIBInsyncApi, ctx: Context, which: str, action: str, quantity: str,
           status: str, filled: str, fills: str) -> None:
    """The entry carries the order's details, its status, its fills and their commissions."""
    entry = api.snapshot()["orders"][ctx.extra[which]]
    assert (entry["symbol"], entry["action"], entry["quantity"]) == ("AAPL", action,
                                                                     int(quantity))
    assert (entry["status"], entry["filled"]) == (status, int(filled))
    assert entry["remaining"] == int(quantity) - int(filled)
    assert len(entry["executions"]) == int(fills)
    assert sorted(c["execution_id"] for c in entry["commissions"]) == sorted(
        e["execution_id"] for e in entry["executions"])


@then("every order in my book should have its details and a commission for each fill")
def _all_whole(api: IBKRIBInsyncApi, gw: FakeGateway) -> None:
    """No half-booked entry: each has an action, a quantity, a status and matching fills."""
    orders = api.snapshot()["orders"]
    assert sorted(orders) == sorted(str(o) for o in gw.orders)
    for entry in orders.values():
        assert entry["action"] and entry["quantity"] and entry["status"]
        assert entry["executions"]
        assert len(entry["commissions"]) == len(entry["executions"])


# -- plain tests of the wrapper's contract ------------------------------------------------


def test_handle_callbacks_survives_a_drop_and_recovers(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A gateway-side drop while handle_callbacks runs raises nothing; recovery follows."""
    api = make_api()
    assert api.connect()
    loop.call_later(0.02, lambda: asyncio.ensure_future(gw.drop_clients()))
    api.handle_callbacks(0.1)
    assert pump_until(api, lambda: api.connected and sessions(api) == 2)


def test_connect_inside_the_loop_is_refused(
    make_api: Callable[..., IBKRIBInsyncApi], loop: asyncio.AbstractEventLoop,
) -> None:
    """connect(), disconnect() and handle_callbacks() raise UsageError from inside the loop."""
    api = make_api()

    async def inside() -> list[str]:
        refused = []
        for call in (api.connect, api.disconnect, api.handle_callbacks):
            try:
                call()
            except UsageError as exc:
                refused.append(str(exc))
        return refused

    refused = run(loop, inside())
    assert len(refused) == 3 and all("event loop" in text for text in refused)


def test_completed_orders_are_pruned_oldest_first(
    make_api: Callable[..., IBKRIBInsyncApi],
) -> None:
    """Beyond max_completed_orders, the oldest completed orders leave the book."""
    api = make_api(max_completed_orders=2)
    assert api.connect()
    trades = [api.place_order(AAPL, MarketOrder("BUY", 1)) for _ in range(3)]
    assert pump_until(api, lambda: all(t.isDone() for t in trades))
    round_trip(api)  # the commission reports that follow the last status
    assert sorted(api.orders) == sorted(str(t.order.orderId) for t in trades[1:])


def test_snapshot_is_a_deep_copy(make_api: Callable[..., IBKRIBInsyncApi]) -> None:
    """Changing a snapshot leaves the book alone."""
    api = make_api()
    assert api.connect()
    trade = api.place_order(AAPL, MarketOrder("BUY", 2))
    assert pump_until(api, lambda: len(api.orders[str(trade.order.orderId)]["commissions"]) == 1)
    snap = api.snapshot()
    snap["orders"][str(trade.order.orderId)]["executions"].clear()
    assert len(api.orders[str(trade.order.orderId)]["executions"]) == 1
    assert set(snap) == {"orders", "positions"}


def test_cancel_and_order_errors_are_booked(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """cancel_order cancels a working order; an order error is recorded on its entry."""
    gw.fill_mode = "manual"
    api = make_api()
    assert api.connect()
    trade = api.place_order(AAPL, LimitOrder("BUY", 1, 140.0))
    key = str(trade.order.orderId)
    assert api.next_order_id > trade.order.orderId
    assert pump_until(api, lambda: api.orders[key]["status"] == "Submitted")
    run(loop, gw.send_error(399, req_id=trade.order.orderId, message="Order message: warning"))
    api.cancel_order(trade.order.orderId)
    assert pump_until(api, lambda: api.orders[key]["status"] == "Cancelled")
    assert api.orders[key]["errors"][0]["code"] == 399
    with pytest.raises(OrderRejectedError, match="not a working order"):
        api.cancel_order(trade.order.orderId)


async def test_async_twins_connect_trade_and_disconnect() -> None:
    """An async bot uses connect_async / disconnect_async on the running loop."""
    async with FakeGateway(accounts=[ACCOUNT], prices={"AAPL": 150.0}) as gateway:
        api = IBKRIBInsyncApi(Config(IBKR_PORT=gateway.port), IB(), connect_timeout=2.0)
        assert await api.connect_async() is True
        assert api.state is ConnectionState.CONNECTED and api.account_id == ACCOUNT
        trade = api.place_order(AAPL, MarketOrder("BUY", 1))
        guard = asyncio.get_running_loop().time() + 30  # a hang guard, not the assertion
        while not api.orders[str(trade.order.orderId)]["commissions"]:
            assert asyncio.get_running_loop().time() < guard, "hang guard: no commission"
            await asyncio.sleep(0.001)
        assert api.orders[str(trade.order.orderId)]["filled"] == 1
        await api.disconnect_async()
        assert api.state is ConnectionState.DISCONNECTED


# -- orders caught by a drop --------------------------------------------------------------

#: The orderRef the scenarios' orders carry.
REF = "feature-order"


def _listen_to_order_events(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """Record what the wrapper's order events tell the bot."""
    told_uncertain: list[tuple[str, str]] = []
    told_resolved: list[tuple[str, Any]] = []
    ctx.extra["uncertain"] = told_uncertain
    ctx.extra["resolved"] = told_resolved
    api.orderUncertainEvent += lambda entry, request: told_uncertain.append(
        (entry["status"], request))
    api.orderResolvedEvent += lambda entry, outcome: told_resolved.append(
        (entry["status"], outcome))


@given(parsers.re(r"the gateway will go down (?P<when>as it receives|while) my next "
                  r"(?P<what>order|cancel)(?: is on its way)?, losing (?P<lost>its answer|"
                  r"the order)"))
def _order_fault(api: IBKRIBInsyncApi, gw: FakeGateway, ctx: Context,
                 loop: asyncio.AbstractEventLoop, when: str, what: str, lost: str) -> None:
    """Arm the fault; the gateway also stops accepting connections until told."""
    _listen_to_order_events(api, ctx)
    request = "placeOrder" if what == "order" else "cancelOrder"
    if lost == "the order":
        gw.lose_next_order(request)
    else:
        gw.lose_next_order_ack(request)
    ctx.sessions_before = sessions(api)
    run(loop, gw.stop_listening())


@when(parsers.parse("I send an order to buy {quantity:d} AAPL at market"))
def _send(api: IBKRIBInsyncApi, ctx: Context, quantity: int) -> None:
    """A market buy with an orderRef; the drop follows."""
    ctx.trade = api.place_order(AAPL, MarketOrder("BUY", quantity, orderRef=REF))
    ctx.extra["first_id"] = ctx.trade.order.orderId
    assert pump_until(api, lambda: not api.connected)


@when("I cancel the order")
def _cancel(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """Cancel the working order; the drop follows."""
    api.cancel_order(ctx.trade.order.orderId)
    assert pump_until(api, lambda: not api.connected)


@then("the order should be uncertain")
def _uncertain(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """The book says Uncertain."""
    assert _entry(api, ctx)["status"] == "Uncertain"


@then("I should have been told that the order is uncertain")
def _told_uncertain(ctx: Context) -> None:
    """One orderUncertainEvent, for the new order."""
    assert ctx.extra["uncertain"] == [("Uncertain", "place")]


@then(parsers.parse("the order should be confirmed as {status} with 1 fill and its commission"))
def _confirmed_with_fill(api: IBKRIBInsyncApi, ctx: Context, status: str) -> None:
    """The gateway's status, its one execution and the commission of it."""
    entry = _entry(api, ctx)
    assert entry["status"] == status
    [execution] = entry["executions"]
    [commission] = entry["commissions"]
    assert commission["execution_id"] == execution["execution_id"]


@then(parsers.parse("the order should be confirmed as {status:w}"))
def _confirmed(api: IBKRIBInsyncApi, ctx: Context, status: str) -> None:
    """The gateway's status, told once."""
    assert _entry(api, ctx)["status"] == status
    assert [(s, o.status) for s, o in ctx.extra["resolved"]] == [(status, status)]


@then(parsers.parse("I should have been told once that the order was confirmed as {status}"))
def _told_confirmed(ctx: Context, status: str) -> None:
    """One orderResolvedEvent: found at the gateway, the order took effect."""
    [(entry_status, outcome)] = ctx.extra["resolved"]
    assert (entry_status, outcome.status, outcome.received, outcome.applied) == (
        status, status, True, True)


@then("the gateway should have received the order once")
def _received_once(gw: FakeGateway, ctx: Context) -> None:
    """One order booked with the orderRef, one placeOrder request for its id."""
    assert [o.order_ref for o in gw.orders.values()] == [REF]
    assert [int(r.fields[1]) for r in gw.requests_named("placeOrder")] == [
        ctx.trade.order.orderId]


@then("the order should be reported as not received")
def _not_received(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """NotReceived in the book, told once."""
    assert _entry(api, ctx)["status"] == "NotReceived"
    [(entry_status, outcome)] = ctx.extra["resolved"]
    assert (entry_status, outcome.received) == ("NotReceived", False)


@then("the gateway should not have the order")
def _gateway_lacks(gw: FakeGateway, ctx: Context) -> None:
    """The request was lost on its way: no order, no request logged."""
    assert gw.orders == {} and gw.requests_named("placeOrder") == []
    assert [int(r.fields[1]) for r in gw.lost_requests] == [ctx.extra["first_id"]]


@then("sending the same order again should be refused")
def _same_refused(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """The Order object still carries the id that is never reused."""
    with pytest.raises(OrderRejectedError, match="not received"):
        api.place_order(AAPL, ctx.trade.order)


@when("I send the order again as a new order")
def _send_again(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """The same Order with its id cleared: a new order."""
    order = ctx.trade.order
    order.orderId = 0
    ctx.trade = api.place_order(AAPL, order)


@then("it should be filled under a new order id")
def _filled_new_id(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """Filled, under an id above the lost one."""
    assert ctx.trade.order.orderId > ctx.extra["first_id"]
    assert pump_until(api, lambda: _entry(api, ctx)["status"] == "Filled")


@then("cancelling it again should be refused while I am away")
def _cancel_refused(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """No cancel is queued for later."""
    with pytest.raises(OrderRejectedError, match="not connected"):
        api.cancel_order(ctx.trade.order.orderId)


@then("changing it should be refused while I am away")
def _modify_refused(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """No modification is queued for later."""
    order = ctx.trade.order
    order.totalQuantity = 4
    with pytest.raises(OrderRejectedError, match="not connected"):
        api.place_order(AAPL, order)


@then("the gateway should have received the order once and the cancel once")
def _order_and_cancel_once(gw: FakeGateway, ctx: Context) -> None:
    """One placeOrder and one cancelOrder for the order's id; its quantity unchanged."""
    order_id = ctx.trade.order.orderId
    assert [int(r.fields[1]) for r in gw.requests_named("placeOrder")] == [order_id]
    assert [int(r.fields[2]) for r in gw.requests_named("cancelOrder")] == [order_id]
    assert gw.orders[order_id].total_quantity == 8
