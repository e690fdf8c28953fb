"""The heartbeat wakes once per idle period and still probes after heartbeat_idle of quiet."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from ib_insync import IB, Stock

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.clock import ManualClock, TimerHandle
from ibkr_connection.simulator import FakeGateway

S = ConnectionState


class CountingClock(ManualClock):
    """A manual clock that counts the heartbeat's wake-ups (timers of ``_tick``)."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        if getattr(callback, "__name__", "") == "_tick":
            self.wakes += 1
        return super().call_later(delay, callback)


async def _turns(n: int = 30) -> None:
    """Let the loop run ``n`` turns (socket I/O on loopback), with no wall-clock wait."""
    for _ in range(n):
        await asyncio.sleep(0)


async def _probe_times(clock: ManualClock, gw: FakeGateway, until: float,
                       step: float = 0.05, on_step: Callable[[float], None] | None = None,
                       ) -> list[float]:
    """Advance the manual clock to ``until``; return when each probe reached the gateway."""
    seen = len(gw.requests_named("reqCurrentTime"))
    times: list[float] = []
    while clock.monotonic() < until:
        clock.advance(step)
        if on_step is not None:
            on_step(clock.monotonic())
        await _turns()
        now = len(gw.requests_named("reqCurrentTime"))
        times += [clock.monotonic()] * (now - seen)
        seen = now
    return times


async def test_idle_heartbeat_wakes_once_per_probe() -> None:
    """30 s of quiet: a probe every ~3 s and about one wake-up per probe, not two a second."""
    clock = CountingClock()
    async with FakeGateway() as gw:
        manager = ConnectionManager(IB(), ConnectionConfig(port=gw.port, client_id=5),
                                    clock=clock)
        try:
            await manager.start(timeout=30)
            start = clock.monotonic()
            wakes = clock.wakes
            times = await _probe_times(clock, gw, start + 30.0)
            assert manager.state is S.CONNECTED
            assert 9 <= len(times) <= 10                     # every heartbeat_idle (3 s)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(2.95 <= gap <= 3.1 for gap in gaps)  # none early, none late
            assert clock.wakes - wakes <= len(times) + 2    # was 60 (every 0.5 s)
        finally:
            await manager.stop()


async def test_a_lone_message_moves_the_next_probe_to_heartbeat_idle_after_it() -> None:
    """A tick 1.2 s after a probe's answer: the next probe 3 s after the tick (within 0.5 s)."""
    clock = CountingClock()
    async with FakeGateway() as gw:
        manager = ConnectionManager(IB(), ConnectionConfig(port=gw.port, client_id=6),
                                    clock=clock)
        try:
            await manager.start(timeout=30)
            manager.subscribe_market_data(Stock("AAPL", "SMART", "USD"))
            first = await _probe_times(clock, gw, clock.monotonic() + 4.0)
            assert first, "no probe in the first 4 s of quiet"
            tick_at = first[-1] + 1.2
            pushed: list[float] = []

            def push(now: float) -> None:
                if not pushed and now >= tick_at:
                    pushed.append(now)
                    assert gw.push_tick("AAPL", 101.0) == 1

            later = await _probe_times(clock, gw, tick_at + 5.0, on_step=push)
            assert pushed
            assert later, "no probe after the tick"
            assert pushed[0] + 3.0 <= later[0] <= pushed[0] + 3.0 + 0.55
        finally:
            await manager.stop()
