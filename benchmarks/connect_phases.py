"""Where a managed connect spends its time beyond bare ``IB.connectAsync``.

A diagnostic companion to ``connect_latency.py`` (no target, no verdict). It
stamps ``time.perf_counter()`` at the points where the manager adds work: each
input fed to the machine (in and out), the attempt task's first step, and the
call into and return from ``IB.connectAsync``. It wraps private methods of the
manager, so it is a tool for whoever works on connect latency, not an API.

With ``--bypass-transitions`` the machine's table is run by a plain
dictionary dispatcher instead of the ``transitions`` package (same rows,
guards, callbacks, entry and exit actions). That is an experiment to size what
``transitions`` costs on the connect path, not how the library runs.

Run::

    uv run python benchmarks/connect_phases.py            # 200 connects
    uv run python benchmarks/connect_phases.py --quick    # 50 connects
    uv run python benchmarks/connect_phases.py --bypass-transitions
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import header, manager_config, parser, quiet_logging, settle, table
from ib_insync import IB

from ibkr_connection import ConnectionManager
from ibkr_connection import driver as driver_module
from ibkr_connection import machine as machine_module
from ibkr_connection.outputs import JournalEntry, Step
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.table import ENTRY, EXIT, TABLE, ConnectionState, Phase, Row, guard_terms

STAMPS: dict[str, float] = {}


def _stamp(name: str) -> None:
    STAMPS.setdefault(name, time.perf_counter())


def _instrument() -> None:
    feed = ConnectionManager._feed

    @functools.wraps(feed)
    def timed_feed(self: ConnectionManager, inp: Any) -> Any:
        _stamp(f"feed {inp.kind.value}: in")
        try:
            return feed(self, inp)
        finally:
            _stamp(f"feed {inp.kind.value}: out")

    attempt = driver_module.Driver._attempt

    @functools.wraps(attempt)
    async def timed_attempt(self: Any, *args: Any) -> None:
        _stamp("attempt task: first step")
        await attempt(self, *args)

    connect = IB.connectAsync

    @functools.wraps(connect)
    async def timed_connect(self: IB, *args: Any, **kwargs: Any) -> Any:
        _stamp("IB.connectAsync: called")
        try:
            return await connect(self, *args, **kwargs)
        finally:
            _stamp("IB.connectAsync: returned")

    setattr(ConnectionManager, "_feed", timed_feed)  # noqa: B010
    setattr(driver_module.Driver, "_attempt", timed_attempt)  # noqa: B010
    setattr(IB, "connectAsync", timed_connect)  # noqa: B010


def bypass_transitions() -> None:
    """Run the table with a dictionary dispatcher (the experiment; see the docstring)."""
    cls = machine_module.ConnectionMachine
    actions = machine_module.ACTION_FUNCTIONS
    guards = machine_module.GUARD_FUNCTIONS
    rows: dict[tuple[str, str], list[Row]] = {}
    for row in TABLE:
        rows.setdefault((row.source.value, row.input.value), []).append(row)

    def holds(self: Any, guard: str | None, inp: Any) -> bool:
        return all(bool(guards[name](self, inp)) is wanted for name, wanted in guard_terms(guard))

    def handle(self: Any, inp: Any) -> Any:
        self._made = None
        self._out = []
        source = self._model.state
        group = rows[(source, inp.kind.value)]
        for name in group[0].actions_in(Phase.NOTE):
            actions[name](self, inp)
        for row in group:
            if not holds(self, row.guard, inp):
                continue
            for name in row.actions_in(Phase.BEFORE):
                actions[name](self, inp)
            self._record(inp, row)
            if row.dest is not None:
                for step in EXIT[ConnectionState(source)]:
                    if holds(self, step.guard, inp):
                        actions[step.action](self, inp)
                self._model.state = row.dest.value
                for step in ENTRY[row.dest]:
                    if holds(self, step.guard, inp):
                        actions[step.action](self, inp)
            for name in row.actions_in(Phase.AFTER):
                actions[name](self, inp)
            break
        state = self.state
        effects = tuple(self._out)
        if self.record_journal:
            self.journal.append(JournalEntry(self._clock.monotonic(), inp, state, effects))
        return Step(inp, self._made, effects, state)

    setattr(cls, "handle", handle)  # noqa: B010


def add_bypass_option(ap: argparse.ArgumentParser) -> None:
    """Add ``--bypass-transitions`` to a benchmark's arguments."""
    ap.add_argument("--bypass-transitions", action="store_true",
                    help="experiment: run the table without the transitions package")


def apply_bypass_option(args: argparse.Namespace) -> None:
    """Run the experiment if ``--bypass-transitions`` was given, and say so."""
    if args.bypass_transitions:
        bypass_transitions()
        print("EXPERIMENT: the table runs on a dictionary dispatcher, not transitions")
        print()


async def bench(connects: int) -> dict[str, list[float]]:
    ids = itertools.count(100)
    offsets: dict[str, list[float]] = {}

    async def one(record: Callable[[str, float], None] | None) -> None:
        ib = IB()
        manager = ConnectionManager(ib, manager_config(gw, next(ids)))
        STAMPS.clear()
        t0 = time.perf_counter()
        STAMPS["start() called"] = t0
        await manager.start(timeout=10)
        STAMPS["start() returned"] = time.perf_counter()
        stamps = dict(STAMPS)
        await manager.stop()
        if record is not None:
            for name, at in stamps.items():
                record(name, (at - t0) * 1e6)

    async with FakeGateway() as gw:
        for _ in range(5):
            await settle(gw, 0)
            await one(None)
        for _ in range(connects):
            await settle(gw, 0)
            await asyncio.sleep(0.02)
            await one(lambda name, us: offsets.setdefault(name, []).append(us))
    return offsets


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=200)
    add_bypass_option(ap)
    args = ap.parse_args()
    quiet_logging(args.verbose)
    connects = args.runs or (50 if args.quick else 200)
    header("connect phases", args)
    _instrument()
    apply_bypass_option(args)
    offsets = asyncio.run(bench(connects))
    rows = sorted(((name, statistics.median(v)) for name, v in offsets.items()),
                  key=lambda row: row[1])
    out: list[list[object]] = []
    previous = 0.0
    for name, median in rows:
        out.append([name, len(offsets[name]), median, median - previous])
        previous = median
    print(table(["point", "connects", "median us since start()", "us since the line above"],
                out))
    print()
    print("The stamps themselves cost about 1 us each. Lines between 'IB.connectAsync: called'")
    print("and 'returned' are the farm notices ib_insync passes on during the startup sync.")


if __name__ == "__main__":
    main()
