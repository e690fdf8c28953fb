"""The heartbeat probe shares the client's one pending reqCurrentTime with the bot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.clock import ManualClock
from ibkr_connection.simulator import FakeGateway

from conftest import GUARD, round_trip

S = ConnectionState


async def _until(predicate: Callable[[], object], what: str) -> None:
    """Run loop turns (socket I/O on loopback) until ``predicate()``; a hang guard only."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {GUARD} s: {what}")
        await asyncio.sleep(0)


async def _quiet_until_a_probe(clock: ManualClock, conn: Any, within: float = 10.0) -> None:
    """Let quiet time pass on the manual clock, a tenth at a time, until a probe is on the
    wire (buffered by the stalled gateway); fail after ``within`` seconds of it."""
    until = clock.monotonic() + within
    while not conn.backlog:
        assert clock.monotonic() < until, f"no probe after {within:g} s of quiet"
        clock.advance(0.1)
        await asyncio.sleep(0)


async def test_a_bot_asking_the_time_during_a_probe_is_no_heartbeat_miss(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """The bot's reqCurrentTime replaces the probe's pending one and takes its answer; the
    gateway answered, so the session stays up: no heartbeat_missed, no reconnect."""
    clock = ManualClock()
    manager = ConnectionManager(ib_factory(), ConnectionConfig(port=gw.port, client_id=7),
                                clock=clock)
    try:
        await manager.start(timeout=GUARD)
        gw.stall()
        conn = gw.connections[0]
        await _quiet_until_a_probe(clock, conn)
        probe = bytes(conn.backlog)
        bot = asyncio.ensure_future(manager.ib.reqCurrentTimeAsync())
        await _until(lambda: len(conn.backlog) > len(probe), "the bot's request on the wire")
        gw.unstall()
        await asyncio.wait_for(bot, GUARD)   # the first answer is the bot's
        clock.advance(2.1)                    # the probe's deadline (heartbeat_timeout 2 s)
        await round_trip(manager.ib)          # a barrier: the session is still live
        assert manager.state is S.CONNECTED
        assert [t.dest for t in manager.transcript] == [S.CONNECTING, S.CONNECTED]
    finally:
        await manager.stop()


async def test_a_silent_gateway_is_still_a_heartbeat_miss(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """Nothing from the gateway between the probe and its deadline: heartbeat_missed."""
    clock = ManualClock()
    manager = ConnectionManager(ib_factory(), ConnectionConfig(port=gw.port, client_id=7),
                                clock=clock)
    try:
        await manager.start(timeout=GUARD)
        gw.stall()
        conn = gw.connections[0]
        await _quiet_until_a_probe(clock, conn)
        clock.advance(2.1)
        await _until(lambda: manager.state is not S.CONNECTED, "the probe's deadline")
        last = manager.transcript[-1]
        assert (last.source, last.dest, last.trigger.value) == (
            S.CONNECTED, S.BACKOFF, "heartbeat_missed")
    finally:
        gw.unstall()
        await manager.stop()


async def test_a_probe_leaves_no_timer_behind_answered_or_stopped(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """An answered probe leaves one timer (the next wake-up); stop() during a probe, none."""
    clock = ManualClock()
    manager = ConnectionManager(ib_factory(), ConnectionConfig(port=gw.port, client_id=7),
                                clock=clock)
    try:
        await manager.start(timeout=GUARD)
        probes = len(gw.requests_named("reqCurrentTime"))
        while len(gw.requests_named("reqCurrentTime")) == probes:
            assert clock.monotonic() < 10, "no probe after 10 s of quiet"
            clock.advance(0.1)
            await asyncio.sleep(0)
        await round_trip(manager.ib)          # a barrier: the probe's answer is in
        assert manager.state is S.CONNECTED
        assert clock.pending() == 1           # the next wake-up; the deadline is gone
        gw.stall()
        conn = gw.connections[0]
        await _quiet_until_a_probe(clock, conn)
        assert clock.pending() == 1           # the probe's deadline
        await manager.stop()
        assert clock.pending() == 0
    finally:
        gw.unstall()
        await manager.stop()
