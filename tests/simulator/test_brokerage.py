"""The simulated brokerage on its own: no socket, no event loop."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from ibkr_connection.simulator.brokerage import Brokerage, FillMode, SimOrder


def make_book(fill_mode: FillMode = "manual") -> Brokerage:
    """A book with two accounts, AAPL at 100 and order ids from 10."""
    return Brokerage(
        ["DU1", "DU2"], 10, fill_mode=fill_mode, commission=1.25, prices={"AAPL": 100.0}
    )


def place(book: Brokerage, action: str, quantity: float, order_id: int | None = None) -> SimOrder:
    """Record a market order for AAPL in the first account."""
    order = SimOrder(
        order_id=book.next_valid_id if order_id is None else order_id,
        client_id=1,
        perm_id=book.next_perm_id(),
        account="DU1",
        instrument=book.find_instrument("AAPL"),
        action=action,
        total_quantity=quantity,
        order_type="MKT",
    )
    return book.add_order(order)


def test_position_average_cost_and_realized_pnl() -> None:
    """Buys average in; a sale through zero realizes PnL and flips the position."""
    book = make_book()
    book.fill(place(book, "BUY", 10).order_id, price=100.0)
    book.fill(place(book, "BUY", 10).order_id, price=110.0)
    pos = book.positions[("DU1", book.instruments["AAPL"].con_id)]
    assert (pos.quantity, pos.avg_cost, pos.realized_pnl) == (20, 105, 0)
    ex = book.fill(place(book, "SELL", 25).order_id, price=120.0)
    assert ex.realized_pnl == 300  # (120 - 105) * 20 closed
    assert (pos.quantity, pos.avg_cost) == (-5, 120)
    book.fill(place(book, "BUY", 5).order_id, price=100.0)
    assert (pos.quantity, pos.avg_cost, pos.realized_pnl) == (0, 0, 400)


def test_fill_books_execution_and_completes_order() -> None:
    """Partial fills accumulate; the last one marks the order Filled with a time."""
    book = make_book()
    order = place(book, "BUY", 10)
    first = book.fill(order.order_id, 4, price=100.0)
    second = book.fill(order.order_id, price=101.0)
    assert (first.cum_qty, second.cum_qty, second.shares) == (4, 10, 6)
    assert second.avg_price == pytest.approx(100.6)
    assert second.commission == 1.25
    assert first.exec_id != second.exec_id
    assert order.status == "Filled" and order.completed_time.endswith(" UTC")
    assert book.executions == [first, second]
    with pytest.raises(ValueError, match="Filled"):
        book.fill(order.order_id)
    with pytest.raises(KeyError):
        book.fill(999)


@pytest.mark.parametrize(
    ("mode", "quantity", "fills"),
    [
        ("immediate", 10, [10]),
        ("manual", 10, []),
        (("parts", 3), 10, [3, 3, 4]),
        (("parts", 4), 2, [2]),  # parts of 0 are skipped; the last takes what remains
        (("parts", 0), 5, [5]),
    ],
)
def test_fill_plan(mode: FillMode, quantity: float, fills: list[float]) -> None:
    """The fill mode decides the fills made right after an order is placed."""
    book = make_book(mode)
    order = place(book, "BUY", quantity)
    made = []
    for qty in book.fill_plan(order):
        made.append(qty)
        book.fill(order.order_id, qty)
    assert made == fills


def test_cancel_only_working_orders() -> None:
    """cancel reports whether it changed anything; unknown ids raise KeyError."""
    book = make_book()
    order = place(book, "BUY", 1)
    assert book.cancel(order.order_id) is True
    assert order.status == "Cancelled" and order.completed_time
    assert book.cancel(order.order_id) is False
    with pytest.raises(KeyError):
        book.cancel(999)


def test_next_valid_id_never_goes_back_on_orders() -> None:
    """Recording an order moves the next valid id past it, never backwards."""
    book = make_book()
    place(book, "BUY", 1, order_id=50)
    assert book.next_valid_id == 51
    place(book, "BUY", 1, order_id=20)
    assert book.next_valid_id == 51


def test_instrument_lookup() -> None:
    """By conId first, then symbol of the same type and currency; unknown ones are not made."""
    book = make_book()
    aapl = book.instruments["AAPL"]
    assert book.lookup(265598, "") is aapl
    assert book.lookup(0, "AAPL", sec_type="STK", currency="USD") is aapl
    assert book.lookup(0, "AAPL", sec_type="OPT") is None
    assert book.lookup(0, "AAPL", currency="EUR") is None
    assert book.lookup(0, "NOSUCHSYM") is None
    assert "NOSUCHSYM" not in book.instruments
    msft = book.lookup(272093, "")
    assert msft is not None and (msft.symbol, msft.last, msft.bid, msft.ask) == (
        "MSFT", 100.0, 99.99, 100.01)
    with pytest.raises(KeyError):
        book.find_instrument(123)
    moved = book.set_prices("AAPL", 150.0, bid=149.5)
    assert (moved.last, moved.bid, moved.ask) == (150.0, 149.5, 100.01)


def test_a_new_trading_day_forgets_the_days_before() -> None:
    """After midnight in New York the earlier days' fills and finished orders are gone."""
    book = make_book()
    now = [datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)]  # 10:00 in New York
    book.wall = lambda: now[0]
    filled = place(book, "BUY", 10)
    yesterday = book.fill(filled.order_id, price=100.0)
    cancelled = place(book, "BUY", 1)
    book.cancel(cancelled.order_id)
    working = place(book, "BUY", 5)
    now[0] = datetime(2026, 3, 3, 4, 59, 59, tzinfo=timezone.utc)  # 23:59:59 in New York
    assert book.forget_earlier_days() == 0
    assert book.executions == [yesterday]
    now[0] = datetime(2026, 3, 3, 5, 0, 1, tzinfo=timezone.utc)  # 00:00:01, the next day
    today = book.fill(working.order_id, 2, price=101.0)
    assert book.executions == [today]
    assert list(book.orders) == [working.order_id]
    pos = book.positions[("DU1", book.instruments["AAPL"].con_id)]
    assert pos.quantity == 12  # positions carry over
    assert book.forget_earlier_days() == 0  # once a day


def test_the_trading_day_follows_new_yorks_clock_change() -> None:
    """The day of the spring change is 23 hours long: the next one starts at 04:00 UTC."""
    book = make_book()
    now = [datetime(2026, 3, 8, 4, 59, tzinfo=timezone.utc)]  # 23:59 EST, March 7
    book.wall = lambda: now[0]
    order = place(book, "BUY", 1)
    book.fill(order.order_id, price=100.0)
    now[0] = datetime(2026, 3, 8, 5, 1, tzinfo=timezone.utc)  # 00:01 EST, March 8
    assert book.forget_earlier_days() == 2
    order = place(book, "BUY", 1)
    book.fill(order.order_id, price=100.0)
    now[0] = datetime(2026, 3, 9, 3, 59, tzinfo=timezone.utc)  # 23:59 EDT, March 8
    assert book.forget_earlier_days() == 0
    now[0] = datetime(2026, 3, 9, 4, 1, tzinfo=timezone.utc)  # 00:01 EDT, March 9
    assert book.forget_earlier_days() == 2


def test_a_book_without_a_day_zone_keeps_every_day() -> None:
    """day_zone=None: nothing is forgotten, whatever the clock says."""
    book = Brokerage(["DU1"], 1, fill_mode="manual", commission=1.0, day_zone=None)
    now = [datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)]
    book.wall = lambda: now[0]
    first = book.fill(place(book, "BUY", 1).order_id, price=100.0)
    now[0] = datetime(2026, 3, 5, 15, 0, tzinfo=timezone.utc)
    assert book.forget_earlier_days() == 0
    assert book.executions == [first] and len(book.orders) == 1
