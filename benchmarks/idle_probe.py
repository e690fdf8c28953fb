"""Micro-benchmark: the cost of one idle heartbeat probe cycle on virtual time (issue 21).

An idle month is ~837,000 of these cycles: the manager's timer fires after
``heartbeat_idle`` (3 s) of silence, sends ``reqCurrentTime``, the simulator
decodes it and answers, the client decodes the answer, the probe counts as
answered and the next timer is armed; then the ``VirtualTimeLoop`` jumps 3 s.
This script runs N such cycles with a ``ConnectionManager`` (defaults, on a
``LoopClock``) and, in the same run, N bare ib_insync ``reqCurrentTime`` round
trips 3 s apart on the same kind of loop and simulator (the floor: client +
simulator + loop, no manager), plus N bare loop jumps (no I/O: the loop alone).
Pairs alternate (ABBA); it prints per-cycle wall and CPU (medians), the ratio
manager / bare (median of the per-pair ratios), and then, as a figure the
machine's load does not move, Python function calls per cycle (cProfile), with
``--profile`` the functions that cost most, per contender.

Run::

    uv run python benchmarks/idle_probe.py --quick          # 3 pairs of 5,000 cycles, ~15 s
    uv run python benchmarks/idle_probe.py --profile 25     # and where the cycle goes
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import time
from collections.abc import Callable

from _common import header, median, parser, quiet_logging, table, verdict
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager
from ibkr_connection.clock import LoopClock
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.month import MONTH_START, VirtualTimeLoop

CLIENT_ID = 7
#: The manager's default ``heartbeat_idle``: the period of an idle cycle.
PERIOD = ConnectionConfig().heartbeat_idle
CONTENDERS = ("manager", "bare", "loop")


async def _cycles(kind: str, n: int, profiler: cProfile.Profile | None) -> tuple[int, float, float]:
    """Run ``n`` idle cycles of ``kind``; return (cycles seen, wall s, CPU s)."""
    loop = asyncio.get_running_loop()
    clock = LoopClock(wall_start=MONTH_START, loop=loop)
    async with FakeGateway(clock=clock) as gw:
        ib = IB()
        stop: Callable[[], object]
        if kind == "manager":
            manager = ConnectionManager(ib, ConnectionConfig(port=gw.port, client_id=CLIENT_ID),
                                        clock=clock)
            await manager.start(timeout=60)

            async def stop_manager() -> None:
                await manager.stop()

            stop = stop_manager
        else:
            done = False
            jumps = [0]
            if kind == "bare":
                await ib.connectAsync("127.0.0.1", gw.port, CLIENT_ID)

            def tick() -> None:
                if done:
                    return
                if kind == "loop":
                    jumps[0] += 1
                    loop.call_later(PERIOD, tick)
                    return
                ib.reqCurrentTimeAsync().add_done_callback(  # type: ignore[attr-defined]
                    lambda _: loop.call_later(PERIOD, tick))

            loop.call_later(PERIOD, tick)

            async def stop_bare() -> None:
                nonlocal done
                done = True
                ib.disconnect()

            stop = stop_bare
        # Settle: the connect's own messages and the first quiet look are not a cycle.
        await asyncio.sleep(PERIOD * 2)
        before = len(gw.requests_named("reqCurrentTime"))
        before_jumps = jumps[0] if kind == "loop" else 0
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        # Every cycle is PERIOD of loop time (the answer takes none: the loop
        # jumps only when no socket has anything), so this sleep holds n of them.
        await asyncio.sleep(PERIOD * n - PERIOD / 2)
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        seen = (jumps[0] - before_jumps if kind == "loop"
                else len(gw.requests_named("reqCurrentTime")) - before)
        await stop()
    return seen, wall, cpu


def run(kind: str, n: int, profiler: cProfile.Profile | None = None) -> tuple[int, float, float]:
    """One contender's ``n`` cycles on a fresh ``VirtualTimeLoop``."""
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_cycles(kind, n, profiler))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=5)
    ap.add_argument("--cycles", type=int, default=None,
                    help="cycles per run (default 20,000; 5,000 with --quick)")
    ap.add_argument("--calls-cycles", type=int, default=2000,
                    help="cycles per contender under cProfile (default 2,000)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N functions with the most own time, per contender")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    runs = args.runs or (3 if args.quick else 5)
    n = args.cycles or (5000 if args.quick else 20000)
    header(f"idle heartbeat probe cycle on virtual time: {runs} pairs of {n:,} cycles", args)
    cpu: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    wall: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    ratios: list[float] = []
    for i in range(runs):
        order = CONTENDERS if i % 2 == 0 else CONTENDERS[::-1]
        pair: dict[str, float] = {}
        for kind in order:
            seen, w, c = run(kind, n)
            if abs(seen - n) > 1:  # the loop's own timer may land on the last instant
                print(f"  {kind}: {seen} cycles seen, expected {n}")
            wall[kind].append(w / seen)
            cpu[kind].append(c / seen)
            pair[kind] = c / seen
        ratios.append(pair["manager"] / pair["bare"])
    calls: dict[str, float] = {}
    profiles: dict[str, str] = {}
    for kind in CONTENDERS:
        profiler = cProfile.Profile()
        seen, _, _ = run(kind, args.calls_cycles, profiler)
        stats = pstats.Stats(profiler)
        calls[kind] = stats.total_calls / seen  # type: ignore[attr-defined]
        if args.profile:
            out = io.StringIO()
            stats.stream = out  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(args.profile)
            profiles[kind] = out.getvalue()
    rows = [[kind, f"{1e3 * median(wall[kind]):.4f}", f"{1e3 * median(cpu[kind]):.4f}",
             f"{1e3 * min(cpu[kind]):.4f}", f"{calls[kind]:.1f}"] for kind in CONTENDERS]
    print(table(["contender", "wall ms/cycle", "CPU ms/cycle (median)", "CPU ms/cycle (min)",
                 "Python calls/cycle"], rows))
    print()
    print("manager: probe cycles with ConnectionManager defaults; bare: ib_insync reqCurrentTime "
          f"every {PERIOD:g} s; loop: a {PERIOD:g} s timer alone (the jump)")
    print(f"ratio manager / bare CPU per cycle (median of pairs): {median(ratios):.3f}")
    print(f"calls per cycle manager - bare: {calls['manager'] - calls['bare']:+.1f}")
    verdict("manager CPU per idle probe cycle", 1e3 * median(cpu["manager"]), 0.1, " ms")
    for kind, text in profiles.items():
        print()
        print(f"-- {kind}: {args.calls_cycles} cycles under cProfile, by own time --")
        print(text)


if __name__ == "__main__":
    main()
