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


#: (client library, the simulator's highest server version) for tests on the ``gw``
#: fixture: each library at 157 and 176, and ib_async at 178 (ib_insync 0.9.86
#: offers up to 176). Tests without it run once per library, on the default.
WIRES = [("ib_insync", 157), ("ib_insync", 176), ("ib_async", 157), ("ib_async", 176),
         ("ib_async", 178)]
LIBRARIES = [("ib_insync", 178), ("ib_async", 178)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the suite's tests once per wire (or per library when they make their own gateway)."""
    if "wire" not in metafunc.fixturenames:
        return
    wires = WIRES if "gw" in metafunc.fixturenames else LIBRARIES
    ids = [f"{lib}-v{version}" if wires is WIRES else lib for lib, version in wires]
    metafunc.parametrize("wire", wires, ids=ids, indirect=True)


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
