"""Fixtures and helpers for the reliability suite: fast configs, condition waits, log capture."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from ibkr_connection import BackoffPolicy, ConnectionConfig, ConnectionManager, RecoveryPolicy
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.storm import TracebackCatcher
from ibkr_connection.table import ConnectionState

ACCOUNT = "DU1234567"

#: The issue's tight policy: same shape as the defaults, short costly delays.
FAST_POLICY = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))

#: The issue's tight timeouts, for every manager of this suite unless overridden.
FAST_SETTINGS: dict[str, Any] = {
    "client_id": 7,
    "connect_timeout": 0.5,
    "heartbeat_idle": 0.2,
    "heartbeat_timeout": 0.2,
    "policy": FAST_POLICY,
}

Predicate = Callable[[], bool]


def fast_config(port: int, **overrides: Any) -> ConnectionConfig:
    """Return the suite's tight config for ``port``, with ``overrides`` applied."""
    fields = dict(FAST_SETTINGS, port=port)
    fields.update(overrides)
    return ConnectionConfig(**fields)


async def wait_until(predicate: Predicate, timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` on the running loop until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.005)


async def settle(
    manager: ConnectionManager, expected: ConnectionState, *, quiet: float = 0.12,
    timeout: float = 6.0, cycling: frozenset[ConnectionState] = frozenset(),
) -> None:
    """Wait until the manager is in ``expected`` and made no other move for ``quiet`` s.

    Args:
        manager: the manager to watch.
        expected: the state it must end in.
        quiet: seconds without a move (other than within ``cycling``) that count as settled.
        timeout: give up (AssertionError) after this many seconds.
        cycling: states the manager may pass through while settled (``backoff`` cycles
            through ``connecting`` while the gateway refuses connections).
    """
    allowed = cycling | {expected}
    deadline = time.monotonic() + timeout
    seen = len(manager.transcript)
    calm_since = time.monotonic()
    while True:
        now = time.monotonic()
        moves = manager.transcript[seen:]
        seen = len(manager.transcript)
        if any(t.dest not in allowed for t in moves) or manager.state not in allowed:
            calm_since = now
        if manager.state is expected and now - calm_since >= quiet:
            return
        if now > deadline:
            path = [t.dest.value for t in manager.transcript[-8:]]
            raise AssertionError(
                f"did not settle in {expected.value} within {timeout}s; now "
                f"{manager.state.value}, last moves {path}"
            )
        await asyncio.sleep(0.005)


@pytest.fixture
def tracebacks() -> Iterator[TracebackCatcher]:
    """Capture tracebacks logged anywhere: ibkr_connection, eventkit, asyncio, ib_insync."""
    catcher = TracebackCatcher()
    root = logging.getLogger()
    root.addHandler(catcher)
    ours = logging.getLogger("ibkr_connection")
    level = ours.level
    if ours.getEffectiveLevel() > logging.ERROR:
        ours.setLevel(logging.ERROR)
    try:
        yield catcher
    finally:
        root.removeHandler(catcher)
        ours.setLevel(level)


#: (client library, the simulator's highest server version) per module run on several:
#: ib_insync 0.9.86 at 157 and at 176 (the highest it offers), ib_async 2.x at 178. The
#: whole fault matrix runs at 176 and 178; test_fault_matrix_at_157 runs a subset at 157.
#: The suite's other modules run on the default: ib_insync, the simulator at 178.
WIRES: dict[str, list[tuple[str, int]]] = {
    "test_fault_matrix": [("ib_insync", 176), ("ib_async", 178)],
    "test_fault_storms": [("ib_insync", 157), ("ib_insync", 176), ("ib_async", 178)],
}
DEFAULT_WIRE = ("ib_insync", 178)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the fault matrix and the storms on each of their wires."""
    wires = WIRES.get(metafunc.module.__name__.rsplit(".", 1)[-1])
    if "wire" in metafunc.fixturenames and wires:
        ids = [f"{lib}-v{version}" for lib, version in wires]
        metafunc.parametrize("wire", wires, ids=ids, indirect=True)


@pytest.fixture
def wire(request: pytest.FixtureRequest) -> tuple[str, int]:
    """The client library and the simulator's highest server version of this run."""
    return getattr(request, "param", DEFAULT_WIRE)  # type: ignore[no-any-return]


@pytest.fixture
async def gw(wire: tuple[str, int]) -> AsyncIterator[FakeGateway]:
    """A running simulator with one account and AAPL at 150, speaking up to the wire's version."""
    gateway = FakeGateway(accounts=[ACCOUNT], next_order_id=100, prices={"AAPL": 150.0},
                          server_version=wire[1])
    await gateway.start()
    try:
        yield gateway
    finally:
        gateway.unstall()
        gateway.release_sync()
        await gateway.stop()


@pytest.fixture
async def make_manager(
    gw: FakeGateway, wire: tuple[str, int]
) -> AsyncIterator[Callable[..., ConnectionManager]]:
    """Factory of managers driving a real ``IB`` of the wire's library (ib_insync by
    default) on ``gw``; all stopped afterwards."""
    made: list[ConnectionManager] = []
    ib_class = importlib.import_module(wire[0]).IB

    def make(**overrides: Any) -> ConnectionManager:
        manager = ConnectionManager(ib_class(), fast_config(gw.port, **overrides))
        made.append(manager)
        return manager

    yield make
    for manager in made:
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(manager.stop(), 2.0)


def handler_counts(ib: Any) -> tuple[int, int, int]:
    """Handlers on the three events the manager may touch."""
    return len(ib.errorEvent), len(ib.disconnectedEvent), len(ib.newOrderEvent)
