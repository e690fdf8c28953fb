"""Shared helpers for the benchmarks: arguments, tables, verdicts, contenders.

Every benchmark runs the manager and its comparison side by side, in the same
process and run, against :class:`~ibkr_connection.simulator.gateway.FakeGateway`
on loopback. Nothing here is imported by the library or its tests.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from eventkit import Event
from ib_insync import IB, Stock

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.simulator.gateway import FakeGateway

#: The contract every benchmark subscribes to.
SYMBOL = "AAPL"


def parser(description: str, default_runs: int) -> argparse.ArgumentParser:
    """Return an argument parser with the flags every benchmark shares.

    Args:
        description: the benchmark's one-line description.
        default_runs: runs per case unless ``--runs`` says otherwise.
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", type=int, default=None,
                    help=f"runs per case (default {default_runs}; --quick lowers it)")
    ap.add_argument("--quick", action="store_true", help="a short variant, about a minute")
    ap.add_argument("--verbose", action="store_true", help="show library log lines")
    return ap


def quiet_logging(verbose: bool) -> None:
    """Keep log lines off the table unless ``verbose``.

    Records are still created at their usual levels (the adapter's sync
    time-out catcher relies on ib_insync's ERROR lines); only output is dropped.
    """
    if verbose:
        logging.basicConfig(level=logging.INFO,
                            format="%(relativeCreated)8.0f %(name)s %(message)s")
    else:
        logging.getLogger().addHandler(logging.NullHandler())


def machine_name() -> str:
    """Return a one-line description of the host the figures come from."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{platform.node()}: {model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def header(title: str, args: argparse.Namespace) -> None:
    """Print the benchmark's title, the machine and the mode."""
    print(f"== {title} ==")
    print(f"machine: {machine_name()}")
    print(f"mode: {'quick' if args.quick else 'full'}, command: {' '.join(sys.argv)}")
    print()


def median(values: Sequence[float]) -> float:
    """Median of ``values`` (nan when empty)."""
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a plain-text table with right-aligned columns."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:.3f}"
    return str(value)


def verdict(label: str, value: float, target: float, unit: str = "",
            higher_is_better: bool = False) -> bool:
    """Print a ``target`` line with PASS or MISS; return whether it passed."""
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(f"target: {label}: {value:.3f}{unit} {sign} {target:g}{unit} -> "
          f"{'PASS' if ok else 'MISS'}")
    return ok


def rss_bytes() -> int:
    """The resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_after_trim() -> int | None:
    """The resident set size after glibc's ``malloc_trim(0)``; None without glibc.

    ``malloc_trim`` gives the pages of freed heap memory back to the system,
    so the reading leaves out what the C allocator holds free for reuse and
    keeps what is in use (Python's own object arenas included). Trimming
    changes every later plain reading, so a run takes one kind or the other.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim(0)
    return rss_bytes()


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc 2.33 and later), fields in their order."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def heap_info() -> tuple[int, int] | None:
    """glibc's main heap: (bytes in use, bytes free but kept); None without ``mallinfo2``.

    The bytes kept free are what glibc holds for reuse (freed blocks between
    blocks in use, the top it does not trim): pages of them that were touched
    count in RSS although nothing lives there. Python's small objects live in
    its own arenas, outside this heap; what glibc serves is the larger blocks
    (dicts and lists past a few hundred bytes, bytes objects, buffers).
    """
    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    info.restype = _MallInfo2
    got = info()
    return int(got.uordblks), int(got.fordblks)


def contract() -> Any:
    """The stock every benchmark streams."""
    return Stock(SYMBOL, "SMART", "USD")


def manager_config(gw: FakeGateway, client_id: int, **changes: Any) -> ConnectionConfig:
    """The manager's configuration: defaults, except where to connect."""
    return ConnectionConfig(host="127.0.0.1", port=gw.port, client_id=client_id,
                            **changes)


def handler_counts(*objs: Any) -> dict[str, int]:
    """Count the handlers connected to every eventkit ``Event`` of ``objs``."""
    counts: dict[str, int] = {}
    for obj in objs:
        for name in getattr(obj, "events", ()):
            event = getattr(obj, name, None)
            if isinstance(event, Event):
                counts[f"{type(obj).__name__}.{name}"] = len(event)
    return counts


async def wait_until(predicate: Callable[[], bool], timeout: float,
                     poll: float = 0.001) -> bool:
    """Poll ``predicate`` until it holds; return False on time-out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def start_manager(gw: FakeGateway, client_id: int,
                        **changes: Any) -> tuple[IB, ConnectionManager, Any]:
    """Connect a manager with default policy and one market data subscription.

    Returns:
        (ib, manager, handle) with the manager connected.
    """
    ib = IB()
    manager = ConnectionManager(ib, manager_config(gw, client_id, **changes))
    await manager.start(timeout=10)
    handle = manager.subscribe_market_data(contract())
    return ib, manager, handle


async def settle(gw: FakeGateway, clients: int, timeout: float = 5.0) -> None:
    """Wait until the gateway holds exactly ``clients`` ready API sessions."""
    await wait_until(lambda: len(gw.clients) == clients and len(gw.connections) == clients,
                     timeout)


class StandInController:
    """Plays IBC for ib_insync's ``Watchdog``: it starts and stops the simulator.

    ``startAsync`` is "start the gateway app": the app cannot come up while the
    benchmark holds an outage (it waits for :attr:`outage_over`), then the
    simulator listens again. ``terminateAsync`` is "kill the app": every client
    is dropped, listening stops, and a hang is cleared (a new app is not hung).

    Attributes:
        outage_over: set while the gateway app is allowed to run.
        listening_at: ``time.monotonic()`` of the last start that opened the port.
        starts: how many times the Watchdog started the app.
        terminations: how many times the Watchdog killed the app.
    """

    def __init__(self, gw: FakeGateway) -> None:
        self.gw = gw
        self.outage_over = asyncio.Event()
        self.outage_over.set()
        self.listening_at = 0.0
        self.starts = 0
        self.terminations = 0

    async def startAsync(self) -> None:
        """Start the app once no outage is held."""
        self.starts += 1
        await self.outage_over.wait()
        if not self.gw.listening:
            await self.gw.start_listening()
            self.listening_at = time.monotonic()

    async def terminateAsync(self) -> None:
        """Kill the app: drop everyone, stop listening, clear a hang."""
        self.terminations += 1
        await self.gw.stop_listening()
        await self.gw.drop_clients()
        if self.gw.stalled:
            self.gw.unstall()


def first_transition(manager: ConnectionManager,
                     match: Callable[[Any], bool]) -> asyncio.Future[tuple[float, Any]]:
    """A future resolved with (monotonic time, transition) of the next matching change."""
    fut: asyncio.Future[tuple[float, Any]] = asyncio.get_running_loop().create_future()

    def on_change(transition: Any) -> None:
        if not fut.done() and match(transition):
            fut.set_result((time.monotonic(), transition))
            manager.stateChangeEvent -= on_change

    manager.stateChangeEvent += on_change
    return fut


def is_usable(state: ConnectionState) -> bool:
    """True for connected and degraded."""
    return state in (ConnectionState.CONNECTED, ConnectionState.DEGRADED)
