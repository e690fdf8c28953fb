"""The order book on its own: plain objects in, entries out, no socket and no event loop."""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ibkr_connection import book as book_module
from ibkr_connection import positions as positions_module
from ibkr_connection.book import OrderBook

WHEN = datetime(2024, 5, 6, 14, 30, tzinfo=timezone.utc)


def trade(order_id: int, *, client_id: int = 1, perm_id: int = 0, action: str = "BUY",
          quantity: float = 10, status: str = "Submitted", filled: float = 0,
          order_ref: str = "", symbol: str = "AAPL") -> Any:
    """A duck-typed ib_insync Trade."""
    return SimpleNamespace(
        contract=SimpleNamespace(symbol=symbol, conId=265598),
        order=SimpleNamespace(orderId=order_id, clientId=client_id, permId=perm_id,
                              action=action, totalQuantity=quantity, orderType="LMT",
                              orderRef=order_ref),
        orderStatus=SimpleNamespace(status=status, filled=filled, remaining=quantity - filled,
                                    permId=perm_id, clientId=client_id),
    )


def fill(exec_id: str, order_id: int, *, perm_id: int, client_id: int = 1,
         shares: float = 10, price: float = 150.0, commission: float | None = None) -> Any:
    """A duck-typed ib_insync Fill; ``commission`` fills in its report."""
    return SimpleNamespace(
        contract=SimpleNamespace(symbol="AAPL", conId=265598),
        execution=SimpleNamespace(execId=exec_id, orderId=order_id, clientId=client_id,
                                  permId=perm_id, shares=shares, price=price, time=WHEN),
        commissionReport=report(exec_id if commission is not None else "", commission or 0.0),
        time=WHEN,
    )


def report(exec_id: str, commission: float = 1.0) -> Any:
    """A duck-typed ib_insync CommissionReport."""
    return SimpleNamespace(execId=exec_id, commission=commission, currency="USD",
                           realizedPNL=0.0)


def exec_ids(entry: dict[str, Any], what: str = "executions") -> list[str]:
    """The execution ids of an entry's executions (or commissions)."""
    return [item["execution_id"] for item in entry[what]]


def test_own_order_is_keyed_by_its_order_id() -> None:
    """The bot's order, its fill and its commission sit under str(orderId)."""
    book = OrderBook(client_id=1)
    placed = trade(100)
    assert book.on_order_placed(placed) == "100"
    assert book.on_order_status(trade(100, perm_id=9001)) == "100"
    assert book.on_execution(trade(100, perm_id=9001, status="Filled"),
                             fill("e1", 100, perm_id=9001)) is True
    assert book.on_commission(fill("e1", 100, perm_id=9001), report("e1")) is True
    entry = book.orders["100"]
    assert (entry["action"], entry["quantity"], entry["status"]) == ("BUY", 10, "Filled")
    assert (entry["filled"], entry["remaining"], entry["perm_id"]) == (10, 0, 9001)
    assert exec_ids(entry) == ["e1"] and exec_ids(entry, "commissions") == ["e1"]


def test_commission_before_its_execution_is_held_then_booked() -> None:
    """A commission whose execution is not booked yet waits for it, and is booked once."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100))
    early = fill("e1", 100, perm_id=9001)
    assert book.on_commission(early, report("e1", 1.25)) is False
    assert book.held_commissions == ("e1",)
    assert book.orders["100"]["commissions"] == []
    assert book.on_execution(trade(100, perm_id=9001), early) is True
    assert book.held_commissions == ()
    assert [c["commission"] for c in book.orders["100"]["commissions"]] == [1.25]
    assert book.on_commission(early, report("e1", 1.25)) is False
    assert len(book.orders["100"]["commissions"]) == 1


def test_execution_of_an_unknown_order_waits_for_its_details() -> None:
    """No entry is made from a bare execution; it is booked once its order is known."""
    book = OrderBook(client_id=1)
    bare = fill("e1", 100, perm_id=9001, shares=4)
    assert book.on_execution(None, bare) is False
    assert book.on_commission(bare, report("e1")) is False
    assert book.orders == {} and book.held_fills == ("e1",)
    assert book.on_order_status(trade(100, perm_id=9001, filled=4)) == "100"
    entry = book.orders["100"]
    assert (entry["action"], entry["quantity"], entry["filled"]) == ("BUY", 10, 4)
    assert exec_ids(entry) == ["e1"] and exec_ids(entry, "commissions") == ["e1"]
    assert book.held_fills == () and book.held_commissions == ()


@pytest.mark.parametrize(
    ("own", "other", "other_key"),
    [
        (0, 2, "2:100"),   # a client-0 session sees API client 2's order 100
        (1, 0, "0:100"),   # a master session (client 1) sees client 0's order 100
        (7, 8, "8:100"),
    ],
)
def test_same_order_id_of_another_client_is_another_order(
        own: int, other: int, other_key: str) -> None:
    """Client ids tell orders apart: each fill and commission lands on its own order."""
    book = OrderBook(client_id=own)
    book.on_order_placed(trade(100, client_id=own))
    book.on_order_status(trade(100, client_id=own, perm_id=9001))
    theirs = trade(100, client_id=other, perm_id=9002, action="SELL", quantity=3)
    assert book.on_order_status(theirs) == other_key
    book.on_execution(theirs, fill("e2", 100, client_id=other, perm_id=9002, shares=3))
    book.on_commission(fill("e2", 100, client_id=other, perm_id=9002), report("e2"))
    book.on_execution(None, fill("e1", 100, client_id=own, perm_id=9001))
    book.on_commission(fill("e1", 100, client_id=own, perm_id=9001), report("e1"))
    assert exec_ids(book.orders["100"]) == ["e1"]
    assert exec_ids(book.orders["100"], "commissions") == ["e1"]
    assert exec_ids(book.orders[other_key]) == ["e2"]
    assert exec_ids(book.orders[other_key], "commissions") == ["e2"]
    assert (book.orders[other_key]["client_id"], book.orders[other_key]["action"]) == (
        other, "SELL")


def test_execution_finds_its_order_by_perm_id_when_the_trade_has_no_order_id() -> None:
    """A completed order's trade carries only its permId; the fill still finds its entry."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100))
    book.on_order_status(trade(100, perm_id=9001))
    rebuilt = trade(0, client_id=0, perm_id=9001, status="Filled")
    assert book.on_execution(rebuilt, fill("e1", 100, perm_id=9001)) is True
    assert list(book.orders) == ["100"] and exec_ids(book.orders["100"]) == ["e1"]


def test_replayed_executions_and_commissions_are_counted_once() -> None:
    """IB re-sends executions after a reconnect; each id is booked once."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100, perm_id=9001))
    first = fill("e1", 100, perm_id=9001, shares=4, commission=1.0)
    assert book.on_execution(trade(100, perm_id=9001), first) is True
    assert book.on_execution(trade(100, perm_id=9001), first) is False
    done = book.reconcile([trade(100, perm_id=9001)], [first, first], after_reconnect=True)
    assert (done.fills, done.commissions) == (0, 1)
    done = book.reconcile([trade(100, perm_id=9001)], [first], after_reconnect=True)
    assert (done.fills, done.commissions) == (0, 0)
    entry = book.orders["100"]
    assert exec_ids(entry) == ["e1"] and exec_ids(entry, "commissions") == ["e1"]
    assert entry["filled"] == 4


def test_start_up_reconciliation_books_earlier_orders_whole() -> None:
    """A fresh book fed today's record shows each order with details, fills and commissions."""
    book = OrderBook(client_id=1)
    completed = trade(0, client_id=0, perm_id=9001, quantity=5, status="Filled")
    working = trade(101, perm_id=9002, quantity=10, filled=4)
    assert book.on_order_status(working) == "101"  # the sync's open order status
    fills = [fill("e1", 100, perm_id=9001, shares=2, commission=1.0),
             fill("e2", 100, perm_id=9001, shares=3, commission=1.0),
             fill("e3", 101, perm_id=9002, shares=4, commission=1.0)]
    done = book.reconcile([completed, working], fills, after_reconnect=False)
    assert (done.fills, done.commissions) == (3, 3)
    bought, left = book.orders["100"], book.orders["101"]
    assert (bought["action"], bought["quantity"], bought["status"]) == ("BUY", 5, "Filled")
    assert (bought["filled"], bought["remaining"], bought["client_id"]) == (5, 0, 1)
    assert exec_ids(bought) == ["e1", "e2"] == exec_ids(bought, "commissions")
    assert (left["status"], left["filled"], left["remaining"]) == ("Submitted", 4, 6)
    assert exec_ids(left) == ["e3"] == exec_ids(left, "commissions")


def test_reconciliation_takes_a_final_status_from_the_record() -> None:
    """An order cancelled while the bot was away shows Cancelled after the reconnect."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100))
    book.on_order_status(trade(100, perm_id=9001))
    record = [trade(0, client_id=0, perm_id=9001, status="Cancelled")]
    done = book.reconcile(record, [], after_reconnect=True)
    assert done.statuses == 1 and book.orders["100"]["status"] == "Cancelled"


def test_fill_without_any_order_details_stays_out_of_the_book() -> None:
    """A reconciled fill whose order the record lacks is held, not booked half."""
    book = OrderBook(client_id=1)
    done = book.reconcile([], [fill("e1", 100, perm_id=9001, commission=1.0)],
                          after_reconnect=False)
    assert (done.fills, done.commissions) == (0, 0)
    assert book.orders == {}
    assert book.held_fills == ("e1",) and book.held_commissions == ("e1",)


def test_entries_are_found_by_perm_id_client_and_order_id_and_order_ref() -> None:
    """find() tries the permId, then (client id, order id); find_by_ref lists by orderRef."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100, order_ref="mean-revert"))
    book.on_order_status(trade(100, perm_id=9001, order_ref="mean-revert"))
    book.on_order_status(trade(100, client_id=2, perm_id=9002, order_ref="mean-revert"))
    assert book.find(perm_id=9001) == "100"
    assert book.find(order_id=100) == "100"
    assert book.find(client_id=2, order_id=100) == "2:100"
    assert book.find(perm_id=9002, client_id=1, order_id=100) == "2:100"
    assert book.find(client_id=3, order_id=100) is None
    assert book.find_by_ref("mean-revert") == ["100", "2:100"]
    assert book.find_by_ref("other") == []


def test_order_placed_by_hand_in_tws_is_keyed_by_perm_id() -> None:
    """An order with no API order id (a manual TWS order) is keyed perm:<permId>."""
    book = OrderBook(client_id=0)
    manual = trade(0, client_id=0, perm_id=9005, action="SELL", quantity=1)
    assert book.on_order_status(manual) == "perm:9005"
    book.on_execution(manual, fill("e5", 0, client_id=0, perm_id=9005, shares=1))
    assert exec_ids(book.orders["perm:9005"]) == ["e5"]


def test_new_order_reusing_an_id_moves_the_earlier_one_to_its_perm_key() -> None:
    """After TWS resets its id sequence, the new order gets str(orderId); the old one perm:."""
    book = OrderBook(client_id=1)
    book.reconcile([trade(0, client_id=0, perm_id=9001, status="Filled")],
                   [fill("e1", 100, perm_id=9001, commission=1.0)], after_reconnect=False)
    assert book.on_order_placed(trade(100, action="SELL", quantity=2)) == "100"
    assert book.orders["100"]["action"] == "SELL" and book.orders["100"]["executions"] == []
    assert exec_ids(book.orders["perm:9001"]) == ["e1"]
    assert book.find(perm_id=9001) == "perm:9001"
    book.on_order_status(trade(100, perm_id=9009, action="SELL", quantity=2))
    book.on_execution(None, fill("e9", 100, perm_id=9009, shares=2))
    assert exec_ids(book.orders["100"]) == ["e9"]


@pytest.mark.parametrize("perm_id", [9001, 0], ids=["same order object", "new Order object"])
def test_placing_a_working_order_again_modifies_its_entry(perm_id: int) -> None:
    """A placement under the id of a working order is a modification: one entry."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100))
    book.on_order_status(trade(100, perm_id=9001))
    assert book.on_order_placed(trade(100, perm_id=perm_id, quantity=15)) == "100"
    assert list(book.orders) == ["100"]
    assert (book.orders["100"]["quantity"], book.orders["100"]["remaining"]) == (15, 15)
    assert book.orders["100"]["perm_id"] == 9001


def test_completed_orders_are_pruned_oldest_first_and_stay_gone() -> None:
    """Beyond the limit the oldest completed order leaves; its replays bring nothing back."""
    book = OrderBook(client_id=1, max_completed_orders=1)
    for order_id, perm_id in ((100, 9001), (101, 9002)):
        book.on_order_placed(trade(order_id))
        book.on_order_status(trade(order_id, perm_id=perm_id))
        book.on_execution(trade(order_id, perm_id=perm_id, status="Filled"),
                          fill(f"e{order_id}", order_id, perm_id=perm_id))
    assert list(book.orders) == ["101"]
    assert book.find(perm_id=9001) is None
    replay = fill("e100", 100, perm_id=9001, commission=1.0)
    book.reconcile([trade(0, client_id=0, perm_id=9001, status="Filled")], [replay],
                   after_reconnect=True)
    book.on_order_status(trade(100, perm_id=9001, status="Filled", filled=10))
    assert list(book.orders) == ["101"] and book.held_commissions == ()


@pytest.mark.parametrize(
    ("order_id", "booked"),
    [
        (100, True),    # the bot's order: recorded
        (7, False),     # a market data request id: not an order
    ],
)
def test_order_errors_are_recorded_on_the_bots_own_orders(order_id: int, booked: bool) -> None:
    """An IB error naming one of the bot's order ids goes on that entry."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100))
    book.on_order_status(trade(100, client_id=2, perm_id=9002))  # another client's 100
    key = book.on_order_error(order_id, 201, "Order rejected")
    assert (key == "100") is booked
    assert [e["code"] for e in book.orders["100"]["errors"]] == ([201] if booked else [])
    assert book.orders["2:100"]["errors"] == []


def test_positions_take_market_values_from_the_portfolio() -> None:
    """positionEvent sets quantity and cost; updatePortfolio adds price, value and PnL."""
    book = OrderBook()
    contract = SimpleNamespace(symbol="AAPL", conId=265598)
    book.on_portfolio(SimpleNamespace(
        account="DU1", contract=contract, position=10, averageCost=150.0, marketPrice=155.0,
        marketValue=1550.0, unrealizedPNL=50.0, realizedPNL=float("nan")))
    book.on_position(SimpleNamespace(account="DU1", contract=contract, position=6,
                                     avgCost=150.0))
    assert book.positions[("DU1", 265598)] == {
        "symbol": "AAPL", "quantity": 6, "avg_price": 150.0, "market_price": 155.0,
        "market_value": 1550.0, "unrealized_pnl": 50.0, "realized_pnl": 0.0,
        "account": "DU1",
    }


def test_snapshot_is_a_deep_copy() -> None:
    """Changing a snapshot leaves the book alone."""
    book = OrderBook(client_id=1)
    book.on_order_placed(trade(100))
    snap = book.snapshot()
    snap["orders"]["100"]["errors"].append("x")
    assert book.orders["100"]["errors"] == [] and set(snap) == {"orders", "positions"}


@pytest.mark.parametrize("module", [book_module, positions_module])
def test_the_book_modules_import_no_io(module: Any) -> None:
    """book.py and positions.py import no socket, event loop or IB client: they stay pure."""
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "copy", "logging", "math", "threading", "collections",
                        "collections.abc", "dataclasses", "typing",
                        "ibkr_connection.positions"}
