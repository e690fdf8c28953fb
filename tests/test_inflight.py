"""Uncertain orders on their own: plain objects in, verdicts out, no socket and no event loop."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from ibkr_connection.book import OrderBook, OrderIds
from ibkr_connection.inflight import (
    Asked,
    GatewayRecord,
    InFlightOrders,
    Resolution,
    Unresolved,
)

WHEN = datetime(2024, 5, 6, 14, 30, tzinfo=timezone.utc)


def trade(order_id: int, *, client_id: int = 7, perm_id: int = 0, status: str = "Submitted",
          quantity: float = 5, ref: str = "", lmt: float = 140.0, symbol: str = "AAPL",
          action: str = "BUY", filled: float = 0, log: int = 1) -> Any:
    """A duck-typed ib_insync Trade (``log`` entries long)."""
    return SimpleNamespace(
        contract=SimpleNamespace(symbol=symbol, conId=265598),
        order=SimpleNamespace(orderId=order_id, clientId=client_id, permId=perm_id,
                              action=action, totalQuantity=quantity, orderType="LMT",
                              lmtPrice=lmt, auxPrice=0.0, orderRef=ref),
        orderStatus=SimpleNamespace(status=status, filled=filled, remaining=quantity - filled,
                                    permId=perm_id, clientId=client_id),
        log=[SimpleNamespace(status=status, message="")] * log,
    )


def completed(perm_id: int, *, status: str = "Cancelled", ref: str = "",
              quantity: float = 5) -> Any:
    """A completed order as the startup sync delivers it: a permId, no order or client id."""
    return trade(0, client_id=0, perm_id=perm_id, status=status, ref=ref, quantity=quantity)


def fill(exec_id: str, order_id: int, perm_id: int, *, client_id: int = 7,
         shares: float = 5) -> Any:
    """A duck-typed Fill with its commission report."""
    return SimpleNamespace(
        contract=SimpleNamespace(symbol="AAPL", conId=265598),
        execution=SimpleNamespace(execId=exec_id, orderId=order_id, clientId=client_id,
                                  permId=perm_id, shares=shares, price=150.0, time=WHEN),
        commissionReport=SimpleNamespace(execId=exec_id, commission=1.0, currency="USD",
                                         realizedPNL=0.0),
        time=WHEN)


def record(trades: list[Any], fills: list[Any] = (), *,  # type: ignore[assignment]
           client_id: int = 7, orders_synced: bool = True) -> GatewayRecord:
    return GatewayRecord(trades, fills, client_id=client_id, orders_synced=orders_synced)


MINE = OrderIds(7, 101, 0)
#: What the bot's order asks for: 5 at a limit of 140.
FIVE = Asked(5.0, 140.0, 0.0)


@pytest.mark.parametrize(("ids", "ref", "trades", "fills", "status", "found_by"), [
    # acknowledged before: its permId finds it
    (OrderIds(7, 101, 9001), "", [trade(101, perm_id=9001)], [], "Submitted", "permId"),
    # never acknowledged: its open order, by client id and order id
    (MINE, "", [trade(101, perm_id=9001)], [], "Submitted", "orderId"),
    # filled while away: the execution names (7, 101) and gives the permId
    (MINE, "", [completed(9001, status="Filled")], [fill("e1", 101, 9001)], "Filled",
     "orderId"),
    # cancelled while away, unfilled: only its orderRef names it
    (MINE, "r1", [completed(9001, ref="r1")], [], "Cancelled", "orderRef"),
    # never reached the gateway: nothing in the record could be it
    (MINE, "", [trade(102, perm_id=9002), completed(9003, quantity=9)], [], "NotReceived", ""),
    # another client's order 101 is not ours
    (MINE, "", [trade(101, client_id=3, perm_id=9001)], [], "NotReceived", ""),
    # an execution of another client's order 101 is not ours
    (MINE, "", [completed(9001, status="Filled")], [fill("e1", 101, 9001, client_id=3)],
     "NotReceived", ""),
])
def test_record_finds_the_order_or_concludes_not_received(
    ids: OrderIds, ref: str, trades: list[Any], fills: list[Any], status: str,
    found_by: str,
) -> None:
    """Found by permId, (client id, order id) or orderRef; else NotReceived."""
    outcome = record(trades, fills).resolve(ids, order_ref=ref, request="place", asked=FIVE,
                                            symbol="AAPL", action="BUY")
    assert isinstance(outcome, Resolution)
    assert (outcome.status, outcome.found_by) == (status, found_by)
    assert outcome.applied is (status != "NotReceived")
    assert outcome.received is (status != "NotReceived")


@pytest.mark.parametrize(("ids", "ref", "trades", "orders_synced", "client_id", "reason"), [
    (MINE, "", [], False, 7, "read-only"),
    (MINE, "", [], True, 8, "client 8"),
    (OrderIds(7, 101, 9001), "", [], True, 7, "acknowledged it (permId 9001)"),
    (MINE, "", [completed(9005)], True, 7, "could be this one"),
    (MINE, "r1", [completed(9005, ref="r1"), completed(9006, ref="r1")], True, 7,
     "several orders"),
])
def test_record_that_cannot_tell_leaves_the_order_uncertain(
    ids: OrderIds, ref: str, trades: list[Any], orders_synced: bool, client_id: int,
    reason: str,
) -> None:
    """Read-only, another client id, an acknowledged order gone, or a look-alike: Unresolved."""
    outcome = record(trades, client_id=client_id, orders_synced=orders_synced).resolve(
        ids, order_ref=ref, request="place", asked=FIVE, symbol="AAPL", action="BUY")
    assert isinstance(outcome, Unresolved)
    assert reason in outcome.reason


def test_a_look_alike_known_as_another_order_does_not_block() -> None:
    """A completed order whose permId belongs to another known order is not a candidate."""
    rec = record([completed(9005)])
    outcome = rec.resolve(MINE, order_ref="", request="place", asked=FIVE, symbol="AAPL",
                          action="BUY", claimed={9005})
    assert isinstance(outcome, Resolution) and outcome.status == "NotReceived"


@pytest.mark.parametrize(("request_kind", "gateway", "applied"), [
    ("cancel", trade(101, perm_id=9001, status="Cancelled"), True),
    ("cancel", trade(101, perm_id=9001, status="Submitted"), False),
    ("cancel", trade(101, perm_id=9001, status="Filled"), False),
    ("modify", trade(101, perm_id=9001, quantity=7), True),
    ("modify", trade(101, perm_id=9001, quantity=5), False),
    ("modify", trade(101, perm_id=9001, quantity=7, lmt=141.0), False),
])
def test_applied_tells_whether_the_request_took_effect(
    request_kind: str, gateway: Any, applied: bool,
) -> None:
    """A cancel applied if cancelled; a modify if quantity and prices show it."""
    asked_for = trade(101, perm_id=9001, quantity=7)
    outcome = record([gateway]).resolve(
        OrderIds(7, 101, 9001), order_ref="", request=request_kind,
        asked=Asked.of(asked_for.order), symbol="AAPL", action="BUY")
    assert isinstance(outcome, Resolution)
    assert outcome.applied is applied


def test_fills_of_the_order_are_given_once() -> None:
    """Executions the sync delivered twice are counted once, and only the order's own."""
    rec = record([completed(9001, status="Filled")],
                 [fill("e1", 101, 9001), fill("e1", 101, 9001), fill("e2", 101, 9001),
                  fill("e3", 102, 9002)])
    outcome = rec.resolve(MINE, order_ref="", request="place", asked=FIVE, symbol="AAPL",
                          action="BUY")
    assert isinstance(outcome, Resolution)
    assert [f.execution.execId for f in outcome.fills] == ["e1", "e2"]


# -- the tracker ------------------------------------------------------------------------


def test_unanswered_orders_become_uncertain_answered_and_done_ones_do_not() -> None:
    """At a session's end: no answer and not done -> uncertain; the rest is forgotten."""
    tracker = InFlightOrders()
    waiting, answered, done = trade(101, status="PendingSubmit"), trade(102), trade(103)
    for t in (waiting, answered, done):
        tracker.sent(t, "place")
    answered.log = [*answered.log, SimpleNamespace(status="Submitted", message="")]
    done.orderStatus.status = "Cancelled"  # e.g. cancelled before it was transmitted
    assert tracker.in_flight == [waiting]
    assert tracker.session_ended() == [waiting]
    assert tracker.uncertain == [waiting] and tracker.in_flight == []
    assert tracker.session_ended() == []  # told once


def test_a_new_order_modified_before_its_answer_stays_a_place() -> None:
    """Whether IB got the order at all is the question, whatever followed it."""
    tracker = InFlightOrders()
    order = trade(101, status="PendingSubmit")
    tracker.sent(order, "place")
    order.log = [*order.log, SimpleNamespace(status="PendingSubmit", message="Modify")]
    tracker.sent(order, "modify")
    tracker.session_ended()
    flight = tracker.flight(order)
    assert flight is not None and flight.request == "place"
    assert flight.asked.quantity == 5


def test_resolve_settles_what_it_can_and_keeps_the_rest() -> None:
    """Settled orders leave the tracker; an order of another client id stays."""
    tracker = InFlightOrders()
    mine, other = trade(101, status="PendingSubmit"), trade(55, client_id=9,
                                                            status="PendingSubmit")
    tracker.sent(mine, "place")
    tracker.sent(other, "place")
    tracker.session_ended()
    settled = tracker.resolve(record([trade(101, perm_id=9001)]))
    assert [(t, o.status) for t, o in settled] == [(mine, "Submitted")]
    assert tracker.uncertain == [other]


def test_has_uncertain_is_true_while_an_order_is_left_uncertain() -> None:
    """has_uncertain: False with orders only in flight, True once one is uncertain, then False."""
    tracker = InFlightOrders()
    mine = trade(101, status="PendingSubmit")
    tracker.sent(mine, "place")
    assert tracker.has_uncertain is False
    tracker.session_ended()
    assert tracker.has_uncertain is True
    tracker.resolve(record([trade(101, perm_id=9001)]))
    assert tracker.has_uncertain is False


def test_permids_of_answered_orders_tell_look_alikes_apart() -> None:
    """The bot's own cancelled order of the same shape does not block NotReceived."""
    tracker = InFlightOrders()
    earlier = trade(100, perm_id=9005)
    tracker.sent(earlier, "cancel")
    earlier.log = [*earlier.log, SimpleNamespace(status="Cancelled", message="")]
    earlier.orderStatus.status = "Cancelled"
    lost = trade(101, status="PendingSubmit")
    tracker.sent(lost, "place")
    tracker.session_ended()
    [(_, outcome)] = tracker.resolve(record([completed(9005)]))
    assert outcome.status == "NotReceived"


def test_answered_requests_are_pruned_as_orders_flow() -> None:
    """Thousands of answered orders do not pile up in the tracker."""
    tracker = InFlightOrders()
    for order_id in range(1, 5001):
        t = trade(order_id, perm_id=order_id + 10_000)
        tracker.sent(t, "place")
        t.log = [*t.log, SimpleNamespace(status="Submitted", message="")]
    assert len(tracker._flights) < 200


# -- the book ---------------------------------------------------------------------------


def test_book_keeps_uncertain_until_resolved_then_books_fills_once() -> None:
    """Statuses meanwhile do not end Uncertain; the resolution does, with each fill once."""
    book = OrderBook(client_id=7)
    placed = trade(101, status="PendingSubmit")
    key = book.on_order_placed(placed)
    assert book.mark_uncertain(placed, "place") == key
    assert book.orders[key]["status"] == "Uncertain" and book.uncertain == {key: "place"}
    gateway = trade(101, perm_id=9001, status="Filled", filled=5)
    executions = [fill("e1", 101, 9001, shares=2), fill("e2", 101, 9001, shares=3)]
    book.reconcile([gateway], executions[:1], after_reconnect=True)  # one booked already
    book.on_order_status(gateway)
    assert book.orders[key]["status"] == "Uncertain"
    outcome = Resolution("Filled", "place", "orderId", True, gateway, tuple(executions))
    assert book.resolve(placed, outcome) == key
    entry = book.orders[key]
    assert (entry["status"], entry["filled"], entry["remaining"], entry["perm_id"]) == (
        "Filled", 5, 0, 9001)
    assert [e["execution_id"] for e in entry["executions"]] == ["e1", "e2"]
    assert [c["execution_id"] for c in entry["commissions"]] == ["e1", "e2"]
    assert book.uncertain == {}


def test_book_not_received_is_terminal_and_an_unknown_trade_is_booked_whole() -> None:
    """An order placed around the book is booked when marked; NotReceived ends it."""
    book = OrderBook(client_id=7)
    direct = trade(101, status="PendingSubmit", ref="r1")
    key = book.mark_uncertain(direct, "place")
    assert key == "101" and book.find_by_ref("r1") == ["101"]
    book.resolve(direct, Resolution("NotReceived", "place", "", False))
    entry = book.orders[key]
    assert (entry["status"], entry["quantity"], entry["remaining"]) == ("NotReceived", 5, 0)
    assert book.mark_uncertain(direct, "place") is None  # terminal: never uncertain again
