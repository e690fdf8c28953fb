"""Fixtures for ConnectionManager tests against the gateway simulator."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ibkr_connection import BackoffPolicy, ConnectionConfig, ConnectionManager, RecoveryPolicy
from ibkr_connection.simulator import FakeGateway

ACCOUNT = "DU1234567"

#: A fast policy for tests: same shape as the defaults, shorter costly delays.
FAST = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))


@pytest.fixture(params=["ib_insync", "ib_async"])
def ib_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Makes IB objects of ib_insync, then of ib_async: the manager must work with both."""
    module = importlib.import_module(request.param)
    return module.IB  # type: ignore[no-any-return]


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    """A running simulator with one account and AAPL at 150."""
    async with FakeGateway(accounts=[ACCOUNT], next_order_id=100,
                           prices={"AAPL": 150.0}) as gateway:
        yield gateway


@pytest.fixture
async def make_manager(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> AsyncIterator[Callable[..., ConnectionManager]]:
    """Factory for managers on ``gw``; every one is stopped afterwards."""
    made: list[ConnectionManager] = []

    def make(**overrides: Any) -> ConnectionManager:
        fields: dict[str, Any] = {"port": gw.port, "client_id": 7, "connect_timeout": 2.0,
                                  "policy": FAST}
        fields.update(overrides)
        manager = ConnectionManager(ib_factory(), ConnectionConfig(**fields))
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.stop()
