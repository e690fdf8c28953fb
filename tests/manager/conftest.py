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


#: (client library, the simulator's highest server version): one wire per client
#: library, each at the highest version it offers against a current gateway
#: (ib_insync 0.9.86 speaks 176 to a 178 gateway, ib_async 178). No decision of the
#: manager depends on the server version: the layouts have their own suite
#: (tests/simulator/test_versions.py, test_message_layouts.py).
LIBRARIES = [("ib_insync", 178), ("ib_async", 178)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the suite's tests once per client library."""
    if "wire" in metafunc.fixturenames:
        metafunc.parametrize("wire", LIBRARIES, ids=[lib for lib, _ in LIBRARIES],
                             indirect=True)


@pytest.fixture
def wire(request: pytest.FixtureRequest) -> tuple[str, int]:
    """The client library and the simulator's highest server version of this run."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def ib_factory(wire: tuple[str, int]) -> Callable[[], Any]:
    """Makes IB objects of ib_insync, then of ib_async: the manager must work with both."""
    module = importlib.import_module(wire[0])
    return module.IB  # type: ignore[no-any-return]


@pytest.fixture
async def gw(wire: tuple[str, int]) -> AsyncIterator[FakeGateway]:
    """A running simulator with one account and AAPL at 150, speaking up to the wire's version."""
    async with FakeGateway(accounts=[ACCOUNT], next_order_id=100,
                           prices={"AAPL": 150.0}, server_version=wire[1]) as gateway:
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
