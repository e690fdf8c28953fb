"""The proxy tests: the simulator (tests/conftest.py ``gw``) upstream, the proxy in front."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ibkr_connection.proxy import ProxyServer
from ibkr_connection.simulator import FakeGateway

from conftest import ACCOUNT, FAST_POLICY, wait_until

#: The names this directory's modules import.
FAST = FAST_POLICY
__all__ = ["ACCOUNT", "FAST", "wait_until"]


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
def manager_port(proxy: ProxyServer) -> int:
    """``make_manager``'s managers connect through the proxy."""
    return proxy.port


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
