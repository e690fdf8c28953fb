"""A bug of ours inside a step (the machine or an effect raises) never leaves the manager idle."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from ibkr_connection import (
    BackoffPolicy,
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    RecoveryPolicy,
)
from ibkr_connection.clock import SystemClock, TimerHandle
from ibkr_connection.simulator import FakeGateway

from conftest import GUARD, round_trip

S = ConnectionState
Make = Callable[..., ConnectionManager]


@dataclass(frozen=True)
class _FailsOnce(BackoffPolicy):
    """A backoff with a bug: its first delay raises (as 2.0 ** 1024 once did)."""

    raised: list[str] = field(default_factory=list)

    def delay(self, failures: int, costly: bool, rng: random.Random) -> float:
        """Raise the first time, then draw as usual."""
        if not self.raised:
            self.raised.append("raised")
            raise RuntimeError("a bug in the backoff")
        return super().delay(failures, costly, rng)


class _TimerFailsOnce(SystemClock):
    """The real clock, except that the first timer ``fails(delay)`` picks, once armed, raises."""

    def __init__(self, fails: Callable[[float], bool], armed: bool = True) -> None:
        self.fails = fails
        self.armed = armed
        self.raised: list[float] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Raise for the first timer picked; schedule every other one."""
        if self.armed and not self.raised and self.fails(delay):
            self.raised.append(delay)
            raise RuntimeError("a bug in scheduling a timer")
        return super().call_later(delay, callback)


async def _until(predicate: Callable[[], object], what: str) -> None:
    """Poll the loop until ``predicate()`` holds; a hang guard, not the assertion."""
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: {what} did not happen")
        await asyncio.sleep(0.001)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ibkr_connection.manager" and r.levelname == "ERROR"]


async def test_machine_error_on_a_refused_connect_starts_the_connection_over(
    make_manager: Make, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The machine raises on a refused connect: logged with input and state, then connected."""
    backoff = _FailsOnce(costly_delay=0.05, max_costly_delay=0.2)
    manager = make_manager(policy=RecoveryPolicy(backoff=backoff))
    await gw.stop_listening()
    starting = asyncio.ensure_future(manager.start(timeout=GUARD))
    await _until(lambda: backoff.raised, "the machine's error")
    await gw.start_listening()
    await starting
    assert manager.state is S.CONNECTED
    path = [t.dest.value for t in manager.transcript]
    assert path[:3] == ["connecting", "disconnected", "connecting"]
    assert path[-1] == "connected"
    first = _errors(caplog)[0]
    assert "failed to handle" in first and "attempt_failed" in first
    assert "in state connecting" in first


async def test_effect_error_on_a_refused_connect_starts_the_connection_over(
    ib_factory: Callable[[], object], gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The retry timer cannot be scheduled once: the manager starts over and connects."""
    clock = _TimerFailsOnce(lambda delay: delay < 1.0)  # the retry's
    policy = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))
    manager = ConnectionManager(ib_factory(), ConnectionConfig(
        port=gw.port, client_id=7, connect_timeout=2.0, policy=policy), clock=clock)
    try:
        await gw.stop_listening()
        starting = asyncio.ensure_future(manager.start(timeout=GUARD))
        await _until(lambda: clock.raised, "the effect's error")
        await gw.start_listening()
        await starting
        assert manager.state is S.CONNECTED
        path = [t.dest.value for t in manager.transcript]
        assert path[:4] == ["connecting", "backoff", "disconnected", "connecting"]
        assert any("backoff may now wait for nothing" in line for line in _errors(caplog))
    finally:
        await manager.stop()


class _WallFailsOnce(SystemClock):
    """The real clock, except that the time of day raises once, when armed."""

    def __init__(self) -> None:
        self.armed = False
        self.raised: list[str] = []

    def wall(self) -> datetime:
        """Raise once after being armed; the real time of day otherwise."""
        if self.armed and not self.raised:
            self.raised.append("raised")
            raise RuntimeError("a bug in reading the time of day")
        return super().wall()


async def test_machine_error_entering_lost_starts_the_connection_over(
    ib_factory: Callable[[], object], gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1100 whose restore timer cannot be chosen (the clock raises): started over, connected."""
    clock = _WallFailsOnce()
    policy = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))
    manager = ConnectionManager(ib_factory(), ConnectionConfig(
        port=gw.port, client_id=7, connect_timeout=2.0, policy=policy), clock=clock)
    try:
        await manager.start(timeout=GUARD)
        clock.armed = True
        await gw.send_error(1100)
        await _until(lambda: clock.raised, "the clock's error")
        await _until(lambda: len(manager.transcript) >= 6 and manager.state is S.CONNECTED,
                     "connected again")
        path = [t.dest.value for t in manager.transcript]
        assert path == ["connecting", "connected", "lost", "disconnected", "connecting",
                        "connected"]
        first = _errors(caplog)[0]
        assert "failed to handle" in first and "connectivity_lost" in first
        assert "in state connected (now lost)" in first
    finally:
        await manager.stop()


async def test_effect_error_in_a_working_session_keeps_the_session(
    ib_factory: Callable[[], object], caplog: pytest.LogCaptureFixture
) -> None:
    """The farm timer cannot be scheduled on entering degraded: the live session is kept."""
    clock = _TimerFailsOnce(lambda delay: delay >= 100.0, armed=False)  # the farm timer
    async with FakeGateway(ibc_port=0) as gw:
        assert gw.ibc is not None
        manager = ConnectionManager(ib_factory(), ConnectionConfig(
            port=gw.port, client_id=7, ibc_port=gw.ibc.port), clock=clock)
        try:
            await manager.start(timeout=GUARD)
            clock.armed = True
            await gw.farm_broken("usfarm")
            await _until(lambda: clock.raised, "the farm timer's error")
            assert clock.raised == [300.0]  # farm_reconnect_after, the degraded entry's timer
            await round_trip(manager.ib)
            assert manager.state is S.DEGRADED
            assert any("keeping the degraded session after that error" in line
                       for line in _errors(caplog))
            await gw.farm_ok("usfarm")
            await _until(lambda: manager.state is S.CONNECTED, "connected once the farm is OK")
            path = [t.dest.value for t in manager.transcript]
            assert path == ["connecting", "connected", "degraded", "connected"]
            assert manager.ib.isConnected()
        finally:
            await manager.stop()
