"""Benchmark 2: detection of a dropped API socket.

The gateway aborts the bot's socket (no goodbye). Measured: the time from the
abort to the manager's change of state (``connected -> backoff`` on
``socket_closed``), side by side with bare ib_insync's ``disconnectedEvent``
(the floor: the manager learns of the drop from that event). Runs alternate
between the two, on one simulator, each with its own client id.

Run::

    uv run python benchmarks/detect_drop.py --quick   # 10 runs each
    uv run python benchmarks/detect_drop.py           # 30 runs each
"""

from __future__ import annotations

import asyncio
import time

from _common import (
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
from ib_insync import IB

from ibkr_connection import ConnectionState
from ibkr_connection.simulator.gateway import FakeGateway

MANAGER_ID, BARE_ID = 11, 12


async def bench(runs: int) -> tuple[list[float], list[float]]:
    managed: list[float] = []
    bare: list[float] = []
    async with FakeGateway() as gw:
        _, manager, _ = await start_manager(gw, MANAGER_ID)
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, BARE_ID)
        ib.reqMktData(contract())
        for n in range(runs):
            # manager
            await asyncio.sleep(0.1)
            changed = first_transition(manager, lambda t: t.dest is ConnectionState.BACKOFF)
            t0 = time.monotonic()
            await gw.drop_clients(MANAGER_ID)
            at, transition = await asyncio.wait_for(changed, 5)
            managed.append(at - t0)
            assert transition.source is ConnectionState.CONNECTED, transition
            await manager.wait_for(ConnectionState.CONNECTED, timeout=10)
            # bare ib_insync
            await asyncio.sleep(0.1)
            fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()

            def on_disconnected(fut: asyncio.Future[float] = fut) -> None:
                if not fut.done():
                    fut.set_result(time.monotonic())

            ib.disconnectedEvent += on_disconnected
            t0 = time.monotonic()
            await gw.drop_clients(BARE_ID)
            bare.append(await asyncio.wait_for(fut, 5) - t0)
            ib.disconnectedEvent -= on_disconnected
            await asyncio.sleep(0.05)
            await ib.connectAsync("127.0.0.1", gw.port, BARE_ID)
            ib.reqMktData(contract())
            print(f"  run {n + 1}: manager {managed[-1] * 1e3:.3f} ms, "
                  f"bare disconnectedEvent {bare[-1] * 1e3:.3f} ms", flush=True)
        ib.disconnect()
        await manager.stop()
    return managed, bare


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=30)
    args = ap.parse_args()
    quiet_logging(args.verbose)
    runs = args.runs or (10 if args.quick else 30)
    header("detection of a dropped socket", args)
    managed, bare = asyncio.run(bench(runs))
    ms = 1e3
    print()
    print(table(
        ["contender", "runs", "median ms", "min ms", "max ms"],
        [["manager (-> backoff)", len(managed), median(managed) * ms, min(managed) * ms,
          max(managed) * ms],
         ["bare ib_insync disconnectedEvent", len(bare), median(bare) * ms, min(bare) * ms,
          max(bare) * ms]],
    ))
    print()
    print(f"ratio: manager / bare ib_insync median = {median(managed) / median(bare):.3f}")
    ok = verdict("manager median detection", median(managed) * ms, 10, " ms")
    ok &= verdict("manager worst detection", max(managed) * ms, 10, " ms")
    print(f"overall: {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
