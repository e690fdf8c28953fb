"""Fixtures for the proxy tests: the simulator as the upstream gateway, the proxy in front."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ibkr_connection import BackoffPolicy, ConnectionConfig, ConnectionManager, RecoveryPolicy
from ibkr_connection.proxy import ProxyServer
from ibkr_connection.simulator import FakeGateway

ACCOUNT = "DU1234567"

#: A fast policy: the defaults' shape with short costly delays.
FAST = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    """The upstream: a simulator on 127.0.0.1, port 0, with AAPL at 150."""
    async with FakeGateway(accounts=[ACCOUNT], next_order_id=100,
                           prices={"AAPL": 150.0}) as gateway:
        yield gateway


@pytest.fixture
async def proxy(gw: FakeGateway) -> AsyncIterator[ProxyServer]:
    """A proxy on 127.0.0.1, port 0, relaying to ``gw``; its lines go to ``proxy.lines``."""
    lines: list[str] = []
    async with ProxyServer("127.0.0.1", gw.port, notify=lines.append, inspect=True) as relay:
        relay.lines = lines  # type: ignore[attr-defined]
        yield relay


@pytest.fixture(params=["ib_insync", "ib_async"])
def ib_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """IB objects of ib_insync, then of ib_async."""
    return importlib.import_module(request.param).IB  # type: ignore[no-any-return]


@pytest.fixture
async def make_manager(
    proxy: ProxyServer, ib_factory: Callable[[], Any]
) -> AsyncIterator[Callable[..., ConnectionManager]]:
    """Managers connecting through ``proxy``; every one is stopped afterwards."""
    made: list[ConnectionManager] = []

    def make(**overrides: Any) -> ConnectionManager:
        fields: dict[str, Any] = {"port": proxy.port, "client_id": 7, "connect_timeout": 2.0,
                                  "policy": FAST}
        fields.update(overrides)
        manager = ConnectionManager(ib_factory(), ConnectionConfig(**fields))
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.005)


def frame(*fields: object) -> bytes:
    """One TWS frame of text fields."""
    body = "".join(f"{f}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


class RawClient:
    """A hand-driven TWS API client on a plain socket: it sends and reads raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def handshake(self, client_id: int, versions: str = "v157..176") -> int:
        """Send ``API\\0``, the version range and startApi; return the server version."""
        hello = versions.encode()
        self.writer.write(b"API\0" + struct.pack(">I", len(hello)) + hello)
        version = int((await self.read())[0])
        self.writer.write(frame(71, 2, client_id, ""))
        await self.writer.drain()
        return version

    async def read(self, timeout: float = 5.0) -> list[str]:
        """Read one frame's fields."""
        head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        body = await asyncio.wait_for(self.reader.readexactly(struct.unpack(">I", head)[0]),
                                      timeout)
        return body.decode().split("\0")[:-1]

    async def read_until(self, msg_id: str, timeout: float = 5.0) -> list[list[str]]:
        """Read frames up to and including the first with ``msg_id``; return them all."""
        seen = []
        while True:
            fields = await self.read(timeout)
            seen.append(fields)
            if fields[0] == msg_id:
                return seen

    async def read_error(self, code: int, timeout: float = 5.0) -> list[str]:
        """Read frames until an error message (id 4) with ``code``; return its fields."""
        while True:
            fields = await self.read(timeout)
            if fields[0] == "4" and fields[3] == str(code):
                return fields

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
