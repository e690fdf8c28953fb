"""Benchmark 4: hot-path cost of the manager and IBKRIBInsyncApi on ticks and order statuses.

Two ``IB`` objects are connected to one simulator: ``bare`` (ib_insync alone)
and ``managed`` (a ConnectionManager with ``IBKRIBInsyncApi`` attached, the
market data subscribed through the manager and the order placed through the
broker wrapper). Each has a streaming ticker and a working order. 100,000
pre-encoded messages (nine ``tickPrice`` for the ticker to one ``orderStatus``
for the order, with changing prices and fills so every one updates the book)
are fed through the real client decoder, ``IB.client._onSocketHasData``, 50
frames per call as a socket read would deliver them, yielding to the event
loop between reads (so the manager's heartbeat timer runs as it would).

The two contenders take turns in blocks of 5,000 messages (100 reads),
ABBA within each pass (bare, managed, managed, bare, ...), so both sample the
machine's load over the same seconds; a pair is one pass of the 100,000
messages for each, and its ratio is managed / bare of the pass's summed
times. The ratio is the median of the per-pair ratios, taken on wall time
and, alongside, on CPU time (``time.process_time``: what the process itself
spent, not the time another process of the machine held the core; inside a
VM, time the host takes the core away still counts). Before every block the
garbage collector runs (untimed), so both sides start each block with the
same collector state. ``--block-messages 100000`` gives the method used
until 2026-12-07 (each side runs the whole 100,000 at a go, the order
alternating per pair), from the same code. A tick-only run is reported as
well. Then, as a figure the machine's load does not move, the Python
function calls per message (cProfile, 10,000 messages of each mix and
contender). (An order status costs ib_insync about 40 times a tick: its
wrapper formats the whole ``Trade`` into an f-string log line per status
even with logging off.)

Run::

    uv run python benchmarks/hot_path.py --quick   # 3 pairs per mix, ~30 s
    uv run python benchmarks/hot_path.py           # 15 pairs per mix, ~2-3 min
    uv run python benchmarks/hot_path.py --block-messages 100000   # the method before
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import time
from typing import Any

from _common import contract, header, median, parser, quiet_logging, table, verdict
from ib_insync import IB, LimitOrder

from ibkr_connection.broker import Config, IBKRIBInsyncApi
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.wire import protocol as p

BARE_ID, MANAGED_ID = 41, 42
MESSAGES = 100_000
CHUNK = 50
#: In the mixed run every tenth message is an order status, the rest ticks.
ORDER_EVERY = 10
#: Messages per turn: the contenders alternate every this many messages.
BLOCK_MESSAGES = 5_000


def frames(gw: FakeGateway, client_id: int, mix: str, count: int) -> list[bytes]:
    """Pre-encode ``count`` messages for ``client_id``'s ticker and order, in reads."""
    conn = next(c for c in gw.clients if c.client_id == client_id)
    req_id = next(iter(conn.mkt_data))
    order = next(o for o in gw.orders.values() if o.client_id == client_id)
    messages: list[bytes] = []
    for i in range(count):
        tick = mix == "ticks" or (mix == "mixed" and i % ORDER_EVERY != 0)
        if tick:
            messages.append(p.encode_message(
                [p.TICK_PRICE, 6, req_id, p.TICK_LAST, 100.0 + (i % 200) * 0.01, 100 + i % 7, 0]))
        else:
            filled = i % 97
            messages.append(p.encode_message(
                [p.ORDER_STATUS, order.order_id, "Submitted", float(filled),
                 order.total_quantity - filled, 99.0, order.perm_id, 0, 99.0, client_id, "",
                 0.0]))
    return [b"".join(messages[i:i + CHUNK]) for i in range(0, len(messages), CHUNK)]


async def feed(ib: IB, reads: list[bytes],
               profiler: cProfile.Profile | None = None) -> tuple[float, float]:
    """Feed the reads through the decoder; return the (wall, CPU) seconds it took."""
    on_data = ib.client._onSocketHasData
    logs = [trade.log for trade in ib.trades()]
    gc.collect()  # untimed: both sides start with the same collector state
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for data in reads:
        if profiler is not None:
            profiler.enable()
        on_data(data)
        if profiler is not None:
            profiler.disable()
        # ib_insync appends every status to the trade's log and logs the whole
        # trade (log included) per status: keep the log short, as in real life.
        for log in logs:
            del log[2:]
        await asyncio.sleep(0)
    return time.perf_counter() - wall0, time.process_time() - cpu0


#: Messages fed under cProfile to count the Python calls per message.
COUNTED = 10_000


#: Per mix, per clock ("wall", "cpu"), per contender: one summed time per pair.
Times = dict[str, dict[str, dict[str, list[float]]]]


async def bench(pairs: int, mixes: list[str], messages: int, block_messages: int) -> Times:
    results: Times = {}
    block = max(1, block_messages // CHUNK)  # reads per turn
    async with FakeGateway(fill_mode="manual") as gw:
        bare = IB()
        await bare.connectAsync("127.0.0.1", gw.port, BARE_ID)
        bare.reqMktData(contract())
        bare.placeOrder(contract(), LimitOrder("BUY", 1_000_000, 99.0))

        managed_ib = IB()
        api = IBKRIBInsyncApi(Config(IBKR_HOST="127.0.0.1", IBKR_PORT=gw.port,
                                     IBKR_CLIENT_ID=MANAGED_ID), ib=managed_ib)
        assert await api.connect_async()
        api.manager.subscribe_market_data(contract())
        api.place_order(contract(), LimitOrder("BUY", 1_000_000, 99.0))
        await asyncio.sleep(0.5)  # replies in; gateway quiet from here
        print(f"  handlers on the managed IB: {_handlers(managed_ib)}; "
              f"on the bare IB: {_handlers(bare)}", flush=True)

        contenders: dict[str, tuple[IB, int]] = {"bare": (bare, BARE_ID),
                                                 "managed": (managed_ib, MANAGED_ID)}
        for mix in mixes:
            reads = {name: frames(gw, cid, mix, messages)
                     for name, (_, cid) in contenders.items()}
            await feed(bare, reads["bare"][:200])  # warm-up, both sides
            await feed(managed_ib, reads["managed"][:200])
            sizes = {name: sum(map(len, r)) for name, r in reads.items()}
            print(f"  {mix:13s} bytes per run: bare {sizes['bare']}, managed "
                  f"{sizes['managed']}", flush=True)
            times: dict[str, dict[str, list[float]]] = {
                clock: {"bare": [], "managed": []} for clock in ("wall", "cpu")}
            turn = 0
            for n in range(pairs):
                spent = {clock: {"bare": 0.0, "managed": 0.0} for clock in ("wall", "cpu")}
                for start in range(0, len(reads["bare"]), block):
                    # ABBA across the turns (bare, managed, managed, bare, ...):
                    # neither side always goes first, nor always second.
                    order = ["bare", "managed"] if turn % 2 == 0 else ["managed", "bare"]
                    turn += 1
                    for name in order:
                        wall, cpu = await feed(contenders[name][0],
                                               reads[name][start:start + block])
                        spent["wall"][name] += wall
                        spent["cpu"][name] += cpu
                for clock in ("wall", "cpu"):
                    for name in ("bare", "managed"):
                        times[clock][name].append(spent[clock][name])
                w, c = spent["wall"], spent["cpu"]
                print(f"  {mix:13s} pair {n + 1}: wall bare {w['bare']:.3f}s, managed "
                      f"{w['managed']:.3f}s, ratio {w['managed'] / w['bare']:.3f}; CPU ratio "
                      f"{c['managed'] / c['bare']:.3f}", flush=True)
            results[mix] = times
            # The figure the machine's load does not move: Python calls per message.
            calls = []
            for name in ("bare", "managed"):
                profiler = cProfile.Profile()
                await feed(contenders[name][0], reads[name][:COUNTED // CHUNK], profiler)
                stats = pstats.Stats(profiler, stream=io.StringIO())
                calls.append(stats.total_calls / COUNTED)  # type: ignore[attr-defined]
            print(f"  {mix:13s} Python calls per message: bare {calls[0]:.2f}, managed "
                  f"{calls[1]:.2f} (+{calls[1] - calls[0]:.2f}, ratio {calls[1] / calls[0]:.3f})",
                  flush=True)
        await api.disconnect_async()
        bare.disconnect()
    return results


def _handlers(ib: Any) -> int:
    return sum(len(getattr(ib, name)) for name in ib.events)


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=15)
    ap.add_argument("--messages", type=int, default=MESSAGES, help="messages per run")
    ap.add_argument("--block-messages", type=int, default=BLOCK_MESSAGES,
                    help=f"messages per turn (default {BLOCK_MESSAGES}; the messages per "
                         "run: each side runs whole, the method before 2026-12-07)")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    pairs = args.runs or (3 if args.quick else 15)
    block_messages = min(args.block_messages, args.messages)
    header("hot path: 100,000 tick and order-status messages", args)
    print(f"pairs per mix: {pairs}; {args.messages} messages per run, {CHUNK} per read, "
          f"turns of {block_messages} messages")
    results = asyncio.run(bench(pairs, ["mixed", "ticks"], args.messages, block_messages))
    print()
    rows = []
    ratios: dict[str, dict[str, float]] = {}
    for mix, clocks in results.items():
        for clock, times in clocks.items():
            bare, managed = times["bare"], times["managed"]
            pair_ratios = [m / b for b, m in zip(bare, managed, strict=True)]
            ratios.setdefault(mix, {})[clock] = median(pair_ratios)
            rows.append([mix, clock, len(bare), median(bare), median(managed),
                         median(bare) / args.messages * 1e6,
                         median(managed) / args.messages * 1e6,
                         median(pair_ratios), min(pair_ratios), max(pair_ratios)])
    print(table(["mix", "clock", "pairs", "bare s", "managed s", "bare us/msg",
                 "managed us/msg", "median ratio", "min ratio", "max ratio"], rows))
    print()
    for mix, by_clock in ratios.items():
        print(f"ratio ({mix}): managed / bare = {by_clock['wall']:.3f} "
              f"(CPU time: {by_clock['cpu']:.3f})")
    ok = verdict("hot-path ratio (wall), mixed ticks and order statuses",
                 ratios["mixed"]["wall"], 1.05)
    print(f"overall: {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
