"""The reliability suite: tight timeouts, a settle wait, log capture (shared: tests/conftest.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ibkr_connection import ConnectionConfig, ConnectionManager
from ibkr_connection.machine import ConnectionState
from ibkr_connection.simulator.storm import TracebackCatcher

from conftest import ACCOUNT, FAST_POLICY, wait_until

__all__ = ["ACCOUNT", "FAST_POLICY", "TracebackCatcher", "wait_until"]

#: The issue's tight timeouts, for every manager of this suite unless overridden.
FAST_SETTINGS: dict[str, Any] = {
    "client_id": 7,
    "connect_timeout": 0.5,
    "heartbeat_idle": 0.2,
    "heartbeat_timeout": 0.2,
    "policy": FAST_POLICY,
}


def fast_config(port: int, **overrides: Any) -> ConnectionConfig:
    """Return the suite's tight config for ``port``, with ``overrides`` applied."""
    fields = dict(FAST_SETTINGS, port=port)
    fields.update(overrides)
    return ConnectionConfig(**fields)


@pytest.fixture
def manager_settings() -> dict[str, Any]:
    """``make_manager``'s managers here get the suite's tight timeouts."""
    return dict(FAST_SETTINGS)


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
#: one wire per client library, ib_insync 0.9.86 at 176 (the highest it offers) and
#: ib_async 2.x at 178; test_fault_matrix_at_157 is the smoke run at 157. The suite's
#: other modules run on the default: ib_insync, the simulator at 178.
WIRES: dict[str, list[tuple[str, int]]] = {
    "test_fault_matrix": [("ib_insync", 176), ("ib_async", 178)],
    "test_fault_storms": [("ib_insync", 176), ("ib_async", 178)],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the fault matrix and the storms on each of their wires."""
    wires = WIRES.get(metafunc.module.__name__.rsplit(".", 1)[-1])
    if "wire" in metafunc.fixturenames and wires:
        ids = [f"{lib}-v{version}" for lib, version in wires]
        metafunc.parametrize("wire", wires, ids=ids, indirect=True)


def handler_counts(ib: Any) -> tuple[int, int, int]:
    """Handlers on the three events the manager may touch."""
    return len(ib.errorEvent), len(ib.disconnectedEvent), len(ib.newOrderEvent)
