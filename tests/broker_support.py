"""Shared fixtures and helpers for the broker wrapper tests (sync style, real simulator).

Test modules import it (``tests/`` is on ``sys.path``) and bind the fixtures
they use as module attributes (``gw = broker_support.gw``), since only
``tests/conftest.py`` is loaded automatically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from ib_insync import IB

from ibkr_connection import Config, ConnectionState, IBKRIBInsyncApi
from ibkr_connection.simulator import FakeGateway

from conftest import ACCOUNT


@dataclass
class Context:
    """What a scenario remembers between steps."""

    result: Any = None
    error: Exception | None = None
    trade: Any = None
    sessions_before: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop set as the current one, for sync clients."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    asyncio.set_event_loop(None)
    loop.close()


#: The simulator's highest server version for the broker suites. Their client is
#: ib_insync 0.9.86, which offers up to 176: against a 178 gateway (as against a
#: current TWS) it speaks 176. No decision of the wrapper depends on the version:
#: tests/test_broker_versions.py drives it at 157, 176 and with ib_async at 178.
SERVER_VERSION = 178


@pytest.fixture
def gw(loop: asyncio.AbstractEventLoop) -> Iterator[FakeGateway]:
    """A running gateway on a free port with one account and AAPL at 150."""
    gateway = FakeGateway(accounts=[ACCOUNT], next_order_id=100, prices={"AAPL": 150.0},
                          server_version=SERVER_VERSION)
    loop.run_until_complete(gateway.start())
    yield gateway
    loop.run_until_complete(gateway.stop())


@pytest.fixture
def make_api(gw: FakeGateway, loop: asyncio.AbstractEventLoop
             ) -> Iterator[Callable[..., IBKRIBInsyncApi]]:
    """Factory of wrappers pointed at ``gw``; all are disconnected afterwards."""
    made: list[IBKRIBInsyncApi] = []

    def _make(readonly: bool = False, client_id: int = 1, **options: Any) -> IBKRIBInsyncApi:
        config = Config(IBKR_HOST="127.0.0.1", IBKR_PORT=gw.port, IBKR_CLIENT_ID=client_id,
                        IBKR_READONLY=readonly)
        api = IBKRIBInsyncApi(config, IB(), connect_timeout=2.0, **options)
        made.append(api)
        return api

    yield _make
    for api in made:
        api.disconnect()


@pytest.fixture
def ctx() -> Context:
    """A blank scenario context."""
    return Context()


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """Run a simulator coroutine on the (idle) loop."""
    return loop.run_until_complete(coro)


def pump_until(api: IBKRIBInsyncApi, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Drive ``api.handle_callbacks`` until ``predicate()`` holds or ``timeout`` passes."""
    loop = asyncio.get_event_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        api.handle_callbacks(0.02)
    return True


def round_trip(api: IBKRIBInsyncApi, guard: float = 30.0) -> None:
    """Pump until a reqCurrentTime comes back: what the gateway sent before is handled.

    One socket carries everything in order both ways, so the answer also proves
    the gateway has acted on every request the client sent before it. ``guard``
    only stops a hung test.
    """
    answer = asyncio.ensure_future(api.ib.reqCurrentTimeAsync())
    assert pump_until(api, answer.done, timeout=guard), "hang guard: no reqCurrentTime answer"
    answer.result()


def sessions(api: IBKRIBInsyncApi) -> int:
    """Count the sessions the manager has opened so far."""
    return sum(
        1 for t in api.manager.transcript
        if t.source is ConnectionState.CONNECTING
        and t.dest in (ConnectionState.CONNECTED, ConnectionState.DEGRADED)
    )


__all__ = ["ACCOUNT", "Context", "ctx", "gw", "loop", "make_api", "pump_until", "round_trip",
           "run", "sessions"]
