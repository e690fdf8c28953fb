"""Benchmark 3: detection of a hung gateway, quiet-run false alarms, 1100 then 1102.

Three measurements, run concurrently, each contender on its own simulator:

* **Hang**: right after a tick the gateway stalls (socket open, nothing
  answered). Time from the stall to the manager's ``heartbeat_missed`` change
  of state (defaults: 3 s idle + 2 s probe), against Watchdog's hard time-out
  (defaults: 20 s app timeout + 4 s probe). Watchdog's app start-up time is set
  to 0.1 s so that its runs restart quickly; it is not part of the detection.
* **Quiet run**: a connected manager on a healthy but silent gateway for 10
  minutes (``--quiet SECONDS``): every heartbeat probe must be answered and no
  change of state may happen. (Watchdog is not run here: its probe is a
  historical data request, which the simulator does not serve, so it would
  always time out.)
* **1100 then 1102 after 1 s**: the manager goes to ``lost`` and back to
  ``connected`` on the same socket (no handshake), while Watchdog restarts the
  whole gateway on 1100 (defaults: 2 s retry delay + 30 s start-up = 32 s;
  tight: 0.1 s + 0.1 s).

Run::

    uv run python benchmarks/detect_hang.py --quick   # ~1 min: 45 s quiet, Watchdog tight
    uv run python benchmarks/detect_hang.py           # 5 runs, 10 min quiet, Watchdog defaults
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from _common import (
    StandInController,
    contract,
    first_transition,
    header,
    median,
    parser,
    quiet_logging,
    start_manager,
    table,
    verdict,
)
from ib_insync import IB, Watchdog

from ibkr_connection import ConnectionState, InputKind
from ibkr_connection.simulator.gateway import FakeGateway


@dataclass
class Outcome:
    """One 1100/1102 episode."""

    from_1100: float  # seconds from 1100 until usable again
    from_1102: float  # seconds from 1102 until usable again (negative: before it)
    handshakes: int
    accepted: int
    restarts: int


class WatchdogRig:
    """A Watchdog on its own simulator, with a stand-in controller."""

    def __init__(self, gw: FakeGateway, **settings: Any) -> None:
        self.gw = gw
        self.ib = IB()
        self.controller = StandInController(gw)
        self.watchdog = Watchdog(self.controller, self.ib, port=gw.port, clientId=21,
                                 **settings)
        self.hard: asyncio.Future[float] | None = None
        self.started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.watchdog.startedEvent += self._on_started
        self.watchdog.hardTimeoutEvent += self._on_hard

    def _on_started(self, _: Any) -> None:
        self.ib.reqMktData(contract())
        if not self.started.done():
            self.started.set_result(time.monotonic())

    def _on_hard(self, _: Any) -> None:
        if self.hard is not None and not self.hard.done():
            self.hard.set_result(time.monotonic())

    def arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.hard = loop.create_future()

    async def start(self, timeout: float) -> None:
        self.watchdog.start()
        await asyncio.wait_for(self.started, timeout)

    def stop(self) -> None:
        self.watchdog.stop()


async def manager_hangs(runs: int) -> list[float]:
    out: list[float] = []
    async with FakeGateway() as gw:
        _, manager, _ = await start_manager(gw, 31)
        for n in range(runs):
            await asyncio.sleep(0.2)
            missed = first_transition(
                manager, lambda t: t.trigger is InputKind.HEARTBEAT_MISSED)
            gw.push_tick("AAPL", 100.0 + n)
            await asyncio.sleep(0.01)  # the tick is in: the gateway hangs right after traffic
            gw.stall()
            t0 = time.monotonic()
            at, _ = await asyncio.wait_for(missed, 30)
            out.append(at - t0)
            gw.unstall()
            print(f"  hang run {n + 1}: manager detected after {out[-1]:.3f}s", flush=True)
            await manager.wait_for(ConnectionState.CONNECTED, timeout=30)
        await manager.stop()
    return out


async def watchdog_hangs(runs: int) -> list[float]:
    out: list[float] = []
    async with FakeGateway() as gw:
        rig = WatchdogRig(gw, appStartupTime=0.1)
        await rig.start(10)
        for n in range(runs):
            await asyncio.sleep(0.2)
            rig.arm()
            gw.push_tick("AAPL", 100.0 + n)
            await asyncio.sleep(0.01)
            gw.stall()
            t0 = time.monotonic()
            assert rig.hard is not None
            at = await asyncio.wait_for(rig.hard, 60)
            out.append(at - t0)
            print(f"  hang run {n + 1}: Watchdog detected after {out[-1]:.3f}s", flush=True)
            await asyncio.wait_for(rig.started, 60)
        rig.stop()
    return out


async def manager_1100(runs: int) -> list[Outcome]:
    out: list[Outcome] = []
    async with FakeGateway() as gw:
        _, manager, _ = await start_manager(gw, 32)
        for _n in range(runs):
            await asyncio.sleep(0.2)
            conn_ids = [c.conn_id for c in gw.clients]
            handshakes, accepted = gw.handshakes, gw.accepted_connections
            back = first_transition(manager, lambda t: t.dest is ConnectionState.CONNECTED)
            t1100 = time.monotonic()
            await gw.send_error(1100)
            await asyncio.sleep(1.0)
            t1102 = time.monotonic()
            await gw.send_error(1102)
            at, _ = await asyncio.wait_for(back, 10)
            await asyncio.sleep(0.1)
            same_socket = [c.conn_id for c in gw.clients] == conn_ids
            out.append(Outcome(at - t1100, at - t1102, gw.handshakes - handshakes,
                               gw.accepted_connections - accepted, 0 if same_socket else 1))
            print(f"  1100/1102 run: manager usable {out[-1].from_1102 * 1e3:.3f} ms after "
                  f"1102, same socket: {same_socket}", flush=True)
        await manager.stop()
    return out


async def watchdog_1100(runs: int, tight: bool) -> list[Outcome]:
    out: list[Outcome] = []
    settings: dict[str, float] = {"retryDelay": 0.1, "appStartupTime": 0.1} if tight else {}
    async with FakeGateway() as gw:
        rig = WatchdogRig(gw, **settings)
        await rig.start(60)
        name = "tight" if tight else "defaults"
        for _n in range(runs):
            await asyncio.sleep(0.2)
            handshakes, accepted = gw.handshakes, gw.accepted_connections
            restarts = rig.controller.terminations
            rig.arm()
            t1100 = time.monotonic()
            await gw.send_error(1100)
            await asyncio.sleep(1.0)
            t1102 = time.monotonic()
            await gw.send_error(1102)
            at = await asyncio.wait_for(rig.started, 60)
            out.append(Outcome(at - t1100, at - t1102, gw.handshakes - handshakes,
                               gw.accepted_connections - accepted,
                               rig.controller.terminations - restarts))
            print(f"  1100/1102 run: Watchdog ({name}) usable {out[-1].from_1100:.3f}s after "
                  f"1100, gateway restarts {out[-1].restarts}", flush=True)
        rig.stop()
    return out


async def quiet(seconds: float) -> dict[str, int]:
    async with FakeGateway() as gw:
        _, manager, _ = await start_manager(gw, 33)
        probes = 0

        def on_heartbeat(rtt: float) -> None:
            nonlocal probes
            probes += 1

        manager.heartbeatEvent += on_heartbeat
        before = len(manager.transcript)
        handshakes = gw.handshakes
        await asyncio.sleep(seconds)
        changes = manager.transcript[before:]
        result = {
            "probes answered": probes,
            "reqCurrentTime sent": len(gw.requests_named("reqCurrentTime")),
            "state changes": len(changes),
            "false alarms": sum(t.trigger is InputKind.HEARTBEAT_MISSED for t in changes),
            "handshakes": gw.handshakes - handshakes,
        }
        await manager.stop()
    print(f"  quiet run of {seconds:g}s done: {result}", flush=True)
    return result


async def bench(runs: int, wd_runs: int, quiet_s: float,
                wd_defaults: bool) -> tuple[Any, ...]:
    async def manager_side() -> tuple[list[float], list[Outcome]]:
        return await manager_hangs(runs), await manager_1100(runs)

    tasks: list[Any] = [manager_side(), watchdog_hangs(wd_runs), watchdog_1100(runs, True),
                        quiet(quiet_s)]
    if wd_defaults:
        tasks.append(watchdog_1100(wd_runs, False))
    return tuple(await asyncio.gather(*tasks))


def _row(name: str, xs: list[Outcome]) -> list[object]:
    return [name, len(xs), median([o.from_1100 for o in xs]), median([o.from_1102 for o in xs]),
            max(o.handshakes for o in xs), max(o.accepted for o in xs),
            max(o.restarts for o in xs)]


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=5)
    ap.add_argument("--quiet", type=float, default=None,
                    help="length of the quiet run in seconds (default 600; --quick 45)")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    runs = args.runs or (3 if args.quick else 5)
    wd_runs = 1 if args.quick else runs
    quiet_s = args.quiet or (45.0 if args.quick else 600.0)
    header("detection of a hung gateway; 1100 then 1102", args)
    print(f"runs: manager {runs}, Watchdog hang {wd_runs}; quiet run {quiet_s:g}s; "
          f"Watchdog defaults for 1100/1102: {'no (quick)' if args.quick else 'yes'}")
    results = asyncio.run(bench(runs, wd_runs, quiet_s, not args.quick))
    (m_hang, m_1100), w_hang, w_tight, q = results[:4]
    w_default = results[4] if len(results) > 4 else None
    print()
    print("hang detection (stall right after a tick -> state change / hard time-out):")
    print(table(["contender", "runs", "median s", "min s", "max s"], [
        ["manager (defaults: 3 s idle + 2 s probe)", len(m_hang), median(m_hang), min(m_hang),
         max(m_hang)],
        ["Watchdog (defaults: 20 s + 4 s probe)", len(w_hang), median(w_hang), min(w_hang),
         max(w_hang)],
    ]))
    print(f"ratio: manager / Watchdog median hang detection = "
          f"{median(m_hang) / median(w_hang):.3f}")
    print()
    print(f"quiet run ({quiet_s:g}s, healthy silent gateway, manager defaults):")
    print(table(["measure", "value"], [[k, v] for k, v in q.items()]))
    print()
    print("1100, then 1102 after 1 s (time until usable again):")
    rows = [_row("manager", m_1100), _row("Watchdog tight (0.1 s / 0.1 s)", w_tight)]
    if w_default is not None:
        rows.append(_row("Watchdog defaults (2 s / 30 s)", w_default))
    print(table(["contender", "runs", "from 1100 s", "from 1102 s", "max handshakes",
                 "max TCP accepts", "max gateway restarts"], rows))
    print(f"ratio: manager / Watchdog tight median time from 1100 = "
          f"{median([o.from_1100 for o in m_1100]) / median([o.from_1100 for o in w_tight]):.3f}")
    if w_default is not None:
        ratio = (median([o.from_1100 for o in m_1100])
                 / median([o.from_1100 for o in w_default]))
        print(f"ratio: manager / Watchdog defaults median time from 1100 = {ratio:.3f}")
    print()
    ok = verdict("manager median hang detection", median(m_hang), 6, "s")
    ok &= verdict("manager worst hang detection", max(m_hang), 6, "s")
    ok &= verdict("false alarms in the quiet run", q["false alarms"], 0)
    ok &= verdict("state changes in the quiet run", q["state changes"], 0)
    ok &= verdict("manager back after 1102 (median)",
                  median([o.from_1102 for o in m_1100]) * 1e3, 10, " ms")
    ok &= verdict("manager handshakes / TCP accepts during 1100-1102",
                  max(max(o.handshakes, o.accepted, o.restarts) for o in m_1100), 0)
    if quiet_s < 600:
        print("note: the quiet run was shorter than the issue's 10 minutes (run without --quick)")
    print(f"overall: {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
