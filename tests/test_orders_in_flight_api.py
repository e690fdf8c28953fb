"""Orders caught by a dropped session, in the sync wrapper's book, on both clients."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import broker_support
from broker_support import pump_until, round_trip, run, sessions
from ibkr_connection import Config, IBKRIBInsyncApi, OrderRejectedError
from ibkr_connection.inflight import Resolution
from ibkr_connection.simulator import FakeGateway

# The shared fixtures, taken into this module so pytest finds them.
gw = broker_support.gw
loop = broker_support.loop


@pytest.fixture(params=["ib_insync", "ib_async"])
def lib(request: pytest.FixtureRequest) -> ModuleType:
    """The client library under test: ib_insync, then ib_async."""
    return importlib.import_module(request.param)


@pytest.fixture
def make_api(gw: FakeGateway, loop: asyncio.AbstractEventLoop, lib: ModuleType
             ) -> Iterator[Callable[..., IBKRIBInsyncApi]]:
    """Factory of wrappers on ``lib``'s IB, pointed at ``gw``; all disconnected afterwards."""
    made: list[IBKRIBInsyncApi] = []

    def _make(**options: Any) -> IBKRIBInsyncApi:
        api = IBKRIBInsyncApi(Config(IBKR_PORT=gw.port), lib.IB(), connect_timeout=2.0,
                              **options)
        made.append(api)
        return api

    yield _make
    for api in made:
        api.disconnect()


class Told:
    """What the wrapper's order events told the bot."""

    def __init__(self, api: IBKRIBInsyncApi) -> None:
        self.uncertain: list[tuple[dict[str, Any], str]] = []
        self.resolved: list[tuple[dict[str, Any], Resolution]] = []
        api.orderUncertainEvent += lambda entry, request: self.uncertain.append(
            (dict(entry), request))
        api.orderResolvedEvent += lambda entry, outcome: self.resolved.append(
            (dict(entry), outcome))


def _aapl(lib: ModuleType) -> Any:
    return lib.Stock("AAPL", "SMART", "USD")


def _away(api: IBKRIBInsyncApi, gw: FakeGateway, loop: asyncio.AbstractEventLoop) -> None:
    """Keep the bot away after the coming drop: the gateway stops accepting connections."""
    run(loop, gw.stop_listening())


def _back(api: IBKRIBInsyncApi, gw: FakeGateway, loop: asyncio.AbstractEventLoop,
          count: int = 2) -> None:
    """Accept connections again and wait for the ``count``-th session."""
    run(loop, gw.start_listening())
    assert pump_until(api, lambda: api.connected and sessions(api) >= count)
    round_trip(api)


def test_order_whose_answer_is_lost_is_uncertain_then_filled_once(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop, lib: ModuleType,
) -> None:
    """Uncertain while away (told once), then Filled with its one fill and commission."""
    api = make_api()
    told = Told(api)
    assert api.connect()
    _away(api, gw, loop)
    gw.lose_next_order_ack()
    trade = api.place_order(_aapl(lib), lib.MarketOrder("BUY", 5, orderRef="bot-1"))
    key = str(trade.order.orderId)
    assert pump_until(api, lambda: not api.connected)
    assert api.orders[key]["status"] == "Uncertain"
    assert [(e["order_id"], e["status"], r) for e, r in told.uncertain] == [
        (trade.order.orderId, "Uncertain", "place")]
    assert api.book.uncertain == {key: "place"}
    _back(api, gw, loop)
    entry = api.orders[key]
    assert (entry["status"], entry["filled"], entry["remaining"]) == ("Filled", 5, 0)
    [execution] = entry["executions"]
    assert [c["execution_id"] for c in entry["commissions"]] == [execution["execution_id"]]
    [(resolved, outcome)] = told.resolved
    assert resolved["status"] == "Filled" and resolved["order_id"] == trade.order.orderId
    assert (outcome.status, outcome.found_by, outcome.applied) == ("Filled", "orderId", True)
    assert api.book.uncertain == {}
    assert len(gw.requests_named("placeOrder")) == 1


def test_order_that_never_reached_ib_is_not_received_and_placed_again_under_a_new_id(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop, lib: ModuleType,
) -> None:
    """NotReceived; the same id is refused; as a new order it goes out once, under a new id."""
    api = make_api()
    told = Told(api)
    assert api.connect()
    _away(api, gw, loop)
    gw.lose_next_order()
    order = lib.MarketOrder("BUY", 5, orderRef="bot-2")
    trade = api.place_order(_aapl(lib), order)
    lost_id = trade.order.orderId
    assert pump_until(api, lambda: not api.connected)
    gw.set_next_valid_id(1)  # the gateway never saw the order: its next id is lower
    _back(api, gw, loop)
    entry = api.orders[str(lost_id)]
    assert (entry["status"], entry["remaining"]) == ("NotReceived", 0)
    [(_, outcome)] = told.resolved
    assert (outcome.status, outcome.received) == ("NotReceived", False)
    with pytest.raises(OrderRejectedError, match="not received"):
        api.place_order(_aapl(lib), order)  # the same Order object: the same id
    assert api.next_order_id > lost_id
    order.orderId = 0
    again = api.place_order(_aapl(lib), order)
    assert again.order.orderId > lost_id
    assert pump_until(api, lambda: api.orders[str(again.order.orderId)]["status"] == "Filled")
    assert [o.order_ref for o in gw.orders.values()] == ["bot-2"]
    assert [int(r.fields[1]) for r in gw.requests_named("placeOrder")] == [again.order.orderId]


def test_cancel_and_order_while_away_are_refused_and_never_sent_later(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop, lib: ModuleType,
) -> None:
    """While disconnected, cancel_order and place_order raise; nothing is queued for later."""
    gw.fill_mode = "manual"
    api = make_api()
    assert api.connect()
    trade = api.place_order(_aapl(lib), lib.LimitOrder("BUY", 3, 140.0))
    key = str(trade.order.orderId)
    assert pump_until(api, lambda: api.orders[key]["status"] == "Submitted")
    _away(api, gw, loop)
    run(loop, gw.drop_clients())
    assert pump_until(api, lambda: not api.connected)
    with pytest.raises(OrderRejectedError, match="not connected"):
        api.cancel_order(trade.order.orderId)
    trade.order.totalQuantity = 9
    with pytest.raises(OrderRejectedError, match="not connected"):
        api.place_order(_aapl(lib), trade.order)
    _back(api, gw, loop)
    round_trip(api)
    assert gw.requests_named("cancelOrder") == []
    assert len(gw.requests_named("placeOrder")) == 1
    assert gw.orders[trade.order.orderId].total_quantity == 3
    assert api.orders[key]["status"] == "Submitted"


def test_read_only_session_leaves_the_order_uncertain_and_its_id_refused(
    make_api: Callable[..., IBKRIBInsyncApi], gw: FakeGateway,
    loop: asyncio.AbstractEventLoop, lib: ModuleType, caplog: pytest.LogCaptureFixture,
) -> None:
    """No order sync, no guess: Uncertain stays, with the reason logged; its id is refused."""
    caplog.set_level(logging.WARNING, logger="ibkr_connection")
    api = make_api()
    told = Told(api)
    assert api.connect()
    _away(api, gw, loop)
    gw.lose_next_order_ack()
    order = lib.MarketOrder("BUY", 5)
    trade = api.place_order(_aapl(lib), order)
    key = str(trade.order.orderId)
    assert pump_until(api, lambda: not api.connected)
    writable = api.manager.config
    api.manager.config = writable.replace(readonly=True)  # the next session syncs no orders
    _back(api, gw, loop)
    assert api.orders[key]["status"] == "Uncertain" and told.resolved == []
    assert any("stays Uncertain" in r.getMessage() and "read-only" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(OrderRejectedError, match="Uncertain"):
        api.place_order(_aapl(lib), order)
    api.manager.config = writable
    run(loop, gw.drop_clients())
    assert pump_until(api, lambda: sessions(api) >= 3 and api.orders[key]["status"] != "Uncertain")
    assert api.orders[key]["status"] == "Filled" and len(api.orders[key]["executions"]) == 1
    assert [o.status for _, o in told.resolved] == ["Filled"]
    assert len(gw.requests_named("placeOrder")) == 1
