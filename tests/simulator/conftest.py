"""The gateway simulator tests: plain clients on the simulator (``gw``: tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import pytest
from ib_insync import IB

from ibkr_connection.simulator import FakeGateway

from conftest import ACCOUNT, loop_factories, wait_until

__all__ = ["ACCOUNT"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """A module that sets ``VIRTUAL_TIME = True`` runs on virtual time (tests/conftest.py)."""
    return loop_factories(item)


@pytest.fixture
async def connect(
    gw: FakeGateway,
) -> AsyncIterator[Callable[..., Coroutine[Any, Any, IB]]]:
    """Factory connecting ib_insync clients to ``gw``; all are disconnected afterwards."""
    made: list[IB] = []

    async def _connect(client_id: int = 1, timeout: float = 2.0, **kwargs: Any) -> IB:
        ib = IB()
        made.append(ib)
        await ib.connectAsync("127.0.0.1", gw.port, clientId=client_id, timeout=timeout, **kwargs)
        return ib

    yield _connect
    for ib in made:
        ib.disconnect()
    await asyncio.sleep(0)


async def until(predicate: Callable[[], object], what: str, guard: float = 30.0) -> None:
    """Poll the loop until ``predicate()`` holds; raise if ``what`` never happens.

    The guard only stops a hung test: it is not the assertion, so it is generous.
    """
    await wait_until(predicate, guard, f"hang guard: {what}")
