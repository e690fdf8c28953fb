"""Benchmark 5: soak: 1,000 reconnect cycles, handlers, tasks and memory.

A manager with defaults, one market data subscription and ``IBKRIBInsyncApi``
attached is connected to the simulator; each cycle the gateway drops the
socket and the benchmark waits for the manager to be connected with the
subscription restored. Measured at the start (after a warm-up of 20 cycles)
and at the end: handlers on every eventkit event of the ``IB`` object, the
manager and the broker, asyncio tasks, scheduled timers, RSS, and the sizes of
the manager's transcript and journal. The simulator's request log is cleared
each cycle so that it does not count against the bot.

Run::

    uv run python benchmarks/soak.py --quick   # 200 cycles
    uv run python benchmarks/soak.py           # 1,000 cycles
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from _common import (
    contract,
    handler_counts,
    header,
    median,
    parser,
    quiet_logging,
    rss_bytes,
    table,
    verdict,
)
from ib_insync import IB

from ibkr_connection import ConnectionState
from ibkr_connection.broker import Config, IBKRIBInsyncApi
from ibkr_connection.simulator.gateway import FakeGateway

WARM_UP = 20


def snapshot(ib: IB, api: IBKRIBInsyncApi) -> dict[str, Any]:
    gc.collect()
    handlers = handler_counts(ib, api.manager)
    loop = asyncio.get_running_loop()
    return {
        "handlers (all events)": sum(handlers.values()),
        "handlers": handlers,
        "asyncio tasks": len(asyncio.all_tasks()),
        "scheduled timers": len(getattr(loop, "_scheduled", ())),
        "RSS MB": rss_bytes() / 2**20,
        "gc objects": len(gc.get_objects()),
        "transcript entries": len(api.manager.transcript),
        "journal entries": len(api.manager.machine.journal),
        "ib tickers": len(ib.tickers()),
    }


async def cycle(gw: FakeGateway, api: IBKRIBInsyncApi, restored: list[float]) -> float:
    count = len(restored)
    t0 = time.monotonic()
    await gw.drop_clients()
    while len(restored) == count:
        await asyncio.sleep(0.001)
    await api.manager.wait_for(ConnectionState.CONNECTED, timeout=10)
    gw.clear_requests()
    return time.monotonic() - t0


async def bench(cycles: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any],
                                      list[float]]:
    async with FakeGateway() as gw:
        ib = IB()
        api = IBKRIBInsyncApi(Config(IBKR_HOST="127.0.0.1", IBKR_PORT=gw.port,
                                     IBKR_CLIENT_ID=51), ib=ib)
        assert await api.connect_async()
        restored: list[float] = []
        handle = api.manager.subscribe_market_data(contract())
        api.manager.subscriptionRestoredEvent += lambda sub: restored.append(time.monotonic())
        await asyncio.sleep(0.2)
        first = snapshot(ib, api)
        for _ in range(WARM_UP):
            await cycle(gw, api, restored)
        start = snapshot(ib, api)
        durations = []
        for n in range(cycles):
            durations.append(await cycle(gw, api, restored))
            if (n + 1) % 100 == 0:
                print(f"  cycle {n + 1}: RSS {rss_bytes() / 2**20:.1f} MB, "
                      f"tasks {len(asyncio.all_tasks())}", flush=True)
        await asyncio.sleep(0.2)
        end = snapshot(ib, api)
        assert handle.ticker is not None
        await api.disconnect_async()
    return first, start, end, durations


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=1000)
    args = ap.parse_args()
    quiet_logging(args.verbose)
    cycles = args.runs or (200 if args.quick else 1000)
    header("soak: reconnect cycles", args)
    print(f"cycles: {cycles} (after {WARM_UP} warm-up cycles); --runs sets the cycle count")
    first, start, end, durations = asyncio.run(bench(cycles))
    print()
    keys = [k for k in start if k != "handlers"]
    print(table(["measure", "after connect", f"after {WARM_UP} warm-up", f"after {cycles} more",
                 "growth"],
                [[k, first[k], start[k], end[k], end[k] - start[k]] for k in keys]))
    changed = {k: (start["handlers"].get(k), v) for k, v in end["handlers"].items()
               if start["handlers"].get(k) != v}
    print(f"events whose handler count changed: {changed or 'none'}")
    print(f"cycle time: median {median(durations) * 1e3:.1f} ms, "
          f"max {max(durations) * 1e3:.1f} ms")
    print()
    ok = verdict("handler growth", end["handlers (all events)"] - start["handlers (all events)"], 0)
    ok &= verdict("asyncio task growth", end["asyncio tasks"] - start["asyncio tasks"], 0)
    ok &= verdict("RSS growth after warm-up", end["RSS MB"] - start["RSS MB"], 2, " MB")
    print(f"(RSS growth counted from right after the first connect: "
          f"{end['RSS MB'] - first['RSS MB']:.2f} MB)")
    print(f"overall: {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
