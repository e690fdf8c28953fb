"""The session's socket reads at most ``socket_read_size`` bytes at a time (issue 21: memory).

asyncio's socket transport reads up to 256 KiB into a new buffer per read;
with glibc that keeps the month's main heap growing (benchmarks/README.md,
section 10). The manager gives each session's transport its read size once
the session is up. Real client, real sockets: the simulator writes a burst
larger than the read size at once, and the client's reads are counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from ibkr_connection import ConfigError, ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.simulator import FakeGateway, messages

from conftest import GUARD, on_live_session

#: One burst: 12,000 currentTime answers (nobody asked: both clients drop them
#: quietly), about 200 KB, written to the socket in one write.
ANSWERS = 12_000


def _burst() -> bytes:
    return messages.current_time(1_767_225_600) * ANSWERS


async def _read_sizes(gw: FakeGateway, manager: ConnectionManager) -> list[int]:
    """Write the burst to the manager's session; return the size of each read that took it."""
    ib = manager.ib
    sizes: list[int] = []

    def heard(data: bytes) -> None:
        sizes.append(len(data))

    ib.client.conn.hasData += heard
    try:
        burst = _burst()
        gw.clients[0].send_raw(burst)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GUARD
        while sum(sizes) < len(burst):
            assert loop.time() < deadline, f"read {sum(sizes)} of {len(burst)} bytes"
            await asyncio.sleep(0.001)
        assert sum(sizes) == len(burst)
    finally:
        ib.client.conn.hasData -= heard
    return sizes


async def test_a_session_reads_at_most_the_configured_size_at_a_time(
    gw: FakeGateway, make_manager: Callable[..., ConnectionManager]
) -> None:
    """A 200 KB burst reaches the client in reads of 64 KiB at most (the default)."""
    manager = make_manager()
    await manager.start(timeout=GUARD)
    sizes = await _read_sizes(gw, manager)
    assert max(sizes) <= 64 * 1024
    assert len(sizes) >= 4  # 200 KB cannot come in fewer reads of 64 KiB


async def test_the_next_session_gets_the_read_size_too(
    gw: FakeGateway, make_manager: Callable[..., ConnectionManager]
) -> None:
    """After a restart the new session's transport reads at most the configured size."""
    manager = make_manager(socket_read_size=16 * 1024)
    await manager.start(timeout=GUARD)
    first = manager.ib.client.conn.transport
    await gw.restart(0.2)
    await on_live_session(manager, ConnectionState.CONNECTED)
    assert manager.ib.client.conn.transport is not first
    sizes = await _read_sizes(gw, manager)
    assert max(sizes) <= 16 * 1024


async def test_none_leaves_the_client_s_own_read_size(
    gw: FakeGateway, make_manager: Callable[..., ConnectionManager]
) -> None:
    """socket_read_size=None: the transport keeps asyncio's own read size."""
    manager = make_manager(socket_read_size=None)
    await manager.start(timeout=GUARD)
    transport: Any = manager.ib.client.conn.transport
    assert transport.max_size == type(transport).max_size == 256 * 1024


@pytest.mark.parametrize("size", [0, 4095, 16 * 1024 * 1024 + 1, 65536.0, True, "64k"])
def test_a_read_size_out_of_range_is_refused_by_name(size: object) -> None:
    """socket_read_size outside 4 KiB..16 MiB (or not an int) names the field."""
    with pytest.raises(ConfigError) as caught:
        ConnectionConfig(socket_read_size=size)  # type: ignore[arg-type]
    assert caught.value.field == "socket_read_size"
    assert str(caught.value) == (
        "socket_read_size: must be a number of bytes from 4096 to 16777216, "
        f"or None, got {size!r}")
