"""One simulated day of faults on virtual time: usable after each fault, no order in doubt."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState, IBCController
from ibkr_connection.clock import LoopClock
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.month import (
    MONTH_START,
    VirtualTimeLoop,
    faults_from_steps,
    generate,
)
from ibkr_connection.simulator.scenario import run_scenario
from ibkr_connection.wire.scenario import load_scenario, parse_scenario

S = ConnectionState
HOUR = 3600.0

#: The day's faults (seconds from the start). Every fault is over by its check time.
STEPS: list[dict[str, Any]] = [
    {"at": 1 * HOUR, "action": "drop_clients"},
    {"at": 2 * HOUR, "action": "error", "code": 1100},
    {"at": 2 * HOUR + 45, "action": "error", "code": 1101},
    {"at": 3 * HOUR, "action": "farm_broken", "farm": "usfarm"},
    {"at": 3 * HOUR + 90, "action": "farm_ok", "farm": "usfarm"},
    {"at": 4 * HOUR, "action": "stall"},
    {"at": 4 * HOUR + 60, "action": "unstall"},
    {"at": 5 * HOUR, "action": "wedge"},
    {"at": 6 * HOUR, "action": "restart", "outage": 120.0},
    {"at": 7 * HOUR, "action": "reset_port"},
]
#: When the manager must be usable again: after each fault, with room for its
#: recovery (the wedge: three wedge signs, IBC's RESTART, its 5 s outage).
CHECKS = [1 * HOUR + 30, 2 * HOUR + 120, 3 * HOUR + 120, 4 * HOUR + 120, 5 * HOUR + 300,
          6 * HOUR + 240, 7 * HOUR + 30, 24 * HOUR - 1]
#: The bot's orders: (time, the order fault armed just before it, if any).
ORDERS: list[tuple[float, str | None]] = [
    (8 * HOUR, None), (9 * HOUR, "lose_next_order"), (10 * HOUR, "lose_next_order_ack"),
    (11 * HOUR, "drop_after_next_order"), (12 * HOUR, None),
]


async def _day(library: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    clock = LoopClock(wall_start=MONTH_START, loop=loop)
    origin = clock.monotonic()
    gw = FakeGateway(clock=clock, ibc_port=0, ibc_restart_outage=5.0)
    await gw.start()
    assert gw.ibc is not None
    # A 10 s heartbeat (default 3 s) keeps the day under two seconds of wall clock.
    config = ConnectionConfig(port=gw.port, client_id=9, heartbeat_idle=10.0)
    lib = importlib.import_module(library)
    manager = ConnectionManager(lib.IB(), config, clock=clock,
                                controller=IBCController("127.0.0.1", gw.ibc.port))
    seen: list[tuple[float, S]] = []
    resent: list[str] = []

    def on_resolved(trade: Any, outcome: Any) -> None:
        if outcome.status == "NotReceived":  # the gateway never had it: place it again
            resent.append(trade.order.orderRef)
            manager.ib.placeOrder(trade.contract, lib.MarketOrder(
                "BUY", 1, orderRef=trade.order.orderRef))

    manager.orderResolvedEvent += on_resolved
    try:
        await manager.start(timeout=60)
        player = asyncio.ensure_future(run_scenario(gw, parse_scenario({"step": STEPS})))
        refs = []
        checks = iter(CHECKS)
        due = next(checks)
        for at, fault in ORDERS:
            while due is not None and due < at:
                await asyncio.sleep(origin + due - loop.time())
                seen.append((due, manager.state))
                due = next(checks, None)
            await asyncio.sleep(origin + at - loop.time())
            await manager.wait_for(S.CONNECTED, S.DEGRADED)
            if fault is not None:
                getattr(gw, fault)("placeOrder", 9)
            ref = f"day-{len(refs) + 1}"
            refs.append(ref)
            manager.ib.placeOrder(lib.Stock("AAPL", "SMART", "USD"),
                                  lib.MarketOrder("BUY", 1, orderRef=ref))
        while due is not None:
            await asyncio.sleep(origin + due - loop.time())
            seen.append((due, manager.state))
            due = next(checks, None)
        await player
        booked: dict[str, int] = {}
        for order in gw.orders.values():
            booked[order.order_ref] = booked.get(order.order_ref, 0) + 1
        return {
            "states": seen,
            "uncertain": len(manager.in_flight.uncertain),
            "booked": booked,
            "resent": resent,
            "restarts": gw.ibc.restarts,
            "transcript": [(round(t.at - origin, 6), t.source, t.dest, t.trigger)
                           for t in manager.transcript],
        }
    finally:
        await manager.stop()
        await gw.stop()


def _run_day(library: str = "ib_insync") -> dict[str, Any]:
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_day(library))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_one_simulated_day_of_faults() -> None:
    """A day of drops, 1100, a farm, a hang, a wedge, a restart, a 1300 and order faults."""
    first = _run_day()
    assert [state for _, state in first["states"]] == [S.CONNECTED] * len(CHECKS)
    assert first["uncertain"] == 0
    assert first["resent"] == ["day-2"]              # the lost order, and only it
    assert first["booked"] == {f"day-{n}": 1 for n in range(1, 6)}  # none twice, none lost
    # Through IBC: the wedge, and the 60 s hang, which after a missed heartbeat
    # and two silent handshakes (restart_after=3, ~12 s) looks like one.
    assert first["restarts"] == 2
    again = _run_day()
    assert again["transcript"] == first["transcript"]


def test_one_simulated_day_of_faults_with_ib_async() -> None:
    """The same day driving ib_async: usable after every fault, nothing in doubt or sent twice."""
    day = _run_day("ib_async")
    assert [state for _, state in day["states"]] == [S.CONNECTED] * len(CHECKS)
    assert day["uncertain"] == 0
    assert day["resent"] == ["day-2"]
    assert day["booked"] == {f"day-{n}": 1 for n in range(1, 6)}


def test_the_month_file_plays_the_faults_it_was_drawn_with(tmp_path: Path) -> None:
    """A generated month written as a scenario file reads back to the same faults."""
    month = generate(seed=5, days=30)
    path = tmp_path / "month.toml"
    path.write_text(month.toml(), encoding="utf-8")
    scenario = load_scenario(path)
    steps = [{"at": step.at, "action": step.action, **step.params} for step in scenario.steps]
    assert [(f.at, f.kind, round(f.duration, 3)) for f in faults_from_steps(steps)] == [
        (round(f.at, 3), f.kind, round(f.duration, 3)) for f in month.faults]
    kinds = {f.kind for f in month.faults}
    assert {"nightly_reset", "daily_restart", "weekly_login", "farm_flap"} <= kinds
    assert len([f for f in month.faults if f.kind == "nightly_reset"]) == 30


def test_the_month_benchmark_sees_ibcs_restart_end_a_hang() -> None:
    """benchmarks/month.py's stall watch: a hang cleared by IBC's RESTART (clear_faults) ends."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        month_bench = importlib.import_module("month")
    finally:
        sys.path.remove(str(bench))
    loop = VirtualTimeLoop()
    try:
        gw = FakeGateway()
        run = month_bench.Run("manager")
        month_bench._watch_stalls(gw, run, loop, 0.0)
        gw.stall()
        gw.clear_faults()  # what IbcCommandServer's RESTART does to the gateway
        gw.wedge()
        gw.unstall()
        assert [stalled for _, stalled in run.stalls] == [True, False, True, False]
    finally:
        loop.close()


def test_no_random_fault_falls_while_the_gateway_is_down_for_a_restart_or_its_login() -> None:
    """A restart's outage, the login's wait included, gets no hang, wedge or drop of its own."""
    scheduled = ("nightly_reset", "daily_restart", "weekly_login")
    for seed in range(4):
        month = generate(seed=seed, days=30)
        outages = [(f.at, f.at + f.duration) for f in month.faults
                   if f.kind in ("daily_restart", "weekly_login")]
        assert any(f.kind == "weekly_login" for f in month.faults)
        for fault in month.faults:
            if fault.kind in scheduled:
                continue
            inside = [(a, b) for a, b in outages if a - 600.0 <= fault.at <= b + 600.0]
            assert inside == [], (seed, fault)
