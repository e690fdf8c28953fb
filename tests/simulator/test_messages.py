"""Message encoders: the exact bytes of the simpler messages, written out at version 157."""

from __future__ import annotations

import struct
from datetime import datetime, timezone

import pytest

from ibkr_connection.simulator import messages
from ibkr_connection.simulator.brokerage import Instrument, SimOrder, SimPosition
from ibkr_connection.wire import protocol

AAPL = Instrument("AAPL", 265598)
AAPL_FIELDS = "265598\0AAPL\0STK\0\0" "0\0\0\0"


def frame(text: str) -> bytes:
    """Length-prefix a payload written out as text."""
    body = text.encode()
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    ("encoded", "payload"),
    [
        (protocol.error(-1, 1100, "lost", version=157), "4\0" "2\0" "-1\0" "1100\0" "lost\0"),
        (protocol.error(7, 200, "no def", version=157), "4\0" "2\0" "7\0" "200\0" "no def\0"),
        # from 166 on an error ends with advancedOrderRejectJson (empty unless a reject)
        (protocol.error(-1, 1100, "lost", version=166), "4\0" "2\0" "-1\0" "1100\0" "lost\0" "\0"),
        (
            protocol.error(7, 201, "no", version=178, advanced_reject_json='{"a":1}'),
            "4\0" "2\0" "7\0" "201\0" "no\0" '{"a":1}\0',
        ),
        (messages.managed_accounts(["DU1", "DU2"]), "15\0" "1\0" "DU1,DU2\0"),
        (messages.next_valid_id(42), "9\0" "1\0" "42\0"),
        (messages.current_time(1700000000), "49\0" "1\0" "1700000000\0"),
        (
            messages.server_version(157, datetime(2024, 3, 5, 14, 30, 15, tzinfo=timezone.utc)),
            "157\0" "20240305 14:30:15 UTC\0",
        ),
        (messages.position_end(), "62\0" "1\0"),
        (messages.open_order_end(), "53\0" "1\0"),
        (messages.completed_orders_end(), "102\0"),
        (messages.exec_details_end(5), "55\0" "1\0" "5\0"),
        (messages.contract_details_end(5), "52\0" "1\0" "5\0"),
        (messages.position_multi_end(5), "72\0" "1\0" "5\0"),
        (messages.account_summary_end(5), "64\0" "1\0" "5\0"),
        (messages.account_update_multi_end(5), "74\0" "1\0" "5\0"),
        (messages.account_download_end("DU1"), "54\0" "1\0" "DU1\0"),
        (messages.account_update_time("14:30"), "8\0" "1\0" "14:30\0"),
        (
            messages.account_value("NetLiquidation", "1000.00", "USD", "DU1"),
            "6\0" "2\0" "NetLiquidation\0" "1000.00\0" "USD\0" "DU1\0",
        ),
        (
            messages.account_summary(5, "DU1", "BuyingPower", "4000.00", "USD"),
            "63\0" "1\0" "5\0" "DU1\0" "BuyingPower\0" "4000.00\0" "USD\0",
        ),
        (
            messages.account_update_multi(5, "DU1", "", "AccountType", "INDIVIDUAL", ""),
            "73\0" "1\0" "5\0" "DU1\0" "\0" "AccountType\0" "INDIVIDUAL\0" "\0",
        ),
        (messages.market_data_type(5, 1), "58\0" "1\0" "5\0" "1\0"),
        (messages.tick_price(5, 4, 101.25, 100), "1\0" "6\0" "5\0" "4\0" "101.25\0" "100\0" "0\0"),
        (messages.tick_size(5, 8, 1000), "2\0" "6\0" "5\0" "8\0" "1000\0"),
        (messages.tick_snapshot_end(5), "57\0" "1\0" "5\0"),
    ],
)
def test_simple_message_bytes(encoded: bytes, payload: str) -> None:
    """Each encoder frames its fields in TWS order, version field included."""
    assert encoded == frame(payload)


def test_position_and_portfolio_bytes() -> None:
    """position carries the listing-agnostic contract; updatePortfolio the primary exchange."""
    pos = SimPosition("DU1", AAPL, quantity=10.0, avg_cost=150.5)
    assert messages.position(pos) == frame(
        "61\0" "3\0" "DU1\0" + AAPL_FIELDS + "SMART\0USD\0AAPL\0AAPL\0" "10\0" "150.5\0"
    )
    # valued at the last price, 100: value 1000, unrealized (100 - 150.5) * 10
    assert messages.portfolio(pos) == frame(
        "7\0" "8\0" + AAPL_FIELDS + "NASDAQ\0USD\0AAPL\0AAPL\0"
        "10\0" "100\0" "1000\0" "150.5\0" "-505\0" "0\0" "DU1\0"
    )


def test_order_status_bytes() -> None:
    """orderStatus: no version field at server version 157, parentId 0, mktCapPrice 0."""
    order = SimOrder(7, 3, 1000001, "DU1", AAPL, "BUY", 10.0, "LMT", lmt_price=99.5, filled=4.0)
    assert messages.order_status(order) == frame(
        "3\0" "7\0" "Submitted\0" "4\0" "6\0" "0\0" "1000001\0" "0\0" "0\0" "3\0" "\0" "0\0"
    )


@pytest.mark.parametrize(
    ("action", "side"), [("BUY", "BOT"), ("buy", "BOT"), ("SELL", "SLD"), ("SSHORT", "SLD")]
)
def test_exec_side(action: str, side: str) -> None:
    """Executions report BOT for buys and SLD for everything else."""
    assert messages.exec_side(action) == side


def test_instrument_contract_fields_match_encoder() -> None:
    """Instrument.contract_fields still answers, with the encoders' layout."""
    fut = Instrument("ES", 11004968, sec_type="FUT", exchange="CME", primary_exchange="CME")
    expected = [11004968, "ES", "FUT", "", 0.0, "", "", "CME", "USD", "ES", ""]
    assert messages.contract_fields(fut) == expected
