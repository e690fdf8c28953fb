"""The blocking twins connect()/disconnect(), as a script would use them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from ib_insync import IB

from ibkr_connection import (
    BackoffPolicy,
    ConnectFailedError,
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    RecoveryPolicy,
)
from ibkr_connection.simulator import FakeGateway


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A current, not running, event loop, as a sync script has."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def test_connect_and_disconnect_block(loop: asyncio.AbstractEventLoop) -> None:
    """connect() returns connected; disconnect() returns disconnected and frees the client id."""
    gw = FakeGateway()
    loop.run_until_complete(gw.start())
    try:
        manager = ConnectionManager(IB(), ConnectionConfig(port=gw.port, client_id=3))
        manager.connect()
        assert manager.state is ConnectionState.CONNECTED
        assert [c.client_id for c in gw.clients] == [3]
        manager.disconnect()
        assert manager.state is ConnectionState.STOPPED

        async def client_gone() -> None:  # the gateway saw the socket close
            while gw.clients:
                await asyncio.sleep(0.001)

        loop.run_until_complete(asyncio.wait_for(client_gone(), 30))  # a hang guard only
    finally:
        loop.run_until_complete(gw.stop())


def test_connect_raises_when_it_gives_up(loop: asyncio.AbstractEventLoop) -> None:
    """With nothing listening and max_attempts=2, connect() raises ConnectFailedError."""
    gw = FakeGateway()
    loop.run_until_complete(gw.start())
    port = gw.port
    loop.run_until_complete(gw.stop())
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=2))
    manager = ConnectionManager(IB(), ConnectionConfig(port=port, policy=policy))
    with pytest.raises(ConnectFailedError, match="after 2 attempt"):
        manager.connect()
    manager.disconnect()
