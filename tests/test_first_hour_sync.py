"""First-hour defects of the sync wrapper, against the simulator over real sockets."""

from __future__ import annotations

import ib_async
import pytest
from ib_insync import MarketOrder

import broker_support
from broker_support import pump
from ibkr_connection import UsageError

loop = broker_support.loop
gw = broker_support.gw
make_api = broker_support.make_api


def test_a_contract_of_the_other_backend_is_refused_before_sending(make_api, gw) -> None:  # type: ignore[no-untyped-def]
    """An ib_async Stock on the ib_insync IB raises UsageError and sends nothing."""
    api = make_api()
    assert api.connect()
    with pytest.raises(UsageError, match="ib_async"):
        api.place_order(ib_async.Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 1))
    pump(api, 0.1)
    assert gw.requests_named("placeOrder") == []
    assert api.orders == {}
