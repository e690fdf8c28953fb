"""Benchmark: a month of IB's schedule on virtual time: the manager, Watchdog, a naive loop.

The same seeded month (``ibkr_connection.simulator.month.generate``: nightly
resets, the daily auto-restart, the weekly restart that waits for a person to
log in, farm flaps, 1100s, dropped sockets, hangs, wedges, a 1300, and ten
orders a weekday, one in ten caught by an order fault) is played, each
contender on its own ``FakeGateway`` and its own event loop, for:

* **manager**: ``ConnectionManager`` with its defaults and an ``IBCController``
  at the simulator's IBC command server (``FakeGateway(ibc_port=0)``).
* **watchdog**: ib_insync's ``Watchdog`` with its defaults and an IBC stand-in
  that sends ``RESTART`` to the same command server when Watchdog terminates
  the app (as ``benchmarks/escalation.py`` does).
* **naive**: the seed's loop (connect, on a drop 3 attempts 2 s apart, then
  give up until the next drop), as in ``benchmarks/recovery.py``.

Everything runs on one process and one loop per contender whose clock jumps to
the next timer whenever every task waits (``VirtualTimeLoop``; ``--loop
looptime`` runs the same on ``looptime``); socket I/O is real loopback. Every
clock in the path reads that loop: the manager through ``LoopClock``, the
simulator through ``FakeGateway(clock=...)``, ib_insync's timeouts are
``asyncio.wait_for`` on the loop, and its ``Wrapper`` (Watchdog's idle timer
reads ``datetime.now``) is given a ``datetime`` whose ``now`` reads the loop.

Two stand-ins, said here so the figures are read right: the simulator has no
historical data, so Watchdog's probe (``reqHistoricalDataAsync``) is answered
through ``reqCurrentTime`` (the same round trip; a real HMDS farm outage would
fail Watchdog's probe and restart the gateway, which this understates); and
the weekly login is a restart whose outage lasts until the person logs in.

Run::

    uv run python benchmarks/month.py --quick      # 2 days, every contender twice, ~40 s
    uv run python benchmarks/month.py              # 30 days; writes benchmarks/results/month.svg
    MONTH_CHECK_JUMPS=1 uv run python benchmarks/month.py --days 8 --contenders manager
        # the loop looks for I/O again before each jump and counts what turns up (~4x slower)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import ib_insync.wrapper as ib_wrapper
from _common import (
    contract,
    handler_counts,
    header,
    heap_info,
    quiet_logging,
    rss_after_trim,
    rss_bytes,
    table,
    verdict,
)
from ib_insync import IB, MarketOrder, Watchdog

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState, IBCController
from ibkr_connection.clock import LoopClock
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.month import (
    HOLD_LIMIT,
    MONTH_START,
    RATES,
    Month,
    VirtualTimeLoop,
    faults_from_steps,
    generate,
)
from ibkr_connection.simulator.scenario import run_scenario
from ibkr_connection.timeline import Band, Lane, Mark, render_svg
from ibkr_connection.wire.scenario import load_scenario, parse_scenario

S = ConnectionState
USABLE = (S.CONNECTED, S.DEGRADED)
#: Seconds IBC's RESTART keeps the simulated gateway down (a restart with its
#: automatic login; the daily restart's shortest outage).
IBC_OUTAGE = 60.0
CLIENT_ID = 7
#: Requests each gateway keeps (it counts them all).
REQUEST_LOG = 1_000
#: The day from whose end the steady-state memory growth is measured: the
#: month's first weekly login (Sunday night, day 6) is over, and with its hours
#: of refused connects the manager's transcript holds thousands of transitions
#: (seed 0: 6,569; from the next login on it stays between 5,000 and its cap,
#: ``transcript_limit``, 10,000, as it trims in chunks).
STEADY_DAY = 8
#: Source lines listed with --tracemalloc.
TRACED_TOP = 15
#: Where to write each run's transcript lines (to find where two runs part), if set.
DUMP = os.environ.get("MONTH_DUMP_TRANSCRIPT", "")
RETRY = ("connecting", "backoff")
UNSETTLED = ("PendingSubmit", "ApiPending", "Uncertain", "PreSubmitted")
#: Statuses after which the bot forgets a trade (its count stays).
FINAL = ("Filled", "Cancelled", "ApiCancelled")


#: Set (to anything but "" or "0"): the loop looks CHECK_LOOK of real time for I/O
#: before every jump and counts what turns up (a diagnostic mode; slower).
CHECK = os.environ.get("MONTH_CHECK_JUMPS", "") not in ("", "0")


def _loop_factory(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "looptime":
        import looptime

        return looptime.new_event_loop(start=0.0, noop_cycles=0)
    return VirtualTimeLoop(check=CHECK)


class _LoopDatetime(datetime):
    """``datetime`` whose ``now`` reads the virtual clock: for ib_insync's Wrapper timers."""

    #: The loop, and the wall time at its reading ``origin`` (the LoopClock's
    #: own first reading): ``now`` is the clock's ``wall()``, the same sum, read
    #: without two calls through the clock (ib_insync reads it on every socket
    #: read, once per idle heartbeat probe: ~837,000 times a month).
    loop: asyncio.AbstractEventLoop | None = None
    start: datetime = datetime.min
    origin: float = 0.0

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        assert cls.loop is not None
        wall = cls.start + timedelta(seconds=cls.loop.time() - cls.origin)
        if tz is None:
            return wall.astimezone().replace(tzinfo=None)
        return wall if tz is wall.tzinfo else wall.astimezone(tz)


@dataclass
class Run:
    """What one contender lived through in one run of the month."""

    name: str
    wall: float = 0.0
    cpu: float = 0.0
    #: (time, label, believed usable) at every change, from the contender's side.
    labels: list[tuple[float, str, bool]] = field(default_factory=list)
    #: (time, stalled) at every change of the gateway's hang or wedge.
    stalls: list[tuple[float, bool]] = field(default_factory=list)
    #: The transcript, hashed as it grows (a list would be the benchmark's own
    #: memory growth: a weekly login is hours of refused connects, 4 a second).
    transcript_hash: Any = field(default_factory=hashlib.sha256)
    transcript_lines: int = 0
    ibc_restarts: int = 0
    orders: dict[str, int] = field(default_factory=dict)
    rss_growth: int = 0
    #: glibc's main heap from the end of day 1 to the end: (in use, kept free)
    #: growth in bytes (None: no mallinfo2, or a run read after malloc_trim).
    heap_growth: tuple[int, int] | None = None
    #: RSS growth from the end of STEADY_DAY to the end (None: a shorter month).
    rss_steady: int | None = None
    #: Whether the RSS readings came after malloc_trim (see rss_after_trim).
    trimmed: bool = False
    traced_growth: int | None = None
    #: With tracing: the source lines holding the most of the traced growth.
    traced_top: list[str] = field(default_factory=list)
    #: Live tasks and handlers at the end minus those at the end of day 1.
    tasks_growth: int = 0
    handlers_growth: int = 0
    #: The manager's transcript length at the end of day 1, STEADY_DAY and the month.
    transcript_sizes: list[tuple[str, int]] = field(default_factory=list)
    tasks_end: int = 0
    handlers_end: dict[str, int] = field(default_factory=dict)
    probes: int = 0
    end: float = 0.0
    #: Jumps the VirtualTimeLoop held back for bytes in flight between its sockets.
    holds: int = 0
    #: Jumps the loop took though I/O might still have been under way: after
    #: HOLD_LIMIT (forced), after the 50 ms wait for a peer outside (outside);
    #: with MONTH_CHECK_JUMPS, jumps its look found I/O for (late) and jumps taken
    #: while another thread ran (threaded). All 0: no jump raced real I/O.
    forced: int = 0
    outside: int = 0
    late: int | None = None
    threaded: int | None = None
    jumps: int = 0

    dump: list[str] | None = None

    def note(self, line: str) -> None:
        """Add a line to the transcript."""
        self.transcript_hash.update(line.encode() + b"\n")
        self.transcript_lines += 1
        if self.dump is not None:
            self.dump.append(line)

    def digest(self) -> str:
        """A hash of the transcript (the same seed must give the same one)."""
        return str(self.transcript_hash.hexdigest()[:16])


class Bot:
    """The part every contender shares: the orders of the month, and its ledger of fills.

    It keeps what the tally needs and no more (a bot running for months must
    not hold every order it placed): the trades not final yet, counts, and
    the gateway's executions it has not seen (counted as the gateway books
    them, since the gateway, like TWS, keeps one day of them).
    """

    def __init__(self, run: Run, gw: FakeGateway, ib: IB, month: Month,
                 usable: Callable[[], bool], wait_usable: Callable[[], Any],
                 origin: float) -> None:
        self.run, self.gw, self.ib, self.month = run, gw, ib, month
        self.usable, self.wait_usable = usable, wait_usable
        self.origin = origin
        #: The latest trade of each order not final yet, by orderRef.
        self.trades: dict[str, Any] = {}
        self.placed = 0
        #: Final statuses of the trades dropped from ``trades``.
        self.final: dict[str, int] = {}
        #: The gateway's side, counted as it books: orders and quantity filled per
        #: orderRef (a few bytes an order), and executions the bot has not seen.
        self.gw_orders: dict[str, int] = {}
        self.gw_filled: dict[str, float] = {}
        self.unseen_exec: set[str] = set()
        self._count_gateway()
        ib.execDetailsEvent += self._on_fill

    def _count_gateway(self) -> None:
        book = self.gw.book
        add_order, fill = book.add_order, book.fill

        def counted_order(order: Any) -> Any:
            if order.order_ref.startswith("month-"):
                self.gw_orders[order.order_ref] = self.gw_orders.get(order.order_ref, 0) + 1
            return add_order(order)

        def counted_fill(*args: Any, **kwargs: Any) -> Any:
            ex = fill(*args, **kwargs)
            ref = ex.order.order_ref
            if ref.startswith("month-"):
                self.gw_filled[ref] = self.gw_filled.get(ref, 0.0) + ex.shares
                self.unseen_exec.add(ex.exec_id)
            return ex

        book.add_order = counted_order  # type: ignore[method-assign]
        book.fill = counted_fill  # type: ignore[method-assign]

    def _on_fill(self, trade: Any, fill: Any) -> None:
        self.unseen_exec.discard(fill.execution.execId)

    def snapshot_fills(self) -> None:
        """What the session's startup sync told the bot about fills."""
        for fill in self.ib.fills():
            self.unseen_exec.discard(fill.execution.execId)

    async def play_orders(self, loop: asyncio.AbstractEventLoop) -> None:
        for planned in self.month.orders:
            wait = self.origin + planned.at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not self.usable():
                await self.wait_usable()
            if planned.fault is not None:
                getattr(self.gw, planned.fault)("placeOrder", CLIENT_ID)
            self.placed += 1
            self.place(planned.ref)
            self.run.note(f"{loop.time():.6f} order {planned.ref} {planned.fault or '-'}")

    def place(self, ref: str) -> None:
        order = MarketOrder("BUY", 1, orderRef=ref)
        self.track(ref, self.ib.placeOrder(contract(), order))

    def track(self, ref: str, trade: Any) -> None:
        """Make ``trade`` the order's latest; drop the trades that are final."""
        self.trades[ref] = trade
        for key, known in list(self.trades.items()):
            status = known.orderStatus.status
            if status in FINAL:
                del self.trades[key]
                self.final[status] = self.final.get(status, 0) + 1

    def tally(self) -> dict[str, int]:
        """Orders placed, in doubt, not received, sent twice; fills lost or doubled."""
        statuses = dict(self.final)
        for trade in self.trades.values():
            status = trade.orderStatus.status
            statuses[status] = statuses.get(status, 0) + 1
        return {
            "placed": self.placed,
            "uncertain": sum(n for s, n in statuses.items() if s in UNSETTLED),
            "not received": statuses.get("NotReceived", 0),
            "sent twice": sum(n > 1 for n in self.gw_orders.values()),
            "fills lost": len(self.unseen_exec),
            "fills doubled": sum(q > 1 for q in self.gw_filled.values()),
        }


def _watch_stalls(gw: FakeGateway, run: Run, loop: asyncio.AbstractEventLoop,
                  origin: float) -> None:
    # IBC's RESTART clears a hang or wedge through clear_faults (since 14abf5e; it
    # called unstall before): watched too, or the gateway would count as hung from
    # the first restart that cleared one to the end of the run.
    for name, value in (("stall", True), ("wedge", True), ("unstall", False),
                        ("clear_faults", False)):
        original = getattr(gw, name)

        def wrapped(*args: Any, _orig: Any = original, _value: bool = value,
                    **kwargs: Any) -> Any:
            if gw.stalled != _value:
                run.stalls.append((loop.time() - origin, _value))
            return _orig(*args, **kwargs)

        setattr(gw, name, wrapped)


async def _play_gateway(gw: FakeGateway, month: Month) -> None:
    scenario = parse_scenario({"step": month.steps}, "month")
    await run_scenario(gw, scenario)


class RestartingIBC:
    """Stands in for ib_insync's ``IBC``: terminating the app sends RESTART to IBC's server."""

    def __init__(self, gw: FakeGateway) -> None:
        self.gw = gw
        self.terminations = 0

    async def startAsync(self) -> None:
        """The app runs already (IBC's RESTART brings it back by itself)."""

    async def terminateAsync(self) -> None:
        """Ask IBC's command server to restart the gateway."""
        assert self.gw.ibc is not None
        self.terminations += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", self.gw.ibc.port)
        writer.write(b"RESTART\n")
        await writer.drain()
        await reader.readline()
        writer.close()


async def _contender(name: str, month: Month, trace: bool, trim: bool = False) -> Run:
    loop = asyncio.get_running_loop()
    run = Run(name)
    read_rss: Callable[[], int | None] = rss_after_trim if trim else rss_bytes
    run.trimmed = trim
    if DUMP:
        run.dump = []
    clock = LoopClock(wall_start=month.start, loop=loop)
    clock.monotonic()  # second 0 of the month is now
    origin = loop.time()
    _LoopDatetime.loop, _LoopDatetime.start, _LoopDatetime.origin = loop, month.start, origin
    saved_datetime = ib_wrapper.datetime
    ib_wrapper.datetime = _LoopDatetime  # type: ignore[misc]
    # The gateway keeps its latest requests only (a month is ~900,000 probes)
    # and counts them all: its record is not the contender's growth.
    gw = FakeGateway(clock=clock, ibc_port=0, ibc_restart_outage=IBC_OUTAGE,
                     request_log_limit=REQUEST_LOG)
    await gw.start()
    _watch_stalls(gw, run, loop, origin)
    # The gateway's timeline starts at second 0, so faults and states share one time base.
    player = asyncio.ensure_future(_play_gateway(gw, month))
    ib = IB()
    day = 86400.0

    def label(text: str, usable: bool) -> None:
        t = loop.time() - origin
        run.note(f"{t:.6f} {text}")
        last = run.labels[-1] if run.labels else None
        if last is not None and text in RETRY and last[1] in (*RETRY, "retrying"):
            # Connecting and backoff alternate up to 4 times a second while the
            # gateway is down: one "retrying" band, not thousands.
            run.labels[-1] = (last[0], "retrying", False)
        elif last is None or last[1:] != (text, usable):
            run.labels.append((t, text, usable))

    stop: Callable[[], Any]
    if name == "manager":
        assert gw.ibc is not None
        manager = ConnectionManager(ib, ConnectionConfig(port=gw.port, client_id=CLIENT_ID),
                                    clock=clock,
                                    controller=IBCController("127.0.0.1", gw.ibc.port))
        manager.stateChangeEvent += lambda t: label(t.dest.value, t.dest in USABLE)
        bot = Bot(run, gw, ib, month, lambda: manager.usable,
                  lambda: manager.wait_for(*USABLE), origin)

        def on_resolved(trade: Any, outcome: Any) -> None:
            ref = trade.order.orderRef
            if outcome.status == "NotReceived":
                trade.orderStatus.status = "NotReceived"
                bot.place(ref)  # the gateway never had it: placing it again is safe
            else:
                bot.track(ref, outcome.trade if outcome.trade is not None else trade)

        manager.orderResolvedEvent += on_resolved
        manager.stateChangeEvent += lambda t: bot.snapshot_fills() if t.dest in USABLE else None
        await manager.start(timeout=60)
        label(manager.state.value, True)

        async def stop_manager() -> None:
            await manager.stop()

        stop = stop_manager
        handlers = lambda: handler_counts(ib, manager)  # noqa: E731
    else:
        connected = asyncio.Event()

        def on_connected() -> None:
            connected.set()
            label("connected", True)
            bot.snapshot_fills()

        def on_disconnected() -> None:
            connected.clear()
            label("disconnected", False)

        ib.connectedEvent += on_connected
        ib.disconnectedEvent += on_disconnected
        bot = Bot(run, gw, ib, month, ib.isConnected, connected.wait, origin)
        if name == "watchdog":
            controller = RestartingIBC(gw)

            async def probe(*_: Any, **__: Any) -> list[Any]:
                # The simulator has no historical data: the same round trip, answered.
                return [await ib.reqCurrentTimeAsync()]

            ib.reqHistoricalDataAsync = probe  # type: ignore[method-assign]
            watchdog = Watchdog(controller, ib, port=gw.port, clientId=CLIENT_ID)
            watchdog.start()
            await connected.wait()

            async def stop_watchdog() -> None:
                runner = watchdog._runner
                watchdog.stop()
                run.ibc_restarts = controller.terminations
                if runner is not None:
                    runner.cancel()
                    await asyncio.gather(runner, return_exceptions=True)

            stop = stop_watchdog
            handlers = lambda: handler_counts(ib, watchdog)  # noqa: E731
        else:
            naive = Naive(ib, gw.port)
            await naive.start()

            async def stop_naive() -> None:
                naive.stop()

            stop = stop_naive
            handlers = lambda: handler_counts(ib)  # noqa: E731

    def live_tasks() -> int:
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    def note_transcript(when: str) -> None:
        if name == "manager":
            run.transcript_sizes.append((when, len(manager.transcript)))

    orders = asyncio.ensure_future(bot.play_orders(loop))
    # A warm-up day before the memory baseline, then the rest of the month.
    await asyncio.sleep(min(day, month.seconds) - (loop.time() - origin))
    gc.collect()
    rss0 = read_rss() or 0
    heap0 = None if trim else heap_info()
    tasks0, handlers0 = live_tasks(), sum(handlers().values())
    note_transcript("day 1")
    if trace:
        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
    rss_steady0 = None
    if month.seconds > STEADY_DAY * day:
        # The steady state: bounded containers (nearly) full (see STEADY_DAY).
        await asyncio.sleep(STEADY_DAY * day - (loop.time() - origin))
        gc.collect()
        rss_steady0 = read_rss() or 0
        note_transcript(f"day {STEADY_DAY}")
    await asyncio.sleep(month.seconds - (loop.time() - origin))
    gc.collect()
    rss_end = read_rss() or 0
    heap_end = None if heap0 is None else heap_info()
    if heap0 is not None and heap_end is not None:
        run.heap_growth = (heap_end[0] - heap0[0], heap_end[1] - heap0[1])
    run.rss_growth = rss_end - rss0
    run.rss_steady = None if rss_steady0 is None else rss_end - rss_steady0
    run.tasks_growth = live_tasks() - tasks0
    run.handlers_growth = sum(handlers().values()) - handlers0
    note_transcript("the end")
    if trace:
        run.traced_growth = tracemalloc.get_traced_memory()[0] - traced0
        # Allocated since day 1 and still live (what was allocated before and
        # freed since is not traced, so a bounded container that turned over,
        # the transcript, shows its new entries, not its net growth).
        top = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]).statistics("lineno")
        run.traced_top = [str(stat) for stat in top[:TRACED_TOP]]
        tracemalloc.stop()
    run.end = loop.time() - origin
    # The month is over: a last look at the fills (the bot's own sync), then the tally.
    if ib.isConnected():
        bot.snapshot_fills()
    run.orders = bot.tally()
    run.probes = gw.requests.counts["reqCurrentTime"]
    for task in (player, orders):
        task.cancel()
    await asyncio.gather(player, orders, return_exceptions=True)
    run.handlers_end = handlers()
    run.tasks_end = len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
    if name == "manager":
        assert gw.ibc is not None
        run.ibc_restarts = gw.ibc.restarts
    for key, value in run.orders.items():
        run.note(f"tally {key} {value}")
    await stop()
    ib.disconnect()
    await gw.stop()
    ib_wrapper.datetime = saved_datetime  # type: ignore[misc]
    return run


class Naive:
    """The seed's loop: on a drop, 3 attempts 2 s apart, then nothing until the next drop."""

    def __init__(self, ib: IB, port: int) -> None:
        self.ib, self.port = ib, port
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.ib.connectAsync("127.0.0.1", self.port, CLIENT_ID, timeout=20)
        self.ib.reqMktData(contract())
        self.ib.disconnectedEvent += self._on_disconnected

    def _on_disconnected(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        for attempt in range(1, 4):
            try:
                await self.ib.connectAsync("127.0.0.1", self.port, CLIENT_ID, timeout=20)
            except Exception:
                if attempt < 3:
                    await asyncio.sleep(2)
                continue
            self.ib.reqMktData(contract())
            return

    def stop(self) -> None:
        self.ib.disconnectedEvent -= self._on_disconnected
        if self.task is not None:
            self.task.cancel()


def one_run(name: str, month: Month, loop_kind: str, trace: bool, trim: bool = False) -> Run:
    """Run one contender through the month on a fresh virtual-time loop.

    With ``trim``, every RSS reading follows a ``malloc_trim(0)``
    (:func:`_common.rss_after_trim`): the manager's second run of the seed.
    """
    loop = _loop_factory(loop_kind)
    asyncio.set_event_loop(loop)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        run = loop.run_until_complete(_contender(name, month, trace, trim))
        run.holds = getattr(loop, "holds", 0)
        run.jumps = getattr(loop, "jumps", 0)
        run.forced = getattr(loop, "forced", 0)
        run.outside = getattr(loop, "outside", 0)
        if getattr(loop, "check", False):
            run.late, run.threaded = loop.late, loop.threaded  # type: ignore[attr-defined]
            for line in loop.late_what:  # type: ignore[attr-defined]
                print(f"    late I/O {line}", flush=True)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
    run.wall = time.perf_counter() - t0
    run.cpu = time.process_time() - c0
    if DUMP and run.dump is not None:
        path = Path(f"{DUMP}.{name}.{run.digest()}.txt")
        path.write_text("\n".join(run.dump) + "\n", encoding="utf-8")
        run.dump = None
    return run


async def _idle_hour(bare: bool) -> tuple[int, float, float]:
    """An idle simulated hour: the manager's heartbeat, or a bare client probing as often."""
    loop = asyncio.get_running_loop()
    clock = LoopClock(wall_start=MONTH_START, loop=loop)
    async with FakeGateway(clock=clock) as gw:
        ib = IB()
        if bare:
            await ib.connectAsync("127.0.0.1", gw.port, CLIENT_ID)
            done: asyncio.Future[None] = loop.create_future()

            def tick() -> None:
                ib.reqCurrentTimeAsync().add_done_callback(  # type: ignore[attr-defined]
                    lambda _: loop.call_later(3.0, tick) if not done.done() else None)

            loop.call_later(3.0, tick)
        else:
            manager = ConnectionManager(ib, ConnectionConfig(port=gw.port, client_id=CLIENT_ID),
                                        clock=clock)
            await manager.start(timeout=60)
        before = len(gw.requests_named("reqCurrentTime"))
        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.sleep(3600.0)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        probes = len(gw.requests_named("reqCurrentTime")) - before
        if bare:
            done.set_result(None)
            ib.disconnect()
        else:
            await manager.stop()
    return probes, wall, cpu


def probe_cost(loop_kind: str) -> dict[str, tuple[int, float, float]]:
    """The cost of one idle probe cycle (manager + client + simulator), and of a bare client's."""
    out = {}
    for name, bare in (("manager heartbeat", False), ("bare ib_insync reqCurrentTime", True)):
        loop = _loop_factory(loop_kind)
        asyncio.set_event_loop(loop)
        try:
            out[name] = loop.run_until_complete(_idle_hour(bare))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    return out


# -- accounting ---------------------------------------------------------------------------


def _spans_where(run: Run, end: float) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """Truly usable spans (believed usable and the gateway not hung), and time per label."""
    events: list[tuple[float, int, Any]] = [(t, 0, (text, ok)) for t, text, ok in run.labels]
    events += [(t, 1, stalled) for t, stalled in run.stalls]
    events.sort(key=lambda e: (e[0], e[1]))
    label, believed, stalled = "start", False, False
    spans: list[tuple[float, float]] = []
    per_label: dict[str, float] = {}
    last = 0.0
    open_at: float | None = None
    for t, kind, value in [*events, (end, 2, None)]:
        per_label[label] = per_label.get(label, 0.0) + (t - last)
        last = t
        if kind == 0:
            label, believed = value
        elif kind == 1:
            stalled = value
        usable = believed and not stalled and kind != 2
        if usable and open_at is None:
            open_at = t
        elif not usable and open_at is not None:
            spans.append((open_at, t))
            open_at = None
    per_label.pop("start", None)
    return spans, per_label


def _overlap(spans: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    total = 0.0
    for a, b in spans:
        for c, d in windows:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                total += hi - lo
    return total


def _complement(spans: list[tuple[float, float]], end: float) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    last = 0.0
    for a, b in sorted(spans):
        a, b = min(a, end), min(b, end)
        if b <= a:
            continue
        if a > last:
            out.append((last, a))
        last = max(last, b)
    if last < end:
        out.append((last, end))
    return out


def availability(run: Run, month: Month) -> dict[str, Any]:
    """Availability over the time the gateway could serve, and over non-maintenance time."""
    end = run.end
    usable, per_label = _spans_where(run, end)
    serve = _complement([(a, b) for a, b, _ in month.cannot_serve()], end)
    plain = _complement(month.reset_windows(), end)
    serve_total = sum(b - a for a, b in serve)
    plain_total = sum(b - a for a, b in plain)
    recoveries: dict[str, list[float]] = {}
    for fault in month.faults:
        if fault.kind == "farm_flap" or fault.at >= end:
            continue
        back = fault.at + fault.duration
        if any(a <= fault.at and b >= back + 1e-3 for a, b in usable):
            recoveries.setdefault(fault.kind, []).append(0.0)  # never stopped being usable
            continue
        later = [a for a, _ in usable if a >= fault.at]
        first = min(later) if later else end
        # Only the time the gateway could serve counts: a later restart or
        # login inside the gap is the schedule's, not the contender's.
        recoveries.setdefault(fault.kind, []).append(
            _overlap([(back, first)], serve) if first > back else 0.0)
    return {
        "usable": usable,
        "serve": _overlap(usable, serve) / serve_total if serve_total else float("nan"),
        "plain": _overlap(usable, plain) / plain_total if plain_total else float("nan"),
        "per_label": per_label,
        "recoveries": recoveries,
    }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def picture(month: Month, runs: list[Run], path: Path) -> None:
    """Write the month as an SVG: a lane per contender, faults marked underneath."""
    lanes = []
    for run in runs:
        bands = [Band(a, b, text) for (a, text, _), (b, _, _) in
                 zip(run.labels, [*run.labels[1:], (run.end, "", False)], strict=True)]
        bands += [Band(a, b, "hung") for a, b in _stall_spans(run)]
        lanes.append(Lane(run.name, bands))
    marks = [Mark(f.at, f.kind, f.detail) for f in month.faults]
    windows = month.reset_windows()
    path.write_text(render_svg(lanes, marks, end=month.seconds, windows=windows,
                               title=f"{month.days} simulated days from "
                               f"{month.start:%Y-%m-%d %H:%M} UTC, seed {month.seed}"),
                    encoding="utf-8")


def _stall_spans(run: Run) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for t, stalled in run.stalls:
        if stalled and start is None:
            start = t
        elif not stalled and start is not None:
            spans.append((start, t))
            start = None
    if start is not None:
        spans.append((start, run.end))
    return spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=None, help="simulated days (default 30)")
    ap.add_argument("--quick", action="store_true", help="2 days, every contender twice")
    ap.add_argument("--seed", type=int, default=0, help="the month's seed (default 0)")
    ap.add_argument("--contenders", nargs="+", default=["manager", "watchdog", "naive"],
                    choices=["manager", "watchdog", "naive"])
    ap.add_argument("--repeat", choices=["none", "manager", "all"], default=None,
                    help="run again with the same seed to compare transcripts "
                    "(default: manager; all with --quick)")
    ap.add_argument("--loop", choices=["own", "looptime"], default="own",
                    help="the virtual-time loop (default: the simulator's VirtualTimeLoop)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also trace Python allocations (slows the run about 3x)")
    ap.add_argument("--svg", type=Path, default=Path(__file__).parent / "results" / "month.svg")
    ap.add_argument("--scenario", type=Path, default=None,
                    help="play the gateway's side from this scenario file (e.g. an edited "
                    "benchmarks/month.toml) instead of the generated one; orders stay generated")
    ap.add_argument("--toml", type=Path, default=None,
                    help="also write the month's scenario (the gateway's side) to this file")
    ap.add_argument("--verbose", action="store_true", help="show library log lines")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    days = args.days or (2 if args.quick else 30)
    repeat = args.repeat or ("all" if args.quick else "manager")
    header(f"a month of IB's schedule: {days} simulated days", args)
    month = generate(args.seed, days)
    if args.scenario:
        scenario = load_scenario(args.scenario)
        month.steps = [{"at": step.at, "action": step.action, **step.params}
                       for step in scenario.steps]
        month.faults = faults_from_steps(month.steps)
        print(f"gateway's side from {args.scenario}: {len(month.steps)} steps")
    if args.toml:
        args.toml.write_text(month.toml(), encoding="utf-8")
        print(f"scenario written: {args.toml}")
    kinds: dict[str, int] = {}
    for f in month.faults:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    print(f"month: {len(month.steps)} gateway steps, faults {kinds}, {len(month.orders)} orders "
          f"({sum(o.fault is not None for o in month.orders)} into an order fault)")
    print(f"loop: {args.loop}; rates and their sources: ibkr_connection.simulator.month.RATES")
    print()
    costs = probe_cost(args.loop)
    for what, (probes, wall, cpu) in costs.items():
        print(f"idle probe cycle, {what}: {probes} probes in a simulated hour, "
              f"{1e3 * wall / probes:.3f} ms wall, {1e3 * cpu / probes:.3f} ms CPU each")
    print()
    runs: list[Run] = []
    again: dict[str, Run] = {}
    for name in args.contenders:
        run = one_run(name, month, args.loop, args.tracemalloc)
        runs.append(run)
        print(f"  {name:8s} {days} days in {run.wall:.1f}s wall ({run.cpu:.1f}s CPU), "
              f"{run.probes} reqCurrentTime, {run.end / run.wall:,.0f} simulated s per wall s, "
              f"{_jumps_said(run)}", flush=True)
        if repeat == "all" or (repeat == "manager" and name == "manager"):
            # The second run reads RSS after malloc_trim: what the process holds
            # in use, without the free heap the C allocator keeps.
            trim = name == "manager" and rss_after_trim() is not None
            again[name] = one_run(name, month, args.loop, False, trim)
            same = again[name].digest() == run.digest()
            print(f"  {name:8s} again: {again[name].wall:.1f}s wall, "
                  f"{_jumps_said(again[name])}, transcript "
                  f"{'identical' if same else 'DIFFERENT'} ({run.digest()}"
                  f"{'' if same else ' then ' + again[name].digest()})", flush=True)
            if trim:
                twin = again[name]
                steady = "-" if twin.rss_steady is None else f"{twin.rss_steady / 1e6:+.2f}"
                print(f"  {name:8s} again, RSS read after malloc_trim: "
                      f"{twin.rss_growth / 1e6:+.2f} MB from the end of day 1, "
                      f"{steady} MB from the end of day {STEADY_DAY}", flush=True)
    print()
    stats = {run.name: availability(run, month) for run in runs}
    rows = []
    for run in runs:
        st = stats[run.name]
        o = run.orders
        rows.append([run.name, f"{run.wall:.1f}", f"{100 * st['serve']:.3f}%",
                     f"{100 * st['plain']:.3f}%", run.ibc_restarts, o["placed"], o["uncertain"],
                     o["not received"], o["sent twice"], o["fills lost"], o["fills doubled"],
                     f"{run.rss_growth / 1e6:+.2f}",
                     "-" if run.rss_steady is None else f"{run.rss_steady / 1e6:+.2f}",
                     "-" if run.traced_growth is None else f"{run.traced_growth / 1e6:+.2f}",
                     run.tasks_end, sum(run.handlers_end.values()),
                     ("same" if again[run.name].digest() == run.digest() else "DIFFERENT")
                     if run.name in again else "not run"])
    print(table(["contender", "wall s", "avail (could serve)", "avail (non-maint.)",
                 "IBC restarts", "orders", "uncertain", "not recv", "sent twice",
                 "fills lost", "fills doubled", "RSS MB", f"RSS MB d{STEADY_DAY}+", "traced MB",
                 "tasks", "handlers",
                 "same seed"], rows))
    print()
    print(f"memory: RSS MB = growth from the end of day 1 to the end; RSS MB d{STEADY_DAY}+ = "
          f"from the end of day {STEADY_DAY} (bounded containers nearly full) to the end")
    for run in runs:
        sizes = ", ".join(f"{n:,} at {when}" for when, n in run.transcript_sizes)
        print(f"  {run.name:8s} tasks {run.tasks_growth:+d}, handlers {run.handlers_growth:+d} "
              f"since day 1" + (f"; transcript: {sizes}" if sizes else ""))
        if run.heap_growth is not None:
            # Part of what the RSS growth is made of: glibc's main heap (blocks
            # in use, and freed blocks it keeps for reuse); Python's small
            # objects live in its own arenas, outside it.
            used, kept = run.heap_growth
            print(f"  {run.name:8s} glibc heap since day 1: in use {used / 1e6:+.2f} MB, "
                  f"kept free {kept / 1e6:+.2f} MB (its size {(used + kept) / 1e6:+.2f} MB; "
                  f"RSS {run.rss_growth / 1e6:+.2f} MB)")
        if run.traced_top:
            print(f"  {run.name:8s} traced, allocated since day 1 and live at the end, by line:")
            for line in run.traced_top:
                print(f"    {line}")
    print()
    print("time per state (hours):")
    for run in runs:
        per = stats[run.name]["per_label"]
        ordered = sorted(per.items(), key=lambda kv: -kv[1])
        print(f"  {run.name:8s} " + ", ".join(f"{k} {v / 3600:.2f}" for k, v in ordered))
    print()
    print("recoveries by cause: seconds from the gateway able to serve again to usable, "
          "counting only time it could serve (p50 / p99 / max, n)")
    causes = sorted({c for st in stats.values() for c in st["recoveries"]})
    print(table(["cause", *[r.name for r in runs]], [
        [cause, *[_fmt_rec(stats[r.name]["recoveries"].get(cause, [])) for r in runs]]
        for cause in causes]))
    svg = args.svg
    svg.parent.mkdir(parents=True, exist_ok=True)
    picture(month, runs, svg)
    print()
    print(f"picture: {svg}")
    print()
    mine = next((r for r in runs if r.name == "manager"), None)
    if mine is not None:
        st = stats["manager"]
        scaled = mine.wall * 30 / days
        ok = verdict("manager wall time scaled to 30 days", scaled, 120.0, " s")
        ok &= verdict("manager availability over the time the gateway could serve",
                      100 * st["serve"], 99.9, "%", higher_is_better=True)
        ok &= verdict("manager orders uncertain after a sync", mine.orders["uncertain"], 0)
        ok &= verdict("manager orders sent twice", mine.orders["sent twice"], 0)
        ok &= verdict("manager fills lost or doubled",
                      mine.orders["fills lost"] + mine.orders["fills doubled"], 0)
        ok &= verdict("manager RSS growth after the first day", mine.rss_growth / 1e6, 2.0, " MB")
        if mine.rss_steady is not None:
            ok &= verdict(f"manager RSS growth from the end of day {STEADY_DAY}",
                          mine.rss_steady / 1e6, 2.0, " MB")
        twin = again.get("manager")
        if twin is not None and twin.trimmed:
            ok &= verdict("manager RSS growth after the first day, read after malloc_trim "
                          "(second run)", twin.rss_growth / 1e6, 2.0, " MB")
        ok &= verdict("manager tasks and handlers grown since the first day",
                      max(mine.tasks_growth, 0) + max(mine.handlers_growth, 0), 0)
        if "manager" in again:
            ok &= verdict("manager transcripts differing between two runs of the seed",
                          0 if again["manager"].digest() == mine.digest() else 1, 0)
        # A jump taken while real I/O may still be under way is where a transcript
        # can come to depend on the machine (results/month_determinism_2.txt).
        mine_runs = [mine, *([again["manager"]] if "manager" in again else [])]
        ok &= verdict("manager jumps forced past I/O under way (all runs)",
                      sum(r.forced + r.outside for r in mine_runs), 0)
        print(f"overall: {'PASS' if ok else 'MISS'}")
    print()
    print("rates: " + "; ".join(f"{k} {v.per_day:g}/day" for k, v in RATES.items()))
    print(f"python {sys.version.split()[0]}, finished {datetime.now(timezone.utc):%H:%M:%S} UTC")


def _jumps_said(run: Run) -> str:
    """The loop's account of its jumps: held for loopback I/O, and any that raced real I/O."""
    said = (f"{run.jumps:,} jumps, {run.holds} held for loopback I/O, "
            f"{run.forced + run.outside} forced")
    if run.forced + run.outside:
        said += (f" ({run.forced} after {HOLD_LIMIT:g} s of loopback I/O, {run.outside} past "
                 f"a peer outside: this run's virtual times may depend on the machine)")
    if run.late is not None:
        said += f", {run.late} late I/O found by the check, {run.threaded} with a thread alive"
    return said


def _fmt_rec(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{_pct(values, 0.5):.2f} / {_pct(values, 0.99):.2f} / {max(values):.2f} "
            f"({len(values)})")


if __name__ == "__main__":
    main()
