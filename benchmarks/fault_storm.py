"""Fault storm: thousands of seeded random faults against the simulator, then a summary.

A real ``ib_insync.IB`` is driven by a :class:`~ibkr_connection.ConnectionManager`
with tight timeouts. The storm injects faults in rounds of ``--round`` faults
(IB codes, drops, stop/start listening, restarts, stalls, handshake delays, held
startup replies) with random gaps; after each round the gateway is healed and
the time until the manager is connected again is measured. The same seed gives
the same fault sequence.

Run::

    uv run python benchmarks/fault_storm.py --faults 5000 --seed 1

Exit status 0 when every round recovered within the bound and no exception
escaped (no traceback was logged), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import statistics
import time

from ib_insync import IB

from ibkr_connection import (
    BackoffPolicy,
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    RecoveryPolicy,
)
from ibkr_connection.simulator import FakeGateway

S = ConnectionState

CODES = (1100, 1101, 1102, 2103, 2104, 2105, 2106, 2157, 2158, 2110, 1300,
         326, 502, 504, 10182, 9999)
HELD = ("reqPositions", "reqExecutions", "reqOpenOrders", "reqAccountUpdates")
KINDS = {"code": 8, "drop": 2, "listening": 1, "restart": 1, "stall": 1,
         "handshake_delay": 1, "held_sync": 1}
CONFIG = {"client_id": 7, "connect_timeout": 0.5, "heartbeat_idle": 0.2, "heartbeat_timeout": 0.2}
POLICY = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))


class _Tracebacks(logging.Handler):
    """Counts log records that carry a traceback (an exception caught late)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []
        self.foreign: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info:
            return
        text = f"{record.name}: {record.getMessage().splitlines()[0]}"
        (self.seen if _from_us(record) else self.foreign).append(text)


def _from_us(record: logging.LogRecord) -> bool:
    """True if the record is ibkr_connection's, or its traceback passes through its code."""
    if record.name.startswith("ibkr_connection"):
        return True
    exc = record.exc_info[1] if record.exc_info else None
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if "/ibkr_connection/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


async def _fault(gw: FakeGateway, rng: random.Random, tally: collections.Counter[str]) -> None:
    kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
    if kind == "code":
        code = rng.choice(CODES)
        tally[f"code {code}"] += 1
        await gw.send_error(code)
        return
    tally[kind] += 1
    if kind == "drop":
        await gw.drop_clients()
    elif kind == "listening":
        await (gw.stop_listening() if gw.listening else gw.start_listening())
    elif kind == "restart":
        await gw.restart(outage=rng.uniform(0.0, 0.08))
    elif kind == "stall":
        gw.unstall() if gw.stalled else gw.stall()
    elif kind == "handshake_delay":
        gw.handshake_delay = rng.choice((0.0, 0.05, 0.2, 1.0))
    else:
        name = rng.choice(HELD)
        gw.hold_sync(name) if rng.random() < 0.5 else gw.release_sync(name)


async def _heal(gw: FakeGateway) -> None:
    gw.unstall()
    gw.release_sync()
    gw.handshake_delay = 0.0
    await gw.start_listening()
    await gw.send_error(1102)
    for farm in list(gw.farms):
        await gw.farm_ok(farm)


async def storm(faults: int, seed: int, per_round: int, gap: float) -> int:
    """Run the storm and print its summary; return the exit status."""
    rng = random.Random(seed)
    catcher = _Tracebacks()
    logging.getLogger().addHandler(catcher)
    tally: collections.Counter[str] = collections.Counter()
    recoveries: list[float] = []
    late: list[int] = []
    bound = 2 * (CONFIG["connect_timeout"] + POLICY.backoff.max_costly_delay) + 0.4 + 1.0
    started = time.monotonic()
    async with FakeGateway(accounts=["DU1234567"], next_order_id=100) as gw:
        manager = ConnectionManager(
            IB(), ConnectionConfig(port=gw.port, policy=POLICY, **CONFIG))  # type: ignore[arg-type]
        await manager.start(timeout=5)
        handlers = (len(manager.ib.errorEvent), len(manager.ib.disconnectedEvent),
                    len(manager.ib.newOrderEvent))
        done = 0
        round_no = 0
        while done < faults:
            round_no += 1
            for _ in range(min(per_round, faults - done)):
                await _fault(gw, rng, tally)
                await asyncio.sleep(rng.uniform(0.0, gap))
                done += 1
            await _heal(gw)
            healed = time.monotonic()
            try:
                await manager.wait_for(S.CONNECTED, timeout=bound * 4)
            except TimeoutError:
                late.append(round_no)
                continue
            recoveries.append(time.monotonic() - healed)
            if recoveries[-1] > bound:
                late.append(round_no)
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
    print(f"  tracebacks, ours   {len(catcher.seen)}")
    for line in catcher.seen[:5]:
        print(f"    {line}")
    print(f"  tracebacks, other  {len(catcher.foreign)} (ib_insync internals, e.g. its own "
          "reqAccountSummary after a 1102)")
    for line in sorted(set(catcher.foreign))[:3]:
        print(f"    {line}")
    ok = not late and not catcher.seen and handlers == handlers_after and final is S.CONNECTED
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
