"""The machine is never re-entered: inputs that arise during a step are fed after it.

A real ib_insync client against the simulator over loopback sockets, a storm
of seeded random faults (drops, restarts, stalls, codes, refused connects),
and a bot whose ``stateChangeEvent`` handler calls back into the manager:
every ``handle`` runs alone on the stack.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState, Transition
from ibkr_connection.clock import LoopClock
from ibkr_connection.inputs import Input
from ibkr_connection.outputs import Step
from ibkr_connection.simulator import FakeGateway, storm

from .conftest import ACCOUNT, FAST

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock
#: (``LoopClock``): the storm's gaps, the deadlines and backoffs cost no wall clock.
VIRTUAL_TIME = True


@pytest.mark.parametrize("seed", [1, 2])
async def test_handle_is_never_nested_under_a_fault_storm(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """80 random faults, a handler that subscribes on every connect, a stop: depth 1 always."""
    async with FakeGateway(accounts=[ACCOUNT], prices={"AAPL": 150.0}) as gw:
        manager = ConnectionManager(IB(), ConnectionConfig(
            port=gw.port, client_id=7, connect_timeout=1.0, heartbeat_idle=0.2,
            heartbeat_timeout=0.2, policy=FAST), clock=LoopClock())
        machine = manager.machine
        real = machine.handle
        depth = 0
        deepest = 0
        handled = 0

        def counting(inp: Input) -> Step:
            nonlocal depth, deepest, handled
            depth += 1
            handled += 1
            deepest = max(deepest, depth)
            try:
                return real(inp)
            finally:
                depth -= 1

        # The manager calls its machine's handle: this instance's wrapper.
        machine.handle = counting  # type: ignore[method-assign]
        issued: list[Any] = []

        def on_change(transition: Transition) -> None:
            # A bot's handler that calls the manager: its input arrives while
            # the step that moved into connected is still being carried out.
            if transition.dest is S.CONNECTED:
                manager.subscribe(f"probe {len(issued)}", issued.append)

        manager.stateChangeEvent += on_change
        with caplog.at_level(logging.ERROR, logger="ibkr_connection"):
            await manager.start(timeout=5)
            rng = random.Random(seed)
            for _ in range(80):
                await storm.random_fault(gw, rng)
                await asyncio.sleep(rng.uniform(0.0, 0.02))
            await storm.heal(gw)
            await manager.wait_for(S.CONNECTED, timeout=30)
            # stop(): the tear-down's close arrives while the disconnect's step runs.
            await manager.stop()
        moves = [t for t in manager.transcript if t.dest is S.BACKOFF]
        assert handled >= 20 and len(moves) >= 3, (handled, len(moves))
        assert deepest == 1
        assert issued, "the handler's subscriptions were issued"
        assert not [r.getMessage() for r in caplog.records
                    if "failed to handle" in r.getMessage()]
        assert manager.state is S.STOPPED
