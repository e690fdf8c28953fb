"""The handshake deadline: a silent gateway fails the attempt early, a healthy one is untouched.

Real sockets, each client library: a wedged simulator accepts the socket and
answers nothing, so without ``handshake_timeout`` every attempt would wait out
``connect_timeout`` before it counts as a sign of a wedged gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.clock import LoopClock
from ibkr_connection.codes import classify_failure
from ibkr_connection.errors import HandshakeTimeoutError
from ibkr_connection.inputs import InputKind
from ibkr_connection.simulator import FakeGateway

from .conftest import ACCOUNT, FAST

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock
#: (``LoopClock``): the handshake deadlines and the backoffs cost no wall clock.
VIRTUAL_TIME = True


@pytest.fixture
async def own_gw() -> AsyncIterator[FakeGateway]:
    """A simulator of this module's own (one run per client library)."""
    gateway = FakeGateway(accounts=[ACCOUNT])
    await gateway.start()
    try:
        yield gateway
    finally:
        gateway.unstall()
        await gateway.stop()


async def _wait(predicate: Callable[[], bool], what: str) -> None:
    # A guard against hanging, not a measure of speed.
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_a_missing_handshake_is_a_costly_retryable_failure() -> None:
    """The failure table reads "no handshake" as a costly, retryable attempt failure."""
    _, inp = classify_failure(HandshakeTimeoutError("no handshake within 2s"))
    assert inp.kind is InputKind.ATTEMPT_FAILED
    assert inp.costly is True
    assert inp.message.startswith("no handshake")


async def test_a_wedged_gateway_fails_the_attempt_at_the_handshake_deadline(
    own_gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """Wedged: the reconnect fails as "no handshake within 0.3s", never as "timed out"."""
    config = ConnectionConfig(port=own_gw.port, client_id=7, connect_timeout=30.0,
                              handshake_timeout=0.3, heartbeat_idle=0.2,
                              heartbeat_timeout=0.2, policy=FAST)
    manager = ConnectionManager(ib_factory(), config, clock=LoopClock())
    try:
        await manager.start(timeout=5)
        own_gw.wedge()
        await _wait(lambda: sum(t.trigger is InputKind.ATTEMPT_FAILED
                                for t in manager.transcript) >= 2, "two failed attempts")
        failed = [t for t in manager.transcript if t.trigger is InputKind.ATTEMPT_FAILED]
        assert [(t.source, t.dest) for t in failed[:2]] == [(S.CONNECTING, S.BACKOFF)] * 2
        for transition in failed:
            assert transition.cause.startswith("no handshake"), transition.cause
            assert "no handshake within 0.3s" in transition.cause
        # A heartbeat miss and the silent handshakes all count as wedge signs.
        assert manager.machine.wedge_signs >= 3
        own_gw.unstall()
        await _wait(lambda: manager.state is S.CONNECTED, "connected again")
    finally:
        await manager.stop()


async def test_a_healthy_gateway_with_a_slow_sync_is_not_cut_short(
    own_gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """The deadline covers the handshake only: a startup sync slower than it still connects."""
    own_gw.delay_sync("reqPositions", 0.6)
    config = ConnectionConfig(port=own_gw.port, client_id=7, connect_timeout=10.0,
                              handshake_timeout=0.2, policy=FAST)
    manager = ConnectionManager(ib_factory(), config, clock=LoopClock())
    try:
        await manager.start(timeout=8)
        assert manager.state is S.CONNECTED
        assert [t.trigger for t in manager.transcript] == [
            InputKind.CONNECT, InputKind.ATTEMPT_SUCCEEDED]
        assert manager.machine.wedge_signs == 0
    finally:
        await manager.stop()


def test_the_handshake_deadline_defaults_to_two_seconds_and_reads_the_environment() -> None:
    """Default 2 s; IBKR_HANDSHAKE_TIMEOUT sets it."""
    assert ConnectionConfig().handshake_timeout == 2.0
    assert ConnectionConfig.from_env({"IBKR_HANDSHAKE_TIMEOUT": "0.5"}).handshake_timeout == 0.5
