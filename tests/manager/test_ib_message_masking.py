"""IB's message text can name the account: the manager's log line of it masks the id."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from ibkr_connection import ConnectionManager, ConnectionState
from ibkr_connection.simulator import FakeGateway

from conftest import ACCOUNT, round_trip

S = ConnectionState


@pytest.mark.parametrize(("code", "text"), [
    # a code the manager knows (a farm notice), its line "IB 2104 (...): ..."
    (2104, f"Market data farm connection is OK:usfarm (account {ACCOUNT})"),
    # a code it does not know, request-less: "IB code 321 (not in the code table ...)"
    (321, f"Error validating request.-'bW' : cause - The account code {ACCOUNT} is invalid"),
], ids=["known-code", "unknown-code"])
async def test_an_account_in_an_ib_message_is_masked_in_every_record(
    code: int, text: str, gw: FakeGateway, make_manager: Callable[..., ConnectionManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An IB message naming DU1234567: the manager logs it as DU***567, and no record of the
    manager or its client library carries the raw id (mask_accounts is on by default)."""
    manager = make_manager()
    await manager.start()
    caplog.set_level(logging.DEBUG)
    assert await gw.send_error(code, message=text) == 1
    await round_trip(manager.ib)   # a barrier: the message has been handled and logged
    ours = [r for r in caplog.records if not r.name.startswith("ibkr_connection.simulator")]
    lines = [r.getMessage() for r in ours]
    assert [line for line in lines if ACCOUNT in line] == []
    assert any(line.startswith(("IB 2104 (", "IB code 321 (")) and "DU***567" in line
               for line in lines), lines
    assert manager.state is S.CONNECTED
