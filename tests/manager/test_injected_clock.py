"""The heartbeat's probe deadline and wait_for's timeout run on the injected clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import InputKind
from ibkr_connection.simulator import FakeGateway

S = ConnectionState


async def _turns(n: int = 20) -> None:
    """Let the loop run ``n`` turns (socket I/O on loopback), with no wall-clock wait."""
    for _ in range(n):
        await asyncio.sleep(0)


async def _until(predicate: Any, what: str) -> None:
    """Run loop turns until ``predicate()``; a hang guard raises after many turns."""
    for _ in range(20_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_hung_gateway_is_detected_by_advancing_the_injected_clock() -> None:
    """Idle, probe and probe deadline all on the manual clock: heartbeat_missed, no wall wait."""
    clock = ManualClock()
    async with FakeGateway() as gw:
        manager = ConnectionManager(IB(), ConnectionConfig(port=gw.port, client_id=3),
                                    clock=clock)
        try:
            await manager.start(timeout=30)
            gw.stall()
            requests = len(gw.requests_named("reqCurrentTime"))
            # Quiet time passes on the manual clock only, a tenth at a time,
            # until the heartbeat's probe reaches the stalled gateway.
            while not (gw.connections and gw.connections[0].backlog):
                assert clock.monotonic() < 10, "no probe after 10 s of quiet"
                clock.advance(0.1)
                await _turns()
            sent = clock.monotonic()   # the probe went out in the last tenth
            assert sent >= 3.0         # not before heartbeat_idle (3 s) of quiet
            assert manager.state is S.CONNECTED
            assert len(gw.requests_named("reqCurrentTime")) == requests  # stalled: not read
            clock.advance(1.85)        # inside the probe's heartbeat_timeout (2 s)
            await _turns()
            assert manager.state is S.CONNECTED
            clock.advance(0.2)         # the probe's deadline passes
            await _until(lambda: manager.state is not S.CONNECTED, "the probe's deadline")
            last = manager.transcript[-1]
            assert (last.source, last.dest, last.trigger) == (
                S.CONNECTED, S.BACKOFF, InputKind.HEARTBEAT_MISSED)
        finally:
            await manager.stop()


async def test_wait_for_timeout_runs_on_the_injected_clock() -> None:
    """wait_for(timeout=5) raises when the manual clock passes 5 s, not before."""
    clock = ManualClock()
    async with FakeGateway() as gw:
        manager = ConnectionManager(IB(), ConnectionConfig(port=gw.port, client_id=4),
                                    clock=clock)
        try:
            await manager.start(timeout=30)
            waiter = asyncio.ensure_future(manager.wait_for(S.LOST, timeout=5.0))
            await _turns()
            clock.advance(4.9)
            await _turns()
            assert not waiter.done()
            clock.advance(0.2)
            await _turns()
            assert waiter.done()       # at once: no wall-clock timer behind it
            with pytest.raises(TimeoutError, match="still connected after 5"):
                await waiter
        finally:
            await manager.stop()
