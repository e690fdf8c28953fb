"""First-hour defects of the sync wrapper, against the simulator over real sockets."""

from __future__ import annotations

import logging

import ib_async
import pytest
from ib_insync import IB, MarketOrder

import broker_support
from broker_support import round_trip
from ibkr_connection import Config, IBKRIBInsyncApi, UsageError

loop = broker_support.loop
gw = broker_support.gw
make_api = broker_support.make_api


def test_a_contract_of_the_other_backend_is_refused_before_sending(make_api, gw) -> None:  # type: ignore[no-untyped-def]
    """An ib_async Stock on the ib_insync IB raises UsageError and sends nothing."""
    api = make_api()
    assert api.connect()
    with pytest.raises(UsageError, match="ib_async"):
        api.place_order(ib_async.Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 1))
    round_trip(api)
    assert gw.requests_named("placeOrder") == []
    assert api.orders == {}


def test_unknown_account_is_not_a_dead_gateway(gw, loop, caplog) -> None:  # type: ignore[no-untyped-def]
    """connect() with an account the login lacks: one handshake, failed, no "Retrying"."""
    caplog.set_level(logging.INFO)
    api = IBKRIBInsyncApi(Config(IBKR_PORT=gw.port, IBKR_CLIENT_ID=4, IBKR_ACCOUNT="DU0000001"),
                          IB(), connect_timeout=2.0)
    try:
        assert api.connect() is False
        assert [str(t) for t in api.manager.transcript] == [
            "disconnected -> connecting (connect)", "connecting -> failed (fatal_error)"]
        assert len(gw.requests_named("startApi")) == 1
        messages = [r.getMessage() for r in caplog.records]
        assert not any("Retrying" in m for m in messages)
        assert any(r.levelno == logging.ERROR and "not managed" in r.getMessage()
                   for r in caplog.records)
    finally:
        api.disconnect()
