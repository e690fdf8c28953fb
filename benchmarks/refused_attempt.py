"""Micro-benchmark: the CPU cost of one refused connect attempt on virtual time (issue 21).

While the gateway is down (the weekly login: hours) the manager retries a
refused connect every ~2 s: ``backoff -> connecting`` on ``retry_due``, the
attempt task's ``connectAsync`` refused by the kernel, ``connecting ->
backoff`` on ``attempt_failed``, the retry timer armed again. A month of IB's
schedule (``benchmarks/month.py``) holds about 41,000 of them, so their cost
is a share of the month's wall time that no quiet-time cut touches.

This script runs a ``ConnectionManager`` with its defaults on a
``VirtualTimeLoop`` (``LoopClock``) against a loopback port nobody listens
on, lets the series reach its long-outage delay, then measures ``--hours`` of
virtual time: CPU time (``time.process_time``, which a busy neighbour does not
move) and wall time per refused attempt, median over ``--runs`` windows. Then
one window under cProfile gives the figures load does not move: Python
function calls and loop turns (``_run_once``) per attempt, and ``execute``
calls of ``transitions`` per attempt (one per row tried). ``prof`` (or
``--profile N``) prints the N functions that cost most.

Run (``_common`` is found beside the script, as for every benchmark)::

    uv run python benchmarks/refused_attempt.py            # 5 windows of 3 h, ~15-30 s
    uv run python benchmarks/refused_attempt.py prof       # and where an attempt goes
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import socket
import time
from datetime import datetime, timezone

from _common import header, median, parser, quiet_logging, table
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.clock import LoopClock
from ibkr_connection.simulator.month import VirtualTimeLoop

CLIENT_ID = 7
#: Virtual time before the measured window: the series is on its long-outage delay.
SETTLE = 600.0


def _free_port() -> int:
    """A loopback port nobody listens on (bound, then closed: connects are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def _windows(port: int, hours: float, runs: int,
                   profiler: cProfile.Profile | None) -> list[tuple[int, float, float]]:
    """Measure ``runs`` windows of ``hours`` (one more, profiled); (attempts, wall, cpu) each."""
    loop = asyncio.get_running_loop()
    clock = LoopClock(wall_start=datetime(2026, 3, 2, 12, tzinfo=timezone.utc), loop=loop)
    manager = ConnectionManager(IB(), ConnectionConfig(port=port, client_id=CLIENT_ID),
                                clock=clock)
    machine = manager.machine
    start = asyncio.ensure_future(manager.start())
    await asyncio.sleep(SETTLE)
    out: list[tuple[int, float, float]] = []
    for n in range(runs + (profiler is not None)):
        gc.collect()
        a0 = machine.attempt
        profiled = profiler is not None and n == runs
        t0, c0 = time.perf_counter(), time.process_time()
        if profiled:
            assert profiler is not None
            profiler.enable()
        await asyncio.sleep(hours * 3600)
        if profiled:
            assert profiler is not None
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append((machine.attempt - a0, wall, cpu))
    assert machine.state in (ConnectionState.BACKOFF, ConnectionState.CONNECTING), machine.state
    start.cancel()
    await manager.stop()
    return out


def main() -> None:
    """Parse the arguments, run the windows, print the table."""
    ap = parser(__doc__.splitlines()[0], default_runs=5)
    ap.add_argument("prof", nargs="?", choices=["prof"],
                    help="print the functions that cost most (as --profile 40)")
    ap.add_argument("--hours", type=float, default=None,
                    help="virtual hours per window (default 3; --quick 1)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N functions that cost most (tottime)")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    runs = args.runs or (3 if args.quick else 5)
    hours = args.hours or (1.0 if args.quick else 3.0)
    top = args.profile or (40 if args.prof else 0)
    header("refused connect attempts on virtual time", args)
    profiler = cProfile.Profile()
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    try:
        results = loop.run_until_complete(_windows(_free_port(), hours, runs, profiler))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    timed, (p_attempts, _, _) = results[:runs], results[runs]
    rows = [(f"window {i + 1}", a, w / a * 1e6, c / a * 1e6)
            for i, (a, w, c) in enumerate(timed)]
    print(table(["window", "attempts", "wall us/attempt", "CPU us/attempt"], rows))
    print()
    stats = pstats.Stats(profiler)
    raw = stats.stats  # type: ignore[attr-defined]
    calls = sum(nc for (_cc, nc, _tt, _ct, _callers) in raw.values())
    # Built-ins (cProfile's "~" entries) cost a fraction of a Python frame.
    frames = sum(nc for (f, _l, _fn), (_cc, nc, _tt, _ct, _callers) in raw.items() if f != "~")

    def count(name: str, file_part: str = "") -> int:
        return sum(v[0] for (f, _l, fn), v in raw.items()
                   if fn == name and file_part in f)

    cpus = [c / a * 1e6 for a, _, c in timed]
    print(f"median over {runs} windows of {hours:g} h: {median(cpus):.1f} us CPU "
          f"(best window {min(cpus):.1f}), "
          f"{median([w / a * 1e6 for a, w, _ in timed]):.1f} us wall per refused attempt")
    print(f"profiled window ({p_attempts} attempts): "
          f"{calls / p_attempts:.0f} calls ({frames / p_attempts:.0f} of Python functions, "
          "the rest built-ins), "
          f"{count('_run_once') / p_attempts:.2f} loop turns, "
          f"{count('execute', 'transitions') / p_attempts:.2f} transitions execute(), "
          f"{count('trigger', 'transitions') / p_attempts:.2f} transitions trigger() "
          "per attempt")
    if top:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(top)
        print(buf.getvalue())


if __name__ == "__main__":
    main()
