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
``--profile`` the functions that cost most, per contender. ``--split`` times
the parts of a cycle with ``perf_counter`` around them (each wrapper adds a
fraction of a microsecond): the loop's turns and its selector calls, the
socket sends, the simulator's read of the request and its answer, the
client's read of the answer (its decoder, its wrapper and the handlers on its
``hasData``), the client's send of the request; the rest is the loop's own
work and the timers.

Run::

    uv run python benchmarks/idle_probe.py --quick          # 3 pairs of 5,000 cycles, ~15 s
    uv run python benchmarks/idle_probe.py --profile 25     # and where the cycle goes
    uv run python benchmarks/idle_probe.py --quick --split  # the cycle in parts
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import ib_insync.client as ib_client
import ib_insync.connection as ib_connection
from _common import header, median, parser, quiet_logging, table, verdict
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager
from ibkr_connection.clock import LoopClock
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.month import MONTH_START, VirtualTimeLoop
from ibkr_connection.simulator.transport import GatewayTransport

CLIENT_ID = 7
#: The manager's default ``heartbeat_idle``: the period of an idle cycle.
PERIOD = ConnectionConfig().heartbeat_idle
CONTENDERS = ("manager", "bare", "loop")


async def _cycles(kind: str, n: int, profiler: cProfile.Profile | None,
                  started: Callable[[], None] | None = None) -> tuple[int, float, float]:
    """Run ``n`` idle cycles of ``kind``; return (cycles seen, wall s, CPU s).

    ``started`` is called when the measured cycles begin (after the settle).
    """
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
        if started is not None:
            started()
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


def run(kind: str, n: int, profiler: cProfile.Profile | None = None,
        loop: VirtualTimeLoop | None = None,
        started: Callable[[], None] | None = None) -> tuple[int, float, float]:
    """One contender's ``n`` cycles on a fresh ``VirtualTimeLoop`` (or the one given)."""
    loop = loop or VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_cycles(kind, n, profiler, started))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


#: The parts ``--split`` times: (label, owner, attribute), outermost first.
#: Nested parts are inside their parent's time: a send is inside the
#: simulator's answer or the client's send.
SPLIT_PARTS: list[tuple[str, Any, str]] = [
    ("simulator: read the request, answer it (its send included)", GatewayTransport,
     "_on_read"),
    ("client: read the answer (decoder, wrapper, hasData handlers)", ib_connection.Connection,
     "data_received"),
    ("client: send the request (its send included)", ib_client.Client, "send"),
]


class _Timed:
    """Seconds and calls spent in one wrapped callable."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` timed into this counter."""
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds += clock() - t0
                self.calls += 1

        return timed


class _TimedPoll:
    """An epoll object whose ``poll`` is timed into ``counter`` (the loop's own turn polls it)."""

    def __init__(self, epoll: Any, counter: _Timed) -> None:
        self.poll = counter.wrap(epoll.poll)


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    saved = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def split(kind: str, n: int) -> list[list[str]]:
    """Time the parts of ``n`` cycles of ``kind``; rows of (part, us per cycle, calls per cycle)."""
    loop = VirtualTimeLoop()
    timed: dict[str, _Timed] = {}

    def part(label: str) -> _Timed:
        return timed.setdefault(label, _Timed())

    # The loop's turns and its (virtual-time) polls: wrapped on this loop only.
    # Its own turn polls epoll itself, and waits (a hold, no timer) through the
    # selector's select it kept at creation: both are wrapped.
    loop._run_once = part("loop turns (everything, the jump included)").wrap(  # type: ignore[attr-defined]
        loop._run_once)  # type: ignore[attr-defined]
    polls = part("  selector calls (epoll, the jump)")
    epoll = loop._epoll  # type: ignore[attr-defined]
    if epoll is not None:
        loop._epoll = _TimedPoll(epoll, polls)  # type: ignore[attr-defined]
    loop._real_select = polls.wrap(loop._real_select)  # type: ignore[attr-defined]

    # asyncio's transports send through the socket they were given, which the
    # loop turns into its loopback-counting class (see simulator/loopback.py):
    # that class's send is timed while the run lasts.
    sends = part("  socket sends (both sides; inside the parts below)")
    counted = loop._loopback.counted  # type: ignore[attr-defined]
    with ExitStack() as stack:
        stack.enter_context(_patched(counted, "send", sends.wrap(counted.__dict__["send"])))
        for label, owner, name in SPLIT_PARTS:
            stack.enter_context(_patched(owner, name, part("  " + label).wrap(
                owner.__dict__[name])))

        def measuring() -> None:
            # The connect and the settle are not cycles: count from here.
            for counter in timed.values():
                counter.seconds, counter.calls = 0.0, 0

        seen, wall, _ = run(kind, n, loop=loop, started=measuring)
    rows = [[label, f"{1e6 * c.seconds / seen:.1f}", f"{c.calls / seen:.2f}"]
            for label, c in timed.items()]
    inside = sum(timed["  " + label].seconds for label, _, _ in SPLIT_PARTS)
    loop_time = timed["loop turns (everything, the jump included)"].seconds
    selector_time = timed["  selector calls (epoll, the jump)"].seconds
    rows.append(["  the rest: the loop's own work, timers, the probe's tick",
                 f"{1e6 * (loop_time - inside - selector_time) / seen:.1f}", ""])
    rows.append(["cycle (wall, unwrapped parts included)", f"{1e6 * wall / seen:.1f}", ""])
    return rows


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=5)
    ap.add_argument("--cycles", type=int, default=None,
                    help="cycles per run (default 20,000; 5,000 with --quick)")
    ap.add_argument("--calls-cycles", type=int, default=2000,
                    help="cycles per contender under cProfile (default 2,000)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N functions with the most own time, per contender")
    ap.add_argument("--split", action="store_true",
                    help="also time the parts of a cycle (manager and bare), n cycles each")
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
    if args.split:
        for kind in ("manager", "bare"):
            print()
            print(f"-- {kind}: {n:,} cycles in parts (us per cycle, wall; nested ones indented) --")
            print(table(["part", "us/cycle", "calls/cycle"], split(kind, n)))
    for kind, text in profiles.items():
        print()
        print(f"-- {kind}: {args.calls_cycles} cycles under cProfile, by own time --")
        print(text)


if __name__ == "__main__":
    main()
