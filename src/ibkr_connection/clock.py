"""Injected time: a monotonic clock, wall-clock time and timers.

The machine reads time only through a :class:`Clock`, and the driver schedules
its timers through one, so tests (and replays) can run on a
:class:`ManualClock` and get the same transcript every time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Protocol


class TimerHandle(Protocol):
    """A scheduled callback that can be cancelled."""

    def cancel(self) -> None:
        """Cancel the callback if it has not run yet."""


class Clock(Protocol):
    """What the machine and the driver need to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> datetime:
        """The current time of day, timezone-aware."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` after ``delay`` seconds."""


class SystemClock:
    """The real clock; timers run on the running asyncio loop."""

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> datetime:
        """Return the current UTC time (``freezegun`` can freeze it)."""
        return datetime.now(timezone.utc)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` on the current event loop."""
        return asyncio.get_event_loop().call_later(delay, callback)


class LoopClock:
    """The running event loop's own clock: readings and timers on one time base.

    :class:`SystemClock` reads ``time.monotonic()`` while its timers run on
    the loop; the two agree on a real loop but not on one whose time is
    virtual (``looptime``, which jumps the loop's clock forward whenever every
    task waits), where the readings would barely move while the timers fire.
    This clock reads ``loop.time()`` for both, and maps it to a wall-clock time
    from ``wall_start``, so IB's reset windows fall where the loop's time says.

    Args:
        wall_start: the wall-clock time at the loop time of the first reading
            (the real current time if omitted).
        loop: the loop to read; the running loop at the first reading if omitted.
    """

    def __init__(self, wall_start: datetime | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._wall_start = wall_start
        self._origin: float | None = None

    def _the_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def monotonic(self) -> float:
        """Return the loop's time."""
        # The loop once known, without a call: read about 4 times per idle heartbeat
        # probe cycle, which a month on virtual time runs ~837,000 times (issue 21).
        now = (self._loop or self._the_loop()).time()
        if self._origin is None:
            self._origin = now
        return now

    def wall(self) -> datetime:
        """Return ``wall_start`` plus the loop time elapsed since the first reading."""
        now = self.monotonic()
        elapsed = timedelta(seconds=now - (now if self._origin is None else self._origin))
        if self._wall_start is None:
            self._wall_start = datetime.now(timezone.utc) - elapsed
        return self._wall_start + elapsed

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` on the clock's loop."""
        return (self._loop or self._the_loop()).call_later(delay, callback)


class _ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: for tests and replays.

    Args:
        start: the initial monotonic reading.
        wall_start: the wall-clock time at ``start`` (UTC midday by default).
    """

    def __init__(
        self, start: float = 0.0, wall_start: datetime | None = None
    ) -> None:
        self._now = start
        self._start = start
        self._wall_start = wall_start or datetime(2026, 1, 5, 17, 0, tzinfo=timezone.utc)
        self._timers: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        """Return the current manual reading."""
        return self._now

    def wall(self) -> datetime:
        """Return the wall time that corresponds to the manual reading."""
        return self._wall_start + timedelta(seconds=self._now - self._start)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Schedule ``callback`` to run when the clock passes ``now + delay``."""
        timer = _ManualTimer()
        heapq.heappush(self._timers, (self._now + delay, next(self._seq), timer, callback))
        return timer

    def pending(self) -> int:
        """Return how many timers are scheduled and not cancelled."""
        return sum(1 for _, _, timer, _ in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the clock forward, running every timer that falls due, in order."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, timer, callback = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, due)
            callback()
        self._now = target
