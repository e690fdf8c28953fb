"""LoopClock: readings, wall time and timers on the running loop's one clock."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta, timezone

import pytest

from ibkr_connection.clock import LoopClock

START = datetime(2026, 3, 2, 14, 0, tzinfo=timezone.utc)


async def test_loop_clock_reads_the_loop_time_and_maps_it_to_the_wall() -> None:
    """monotonic() is loop.time(); wall() moves with it from wall_start."""
    loop = asyncio.get_running_loop()
    clock = LoopClock(wall_start=START)
    before = loop.time()
    reading = clock.monotonic()
    assert before <= reading <= loop.time()
    fired: list[float] = []
    clock.call_later(0.01, lambda: fired.append(loop.time()))
    await asyncio.sleep(0.02)
    assert len(fired) == 1
    seconds = (clock.wall() - START).total_seconds()
    assert 0.01 <= seconds < 5.0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="looptime needs Python 3.11")
def test_loop_clock_follows_a_virtual_loop_that_jumps() -> None:
    """On a looptime loop an hour of sleeping moves the readings and the wall by an hour."""
    import looptime

    async def main() -> tuple[float, datetime]:
        clock = LoopClock(wall_start=START)
        t0 = clock.monotonic()
        woke: list[float] = []
        clock.call_later(3600.0, lambda: woke.append(clock.monotonic()))
        await asyncio.sleep(3600.5)
        return woke[0] - t0, clock.wall()

    loop = looptime.new_event_loop(start=100.0)
    try:
        elapsed, wall = loop.run_until_complete(main())
    finally:
        loop.close()
    assert elapsed == pytest.approx(3600.0, abs=1e-6)
    assert wall == START + timedelta(seconds=3600.5)
