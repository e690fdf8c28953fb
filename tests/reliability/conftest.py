"""The reliability suite: tight timeouts, a settle wait, log capture (shared: tests/conftest.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from ibkr_connection import ConnectionConfig, ConnectionManager
from ibkr_connection.inputs import InputKind
from ibkr_connection.simulator.storm import TracebackCatcher
from ibkr_connection.table import ConnectionState

from conftest import ACCOUNT, FAST_POLICY, loop_factories, on_live_session, wait_until

__all__ = ["ACCOUNT", "FAST_POLICY", "TracebackCatcher", "on_live_session", "wait_until"]

S = ConnectionState

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
    manager: ConnectionManager, expected: ConnectionState, *, before: int, healed: int,
    timeout: float = 10.0,
) -> None:
    """Wait for the events that show a fault played out, the manager resting in ``expected``.

    No quiet window: each end state has its own closing event.

    - connected, degraded, lost: a round trip answered on a live session in that state
      (``on_live_session``);
    - backoff: the gateway refuses connections, so the manager cycles through
      connecting; an attempt refused after the heal shows it backing off again, and
      no move after the heal went anywhere else;
    - disconnected, failed: no timer runs there and the gateway cannot reach the
      manager, so nothing moves it: no move since the fault.

    Args:
        manager: the manager to watch.
        expected: the state it must end in.
        before: the length of its transcript before the fault.
        healed: the length of its transcript once the fault was healed.
        timeout: a hang guard (AssertionError).
    """
    if expected in (S.CONNECTED, S.DEGRADED, S.LOST):
        await on_live_session(manager, expected, timeout)
    elif expected is S.BACKOFF:
        await wait_until(lambda: any(t.dest is S.BACKOFF and t.trigger is InputKind.ATTEMPT_FAILED
                                     for t in manager.transcript[healed:]),
                         timeout, "an attempt refused after the heal")
        later = [t.dest for t in manager.transcript[healed:]]
        assert set(later) <= {S.BACKOFF, S.CONNECTING}, later
    else:
        assert manager.state is expected, manager.state
        assert manager.transcript[before:] == [], manager.transcript[before:]


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


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """A module that sets ``VIRTUAL_TIME = True`` runs on virtual time (tests/conftest.py)."""
    return loop_factories(item)
