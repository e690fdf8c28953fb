"""Benchmark 1: recovery overhead after a gateway outage of 1 s, 5 s and 30 s.

The gateway drops every client, refuses connections for the outage, then
accepts again. The *recovery overhead* is the time from the gateway accepting
again until the bot is connected, its startup sync done and its market data
subscription re-issued. Contenders, one after the other in the same run, each
on its own simulator:

* ``manager``: ConnectionManager with its defaults (usable once
  ``subscriptionRestoredEvent`` fired).
* ``naive``: the seed's loop (connect, sleep 2 s, 3 attempts; started when the
  socket drops; then re-subscribes). The seed's ``time.sleep`` is an
  ``asyncio.sleep`` here because the simulator shares the event loop; the
  timing is the same.
* ``watchdog-tight``: ib_insync's Watchdog, retry delay and app start-up time
  0.1 s, driven by a stand-in controller; re-subscribes on ``startedEvent``.
* ``watchdog-default``: the same with Watchdog's defaults (2 s retry delay,
  30 s app start-up time). Long: part of the full run only.

The stand-in controller is an ideal IBC: the gateway app it starts is up the
moment the outage is over, so Watchdog's figures are a lower bound.

Run::

    uv run python benchmarks/recovery.py --quick     # 1 s and 5 s outages, 3 runs, ~1 min
    uv run python benchmarks/recovery.py             # 1/5/30 s, 5 runs, Watchdog defaults too
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from _common import (
    StandInController,
    contract,
    header,
    manager_config,
    median,
    parser,
    quiet_logging,
    settle,
    table,
    verdict,
    wait_until,
)
from ib_insync import IB, Watchdog

from ibkr_connection import ConnectionManager
from ibkr_connection.simulator.gateway import FakeGateway

CLIENT_ID = 7
#: Give up waiting for a recovery after the outage plus this (seconds).
PATIENCE = 45.0


@dataclass
class Run:
    """One outage, as one contender lived it."""

    overhead: float | None  # None: the contender gave up
    handshakes: int
    accepted: int
    attempts: int
    refused: int


@dataclass
class ConnectCounter:
    """Counts ``connectAsync`` calls on one IB and how many were refused."""

    attempts: int = 0
    refused: int = 0
    failed: int = 0

    def install(self, ib: IB) -> None:
        original = ib.connectAsync

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.attempts += 1
            try:
                return await original(*args, **kwargs)
            except ConnectionRefusedError:
                self.refused += 1
                raise
            except BaseException:
                self.failed += 1
                raise

        ib.connectAsync = counted  # type: ignore[method-assign]


@dataclass
class Contender:
    """A way of keeping a bot connected; subclasses fill in the hooks."""

    name: str
    gw: FakeGateway
    ib: IB = field(default_factory=IB)
    counter: ConnectCounter = field(default_factory=ConnectCounter)
    controller: StandInController | None = None
    recovered: asyncio.Future[float | None] | None = None

    async def setup(self) -> None:
        raise NotImplementedError

    async def teardown(self) -> None:
        raise NotImplementedError

    def arm(self) -> asyncio.Future[float | None]:
        """Return a future set to the time the bot is usable again (None: gave up)."""
        self.recovered = asyncio.get_running_loop().create_future()
        return self.recovered

    def _done(self, value: float | None) -> None:
        if self.recovered is not None and not self.recovered.done():
            self.recovered.set_result(value)

    async def ensure_connected(self) -> None:
        """After a run the contender gave up on: bring it back (not timed)."""


class ManagerContender(Contender):
    manager: ConnectionManager

    async def setup(self) -> None:
        self.counter.install(self.ib)
        manager = ConnectionManager(self.ib, manager_config(self.gw, CLIENT_ID))
        await manager.start(timeout=10)
        sub = manager.subscribe_market_data(contract())
        # The first outage must find the subscription issued: one still being
        # qualified when the socket drops is issued for the first time after the
        # reconnect, which is no restoration (no subscriptionRestoredEvent), and
        # the first run would read "gave up".
        await wait_until(lambda: sub.issued >= 1 and not sub.pending, 5.0)
        manager.subscriptionRestoredEvent += lambda sub: self._done(time.monotonic())
        self.manager = manager

    async def teardown(self) -> None:
        await self.manager.stop()


class NaiveContender(Contender):
    """The seed's ``connect()``: 3 attempts, 2 s apart, started on a drop."""

    task: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        self.counter.install(self.ib)
        await self.ib.connectAsync("127.0.0.1", self.gw.port, CLIENT_ID, timeout=20)
        self.ib.reqMktData(contract())
        self.ib.disconnectedEvent += self._on_disconnected

    def _on_disconnected(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        max_attempts = 3
        for attempt in range(1, max_attempts + 1):
            try:
                await self.ib.connectAsync("127.0.0.1", self.gw.port, CLIENT_ID, timeout=20)
                break
            except Exception:
                if attempt < max_attempts:
                    await asyncio.sleep(2)
                else:
                    self._done(None)
                    return
        self.ib.reqMktData(contract())
        self._done(time.monotonic())

    async def ensure_connected(self) -> None:
        if not self.ib.isConnected():
            await self.ib.connectAsync("127.0.0.1", self.gw.port, CLIENT_ID, timeout=20)
            self.ib.reqMktData(contract())

    async def teardown(self) -> None:
        self.ib.disconnectedEvent -= self._on_disconnected
        if self.task is not None:
            self.task.cancel()
        self.ib.disconnect()


@dataclass
class WatchdogContender(Contender):
    retry_delay: float = 2.0
    startup: float = 30.0
    watchdog: Any = None

    async def setup(self) -> None:
        self.counter.install(self.ib)
        self.controller = StandInController(self.gw)
        self.watchdog = Watchdog(
            self.controller, self.ib, port=self.gw.port, clientId=CLIENT_ID,
            appStartupTime=self.startup, retryDelay=self.retry_delay,
        )
        self.watchdog.startedEvent += self._on_started
        started = self.arm()
        self.watchdog.start()
        await asyncio.wait_for(started, self.startup + 30)

    def _on_started(self, watchdog: Any) -> None:
        self.ib.reqMktData(contract())
        self._done(time.monotonic())

    async def teardown(self) -> None:
        self.watchdog.stop()
        await asyncio.sleep(0.05)


async def one_outage(c: Contender, outage: float) -> Run:
    gw = c.gw
    await settle(gw, 1)
    handshakes, accepted = gw.handshakes, gw.accepted_connections
    attempts, refused = c.counter.attempts, c.counter.refused
    recovered = c.arm()
    if c.controller is not None:
        c.controller.outage_over.clear()
    await gw.stop_listening()
    await gw.drop_clients()
    # The outage ends early if the contender gave up meanwhile.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(recovered), outage)
    if not gw.listening:
        await gw.start_listening()
    listening_at = time.monotonic()
    if c.controller is not None:
        c.controller.outage_over.set()
    try:
        at = await asyncio.wait_for(recovered, PATIENCE)
    except asyncio.TimeoutError:
        at = None
    if at is not None and c.controller is not None:
        # The Watchdog may have killed and restarted the app after the outage.
        listening_at = max(listening_at, c.controller.listening_at)
    await asyncio.sleep(0.3)  # let late attempts show in the counters
    run = Run(
        overhead=None if at is None else at - listening_at,
        handshakes=gw.handshakes - handshakes,
        accepted=gw.accepted_connections - accepted,
        attempts=c.counter.attempts - attempts,
        refused=c.counter.refused - refused,
    )
    await c.ensure_connected()
    return run


def make(kind: str, gw: FakeGateway) -> Contender:
    if kind == "manager":
        return ManagerContender(kind, gw)
    if kind == "naive":
        return NaiveContender(kind, gw)
    if kind == "watchdog-tight":
        return WatchdogContender(kind, gw, retry_delay=0.1, startup=0.1)
    if kind == "watchdog-default":
        return WatchdogContender(kind, gw)
    raise ValueError(kind)


async def bench(kinds: list[str], outages: list[float], runs: int) -> dict[tuple[str, float],
                                                                         list[Run]]:
    results: dict[tuple[str, float], list[Run]] = {}
    for kind in kinds:
        async with FakeGateway() as gw:
            c = make(kind, gw)
            await c.setup()
            for outage in outages:
                for n in range(runs):
                    run = await one_outage(c, outage)
                    results.setdefault((kind, outage), []).append(run)
                    shown = "gave up" if run.overhead is None else f"{run.overhead:.3f}s"
                    print(f"  {kind:17s} outage {outage:4g}s run {n + 1}: overhead {shown}, "
                          f"handshakes {run.handshakes}, attempts {run.attempts} "
                          f"(refused {run.refused})", flush=True)
            await c.teardown()
    return results


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=5)
    ap.add_argument("--outages", type=float, nargs="+", default=None,
                    help="outage lengths in seconds (default 1 5 30; --quick 1 5)")
    ap.add_argument("--watchdog-defaults", action=argparse.BooleanOptionalAction, default=None,
                    help="include Watchdog with its defaults (default: on unless --quick)")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    runs = args.runs or (3 if args.quick else 5)
    outages = args.outages or ([1.0, 5.0] if args.quick else [1.0, 5.0, 30.0])
    with_defaults = args.watchdog_defaults if args.watchdog_defaults is not None \
        else not args.quick
    kinds = ["manager", "naive", "watchdog-tight"]
    if with_defaults:
        kinds.append("watchdog-default")
    header("recovery overhead after a gateway outage", args)
    print(f"runs per case: {runs}; outages: {', '.join(f'{o:g}s' for o in outages)}")
    results = asyncio.run(bench(kinds, outages, runs))
    print()
    rows = []
    for (kind, outage), rs in results.items():
        ok = [r.overhead for r in rs if r.overhead is not None]
        rows.append([
            kind, f"{outage:g}s", len(rs), len(rs) - len(ok), median(ok),
            min(ok) if ok else float("nan"), max(ok) if ok else float("nan"),
            max(r.handshakes for r in rs), max(r.accepted for r in rs),
            median([r.attempts for r in rs]), median([r.refused for r in rs]),
        ])
    print(table(["contender", "outage", "runs", "gave up", "median s", "min s", "max s",
                 "max handshakes", "max TCP accepts", "med attempts", "med refused"], rows))
    print()
    passed = True
    for outage in outages:
        mine = [r.overhead for r in results[("manager", outage)] if r.overhead is not None]
        m = median(mine)
        for kind in kinds[1:]:
            theirs = [r.overhead for r in results[(kind, outage)] if r.overhead is not None]
            if theirs:
                print(f"ratio {outage:g}s outage: manager / {kind} median overhead = "
                      f"{m / median(theirs):.3f} ({m:.3f}s vs {median(theirs):.3f}s)")
            else:
                print(f"ratio {outage:g}s outage: manager / {kind}: {kind} gave up in every run")
        gave_up = len(results[("manager", outage)]) - len(mine)
        passed &= verdict(f"manager median overhead after {outage:g}s", m, 0.25, "s")
        passed &= verdict(f"manager max handshakes per {outage:g}s outage",
                          max(r.handshakes for r in results[("manager", outage)]), 2)
        if gave_up:
            print(f"target: manager never gives up: gave up {gave_up} time(s) -> MISS")
            passed = False
    print(f"overall: {'PASS' if passed else 'MISS'}")


if __name__ == "__main__":
    main()
