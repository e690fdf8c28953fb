"""Orders caught by a dropped session, at the manager (``manager.ib.placeOrder``), on both clients.

Each test drives a real client over loopback sockets against the simulator,
whose order faults lose a request on its way in, book it but lose its answer,
or drop the socket right after answering it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from ibkr_connection import ConnectionManager, ConnectionState
from ibkr_connection.inflight import Resolution
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.simulator import FakeGateway

from conftest import round_trip

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock
#: (``LoopClock``): deadlines, backoffs and held syncs cost no wall clock.
VIRTUAL_TIME = True
Make = Callable[..., ConnectionManager]


def _lib(manager: ConnectionManager) -> Any:
    """The client library of the manager's IB object (ib_insync or ib_async)."""
    return importlib.import_module(type(manager.ib).__module__.split(".")[0])


def _limit(manager: ConnectionManager, quantity: float = 5, price: float = 140.0,
           ref: str = "") -> tuple[Any, Any]:
    """An AAPL contract and a limit buy, from the manager's own client library."""
    lib = _lib(manager)
    return lib.Stock("AAPL", "SMART", "USD"), lib.LimitOrder("BUY", quantity, price,
                                                             orderRef=ref)


async def _until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll until ``predicate()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.005)


class Recorder:
    """Records the manager's order events (eventkit swallows assertion errors in handlers)."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.uncertain: list[list[Any]] = []
        self.resolved: list[tuple[Any, Resolution]] = []
        self.sequence: list[str] = []
        manager.ordersUncertainEvent += self._on_uncertain
        manager.orderResolvedEvent += self._on_resolved
        manager.stateChangeEvent += self._on_state

    def _on_uncertain(self, trades: list[Any]) -> None:
        self.uncertain.append(list(trades))
        self.sequence.append("uncertain")

    def _on_resolved(self, trade: Any, outcome: Resolution) -> None:
        self.resolved.append((trade, outcome))
        self.sequence.append("resolved")

    def _on_state(self, transition: Any) -> None:
        self.sequence.append(transition.dest.value)


def _received(gw: FakeGateway, name: str, order_id: int) -> int:
    """How many ``name`` requests for ``order_id`` the gateway received (lost ones excluded)."""
    return sum(1 for r in gw.requests_named(name) if int(r.fields[1 if name == "placeOrder"
                                                                    else 2]) == order_id)


async def _connected(make_manager: Make, gw: FakeGateway, **overrides: Any
                     ) -> tuple[ConnectionManager, Recorder]:
    gw.fill_mode = "manual"
    manager = make_manager(**overrides)
    recorder = Recorder(manager)
    await manager.start(timeout=5)
    return manager, recorder


async def _sessions(manager: ConnectionManager, count: int) -> None:
    """Wait until the manager has opened ``count`` sessions and is connected."""
    await _until(lambda: manager.state is S.CONNECTED and sum(
        1 for t in manager.transcript
        if t.source is S.CONNECTING and t.dest is S.CONNECTED) >= count,
        what=f"session {count}")


async def test_order_whose_answer_is_lost_is_uncertain_then_confirmed(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """The gateway books the order but the drop eats its answer: Uncertain, then Submitted."""
    manager, events = await _connected(make_manager, gw)
    gw.lose_next_order_ack()
    trade = manager.ib.placeOrder(*_limit(manager, ref="ack-lost"))
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    assert events.uncertain == [[trade]]
    assert manager.in_flight.uncertain == [trade]
    await _sessions(manager, 2)
    [(resolved, outcome)] = events.resolved
    assert resolved is trade
    assert (outcome.status, outcome.found_by, outcome.request, outcome.applied) == (
        "Submitted", "orderId", "place", True)
    assert outcome.trade is not trade and outcome.trade.order.orderRef == "ack-lost"
    assert outcome.trade.orderStatus.status == "Submitted"
    assert manager.in_flight.uncertain == []
    assert _received(gw, "placeOrder", trade.order.orderId) == 1
    # Told before the move out of the session, resolved after the move into the next one.
    assert events.sequence == ["connecting", "connected", "uncertain", "backoff", "connecting",
                               "connected", "resolved"]


async def test_order_lost_on_its_way_in_is_not_received_and_its_id_never_reused(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """The gateway never got the order: NotReceived, and the next order takes a higher id."""
    manager, events = await _connected(make_manager, gw)
    await gw.stop_listening()
    gw.lose_next_order()
    trade = manager.ib.placeOrder(*_limit(manager, ref="lost"))
    lost_id = trade.order.orderId
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    gw.set_next_valid_id(1)  # the gateway's next valid id is far below the lost order's
    await gw.start_listening()
    await _sessions(manager, 2)
    [(resolved, outcome)] = events.resolved
    assert resolved is trade
    assert (outcome.status, outcome.found_by, outcome.applied, outcome.received) == (
        "NotReceived", "", False, False)
    assert outcome.trade is None and outcome.fills == ()
    assert [int(r.fields[1]) for r in gw.lost_requests] == [lost_id]
    assert gw.requests_named("placeOrder") == [] and lost_id not in gw.orders
    assert manager.order_id_high_water > lost_id
    again = manager.ib.placeOrder(*_limit(manager, ref="lost"))
    assert again.order.orderId > lost_id
    await _until(lambda: again.orderStatus.status == "Submitted", what="placed again")
    assert [o.order_ref for o in gw.orders.values()] == ["lost"]


@pytest.mark.parametrize(("away", "status", "fills"), [
    ("fill", "Filled", 1),
    ("cancel", "Cancelled", 0),
])
async def test_order_done_while_away_takes_the_gateways_outcome(
    make_manager: Make, gw: FakeGateway, away: str, status: str, fills: int,
) -> None:
    """Answer lost, then filled (or cancelled) while the bot is away: that outcome, fills once."""
    manager, events = await _connected(make_manager, gw)
    await gw.stop_listening()
    gw.lose_next_order_ack()
    trade = manager.ib.placeOrder(*_limit(manager, ref=f"away-{away}"))
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    order_id = trade.order.orderId
    if away == "fill":
        execution = gw.fill_order(order_id)
    else:
        gw.cancel_order(order_id)
    await gw.start_listening()
    await _sessions(manager, 2)
    [(_, outcome)] = events.resolved
    assert (outcome.status, outcome.request, outcome.applied) == (status, "place", True)
    # An unfilled cancelled order is named by its orderRef (completed orders carry no
    # order id); a filled one by its execution.
    assert outcome.found_by == ("orderId" if away == "fill" else "orderRef")
    assert len(outcome.fills) == fills
    if fills:
        [fill] = outcome.fills
        assert fill.execution.execId == execution.exec_id
        assert fill.commissionReport.commission == 1.0
    assert _received(gw, "placeOrder", order_id) == 1


async def test_order_answered_just_before_the_drop_is_not_uncertain(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """The gateway answers, then the socket drops: the order's status is IB's, nothing to settle."""
    manager, events = await _connected(make_manager, gw)
    gw.drop_after_next_order()
    trade = manager.ib.placeOrder(*_limit(manager))
    await _until(lambda: manager.state is not S.CONNECTED, what="the drop")
    assert trade.orderStatus.status == "Submitted"
    await _sessions(manager, 2)
    await round_trip(manager.ib)
    assert events.uncertain == [] and events.resolved == []
    assert _received(gw, "placeOrder", trade.order.orderId) == 1


@pytest.mark.parametrize(("request_kind", "fault", "status", "applied"), [
    ("cancel", "lost", "Submitted", False),
    ("cancel", "ack_lost", "Cancelled", True),
    ("modify", "lost", "Submitted", False),
    ("modify", "ack_lost", "Submitted", True),
])
async def test_unanswered_cancel_or_modify_is_settled_by_the_gateways_record(
    make_manager: Make, gw: FakeGateway, request_kind: str, fault: str, status: str,
    applied: bool,
) -> None:
    """A cancel or modify caught by the drop: the order's status and whether it took effect."""
    manager, events = await _connected(make_manager, gw)
    contract, order = _limit(manager, quantity=5)
    trade = manager.ib.placeOrder(contract, order)
    await _until(lambda: trade.orderStatus.status == "Submitted", what="acknowledged")
    wire = "cancelOrder" if request_kind == "cancel" else "placeOrder"
    if fault == "lost":
        gw.lose_next_order(wire)
    else:
        gw.lose_next_order_ack(wire)
    if request_kind == "cancel":
        manager.ib.cancelOrder(trade.order)
    else:
        order.totalQuantity = 7
        manager.ib.placeOrder(contract, order)
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    assert events.uncertain == [[trade]]
    await _sessions(manager, 2)
    [(resolved, outcome)] = events.resolved
    assert resolved is trade
    assert (outcome.status, outcome.request, outcome.found_by, outcome.applied) == (
        status, request_kind, "permId", applied)
    sim = gw.orders[trade.order.orderId]
    assert sim.total_quantity == (7 if request_kind == "modify" and applied else 5)
    # The place itself (modify: one placeOrder more if it arrived), each request at most once.
    arrived = 0 if fault == "lost" else 1
    assert _received(gw, wire, trade.order.orderId) == (
        1 + arrived if request_kind == "modify" else arrived)


async def test_cancel_or_modify_while_away_is_refused_never_queued(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """While the socket is down the client refuses a cancel or a modify; none is sent later."""
    manager, events = await _connected(make_manager, gw)
    contract, order = _limit(manager)
    trade = manager.ib.placeOrder(contract, order)
    await _until(lambda: trade.orderStatus.status == "Submitted", what="acknowledged")
    await gw.stop_listening()
    await gw.drop_clients()
    await _until(lambda: manager.state is S.BACKOFF, what="backoff")
    with pytest.raises(ConnectionError):
        manager.ib.cancelOrder(trade.order)
    order.totalQuantity = 9
    with pytest.raises(ConnectionError):
        manager.ib.placeOrder(contract, order)
    await gw.start_listening()
    await _sessions(manager, 2)
    await round_trip(manager.ib)
    assert gw.requests_named("cancelOrder") == []
    assert _received(gw, "placeOrder", trade.order.orderId) == 1
    assert gw.orders[trade.order.orderId].total_quantity == 5
    assert events.uncertain == [] and events.resolved == []


async def test_read_only_session_cannot_settle_and_says_why(
    make_manager: Make, gw: FakeGateway, caplog: pytest.LogCaptureFixture,
) -> None:
    """A read-only session syncs no orders: it stays uncertain, logged; a full session settles."""
    caplog.set_level(logging.WARNING, logger="ibkr_connection")
    manager, events = await _connected(make_manager, gw)
    await gw.stop_listening()
    gw.lose_next_order_ack()
    trade = manager.ib.placeOrder(*_limit(manager, ref="ro"))
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    writable = manager.config
    manager.config = writable.replace(readonly=True)  # the next sessions are read-only
    await gw.start_listening()
    await _sessions(manager, 2)
    assert gw.requests_named("reqOpenOrders") and len(gw.requests_named("reqOpenOrders")) == 1
    assert events.resolved == [] and manager.in_flight.uncertain == [trade]
    assert any("stays Uncertain" in r.getMessage() and "read-only" in r.getMessage()
               for r in caplog.records)
    manager.config = writable
    await gw.drop_clients()
    await _sessions(manager, 3)
    [(resolved, outcome)] = events.resolved
    assert resolved is trade and outcome.status == "Submitted"
    assert manager.in_flight.uncertain == []


async def test_session_of_another_client_id_cannot_conclude_not_received(
    make_manager: Make, gw: FakeGateway, caplog: pytest.LogCaptureFixture,
) -> None:
    """Back on a fallback client id, the sync lists other open orders: the order stays uncertain."""
    caplog.set_level(logging.WARNING, logger="ibkr_connection")
    manager, events = await _connected(make_manager, gw, fallback_client_ids=[8])
    gw.lose_next_order_ack()
    trade = manager.ib.placeOrder(*_limit(manager, ref="other-id"))
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    manager.feed(Input(InputKind.DISCONNECT, message="test: hold still"))
    await _until(lambda: not gw.connections, what="socket closed")
    squatter = _lib(manager).IB()
    await squatter.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=2)  # 7 is taken
    manager.feed(Input(InputKind.CONNECT, message="test: connect again"))
    try:
        await _until(lambda: manager.state is S.CONNECTED, timeout=8, what="on client 8")
        assert manager.machine.client_id == 8
        assert events.resolved == [] and manager.in_flight.uncertain == [trade]
        assert any("stays Uncertain" in r.getMessage() and "client 8" in r.getMessage()
                   for r in caplog.records)
    finally:
        squatter.disconnect()
    assert _received(gw, "placeOrder", trade.order.orderId) == 1


async def test_order_sent_into_a_hang_the_client_gives_up_on_is_not_received(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """The client closes a hung session itself: its stale trade is no stand-in for the gateway."""
    manager, events = await _connected(make_manager, gw, heartbeat_idle=0.2,
                                       heartbeat_timeout=0.2)
    gw.stall()  # the order's bytes wait unread, and go nowhere once the socket closes
    trade = manager.ib.placeOrder(*_limit(manager, ref="into-a-hang"))
    await _until(lambda: events.uncertain, what="ordersUncertainEvent")
    assert [t.trigger.value for t in manager.transcript][-1] == "heartbeat_missed"
    # The client closed the socket; once the gateway has seen the close, the
    # order's unread bytes have nowhere to go.
    await _until(lambda: not gw.connections, what="the gateway saw the close")
    gw.unstall()
    await _sessions(manager, 2)
    [(resolved, outcome)] = events.resolved
    assert resolved is trade and outcome.status == "NotReceived"
    assert gw.requests_named("placeOrder") == [] and gw.orders == {}


async def test_order_filled_as_the_bot_disconnects_is_found_filled(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """The bot closes the socket right after sending: the gateway filled it; that is the outcome."""
    manager, events = await _connected(make_manager, gw)
    gw.fill_mode = "immediate"
    trade = manager.ib.placeOrder(*_limit(manager, ref="as-we-leave"))
    manager.feed(Input(InputKind.DISCONNECT, message="test: log off at once"))
    assert events.uncertain == [[trade]]
    await _until(lambda: trade.order.orderId in gw.orders and not gw.connections,
                 what="the gateway booked it")
    manager.feed(Input(InputKind.CONNECT, message="test: log on again"))
    await _sessions(manager, 2)
    [(resolved, outcome)] = events.resolved
    assert resolved is trade
    assert (outcome.status, outcome.found_by, len(outcome.fills)) == ("Filled", "orderId", 1)
    assert outcome.trade is not trade
    assert _received(gw, "placeOrder", trade.order.orderId) == 1
