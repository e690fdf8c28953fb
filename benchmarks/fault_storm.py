"""Fault storm: thousands of seeded random faults against the simulator, then a summary.

A real ``ib_insync.IB`` is driven by a :class:`~ibkr_connection.ConnectionManager`
with tight timeouts, under an :class:`~ibkr_connection.IBKRIBInsyncApi` whose
bot places and cancels orders all along (re-placing only what IB never got).
The storm injects faults in rounds of ``--round`` faults (IB codes, drops,
stop/start listening, restarts, stalls, handshake delays, held startup replies,
order requests lost on their way in or their answers lost, drops right after
an order, fills and cancels at the gateway) with random gaps; after each round
the gateway is healed and the time until the manager is connected again is
measured. At the end the gateway's record is checked against the bot's book:
no order left Uncertain, none sent twice, no fill lost or doubled. The same
seed gives the same fault sequence.

Run::

    uv run python benchmarks/fault_storm.py --faults 5000 --seed 1

Exit status 0 when every round recovered within the bound, no exception
escaped (no traceback was logged) and the order audit is clean, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import statistics
import time

from ib_insync import IB, LimitOrder, Stock

from ibkr_connection import (
    BackoffPolicy,
    ConnectionConfig,
    ConnectionState,
    IBKRIBInsyncApi,
    RecoveryPolicy,
)
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.storm import (
    StormBot,
    TracebackCatcher,
    audit_orders,
    heal,
    random_fault,
)

S = ConnectionState

CONFIG = {"client_id": 7, "connect_timeout": 0.5, "heartbeat_idle": 0.2, "heartbeat_timeout": 0.2}
POLICY = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))


async def storm(faults: int, seed: int, per_round: int, gap: float) -> int:
    """Run the storm and print its summary; return the exit status."""
    rng = random.Random(seed)
    catcher = TracebackCatcher()
    logging.getLogger().addHandler(catcher)
    tally: collections.Counter[str] = collections.Counter()
    recoveries: list[float] = []
    late: list[int] = []
    bound = 2 * (CONFIG["connect_timeout"] + POLICY.backoff.max_costly_delay) + 0.4 + 1.0
    started = time.monotonic()
    async with FakeGateway(accounts=["DU1234567"], next_order_id=100) as gw:
        gw.fill_mode = "manual"  # orders work until the storm fills or cancels them
        api = IBKRIBInsyncApi(ConnectionConfig(port=gw.port, policy=POLICY, **CONFIG),  # type: ignore[arg-type]
                              IB(), max_completed_orders=1_000_000)
        manager = api.manager
        bot = StormBot(api, Stock("AAPL", "SMART", "USD"),
                       lambda ref: LimitOrder("BUY", 1, 150.0, orderRef=ref),
                       random.Random(seed))
        await manager.start(timeout=5)
        trading = asyncio.ensure_future(bot.run(interval=0.003))
        handlers = (len(manager.ib.errorEvent), len(manager.ib.disconnectedEvent),
                    len(manager.ib.newOrderEvent))
        done = 0
        round_no = 0
        while done < faults:
            round_no += 1
            if trading.done():
                trading = asyncio.ensure_future(bot.run(interval=0.003))
            for _ in range(min(per_round, faults - done)):
                tally[await random_fault(gw, rng)] += 1
                await asyncio.sleep(rng.uniform(0.0, gap))
                done += 1
            if done >= faults:
                trading.cancel()  # the last round: settle with nothing more sent
            await heal(gw)
            healed = time.monotonic()
            try:
                await manager.wait_for(S.CONNECTED, timeout=bound * 4)
            except TimeoutError:
                late.append(round_no)
                continue
            recoveries.append(time.monotonic() - healed)
            if recoveries[-1] > bound:
                late.append(round_no)
        await asyncio.sleep(0.2)  # the last answers arrive
        audit = audit_orders(gw, api.orders, CONFIG["client_id"])  # type: ignore[arg-type]
        uncertain_left = len(manager.in_flight.uncertain)
        final = manager.state
        transcript = list(manager.transcript)
        handlers_after = (len(manager.ib.errorEvent), len(manager.ib.disconnectedEvent),
                          len(manager.ib.newOrderEvent))
        await manager.stop()
    logging.getLogger().removeHandler(catcher)
    elapsed = time.monotonic() - started

    sessions = sum(1 for t in transcript if t.source is S.CONNECTING
                   and t.dest in (S.CONNECTED, S.DEGRADED, S.LOST))
    moves = collections.Counter(t.dest.value for t in transcript)
    print(f"fault storm: {faults} faults, seed {seed}, rounds of {per_round}, "
          f"gaps up to {gap * 1000:.0f} ms, {elapsed:.1f} s")
    print("\nfaults by kind")
    for kind, count in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {kind:<18} {count:>6}")
    print("\nmoves into each state")
    for state in S:
        print(f"  {state.value:<18} {moves.get(state.value, 0):>6}")
    print("\nsummary")
    print(f"  final state        {final.value} (after stop: disconnected)")
    print(f"  transitions        {len(transcript)}")
    print(f"  reconnects         {sessions - 1}")
    print(f"  heals / recovered  {round_no} / {len(recoveries)}")
    if recoveries:
        print(f"  time to recover    median {statistics.median(recoveries) * 1000:.0f} ms, "
              f"max {max(recoveries) * 1000:.0f} ms (bound {bound * 1000:.0f} ms)")
    print(f"  handlers on IB     {handlers} -> {handlers_after}")
    ours = catcher.escaped()
    foreign = [f"{r.name}: {r.getMessage().splitlines()[0]}" for r in catcher.foreign]
    print(f"  tracebacks, ours   {len(ours)}")
    for line in ours[:5]:
        print(f"    {line}")
    print(f"  tracebacks, other  {len(foreign)} (ib_insync internals, e.g. its own "
          "reqAccountSummary after a 1102)")
    for line in sorted(set(foreign))[:3]:
        print(f"    {line}")
    print(f"  orders             {audit.line()}")
    print(f"                     bot placed {bot.placed}, placed again {bot.replaced} after "
          f"NotReceived, cancels {bot.cancels}, refused {bot.refused}; uncertain settled as "
          + ", ".join(f"{k} {v}" for k, v in sorted(bot.outcomes.items())))
    ok = (not late and not ours and handlers == handlers_after and final is S.CONNECTED
          and audit.clean and uncertain_left == 0)
    print(f"  verdict            {'PASS' if ok else 'FAIL'}"
          + (f" (rounds late or unrecovered: {late[:10]})" if late else ""))
    return 0 if ok else 1


def main() -> int:
    """Parse the arguments and run the storm."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--faults", type=int, default=1000, help="faults to inject (default 1000)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault sequence")
    ap.add_argument("--round", type=int, default=25, help="faults between heals (default 25)")
    ap.add_argument("--gap", type=float, default=0.03,
                    help="largest random gap between faults, seconds (default 0.03)")
    ap.add_argument("--verbose", action="store_true", help="show library log lines")
    args = ap.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO,
                            format="%(relativeCreated)8.0f %(name)s %(message)s")
    else:
        logging.getLogger().addHandler(logging.NullHandler())
    return asyncio.run(storm(args.faults, args.seed, args.round, args.gap))


if __name__ == "__main__":
    raise SystemExit(main())
