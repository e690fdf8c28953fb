"""A contract the gateway does not know fails its handle, on both client libraries."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest

from ibkr_connection import ConnectionManager, ConnectionState, SubscriptionError
from ibkr_connection.simulator import FakeGateway

from conftest import GUARD, round_trip

S = ConnectionState


async def test_an_unknown_symbol_raises_subscription_error_from_wait_ready(
    gw: FakeGateway, make_manager: Callable[..., ConnectionManager], wire: tuple[str, int],
) -> None:
    """Stock("NOSUCHSYM", "SMART", "USD"), as the README's Quick start has it: wait_ready()
    raises SubscriptionError (the gateway answers error 200), no market data is requested
    for it, and the session stays up; AAPL next to it streams."""
    stock = importlib.import_module(wire[0]).Stock
    manager = make_manager()
    await manager.start()
    failed: list[object] = []
    manager.subscriptionFailedEvent += lambda handle, error: failed.append(handle)
    unknown = manager.subscribe_market_data(stock("NOSUCHSYM", "SMART", "USD"))
    with pytest.raises(SubscriptionError, match="does not know this contract"):
        await unknown.wait_ready(timeout=GUARD)
    assert failed == [unknown] and isinstance(unknown.error, SubscriptionError)
    known = manager.subscribe_market_data(stock("AAPL", "SMART", "USD"))
    await known.wait_ready(timeout=GUARD)
    assert known.error is None and known.contract.conId
    await round_trip(manager.ib)   # a barrier: the gateway has read every request before it
    assert [r.fields for r in gw.requests_named("reqMktData") if "NOSUCHSYM" in r.fields] == []
    assert len([r for r in gw.requests_named("reqMktData") if "AAPL" in r.fields]) == 1
    assert manager.state is S.CONNECTED
