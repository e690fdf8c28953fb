"""Benchmark 8: what the proxy costs a bot: added round-trip latency and message rate.

One simulator, two bare ib_insync clients: ``direct`` connects to the
simulator, ``proxied`` connects through ``ibkr-connection proxy`` in front of
it. Both are measured in the same run, alternating (ABBA order):

* Round trip: ``reqCurrentTime`` answered by ``currentTime``, one after the
  other (ib_insync's own 45-requests-a-second throttle switched off on both
  clients). Per run the median round trip; the figure is the median over the
  pairs of (proxied - direct).
* Throughput: 100,000 pre-encoded ``tickPrice`` messages for the client's
  market data subscription, written by the simulator 50 per write with a loop
  turn between writes (a busy gateway's bursts), timed from the first write
  to the client's decoder handling the last one. The figure is the median
  over the pairs of (proxied rate / direct rate).

The proxy runs in this process and on this event loop by default, so its
CPU time adds to the client's and the gateway's: the worst case. With
``--proxy-process`` it runs as ``ibkr-connection proxy`` in a child process,
as a user runs it. ``--record`` also records every message (to a temporary
file) and reports that rate too (no target).

Run::

    uv run python benchmarks/proxy.py --quick   # 3 pairs, ~1 min
    uv run python benchmarks/proxy.py           # 7 pairs
"""

from __future__ import annotations

import asyncio
import gc
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from _common import contract, header, median, parser, quiet_logging, table, verdict
from ib_insync import IB

from ibkr_connection.proxy import ProxyServer, RecordingWriter
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.wire import protocol as p

DIRECT_ID, PROXIED_ID = 51, 52
MESSAGES = 100_000
CHUNK = 50
ROUND_TRIPS = 2000

#: Goals of the issue: added latency per round trip, and the message-rate ratio.
ADDED_RTT_GOAL_MS = 0.2
RATE_GOAL = 0.9


@asynccontextmanager
async def proxy_in_front(gw: FakeGateway, child: bool, record: Path | None,
                         ) -> AsyncIterator[int]:
    """Run the proxy (here, or as a child process); yield the port it listens on."""
    if not child:
        recorder = RecordingWriter(record) if record is not None else None
        async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
            yield proxy.port
        if recorder is not None:
            recorder.close()
        return
    args = [sys.executable, "-m", "ibkr_connection.cli", "proxy", "--upstream",
            f"127.0.0.1:{gw.port}", "--port", "0"]
    if record is not None:
        args += ["--record", str(record)]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found, line
        yield int(found.group(1))
    finally:
        proc.terminate()
        await proc.wait()


class Counter:
    """Counts the tickPrice messages a client's decoder handles; resolves at a target."""

    def __init__(self, ib: IB) -> None:
        handlers = ib.client.decoder.handlers
        self.original = handlers[p.TICK_PRICE]
        handlers[p.TICK_PRICE] = self.handle
        self.count = 0
        self.target = -1
        self.done: asyncio.Future[float] | None = None

    def handle(self, fields: list[str]) -> None:
        self.original(fields)
        self.count += 1
        if self.count == self.target and self.done is not None and not self.done.done():
            self.done.set_result(time.perf_counter())

    def expect(self, more: int) -> asyncio.Future[float]:
        self.target = self.count + more
        self.done = asyncio.get_running_loop().create_future()
        return self.done


async def round_trips(ib: IB, count: int) -> float:
    """Median seconds of ``count`` reqCurrentTime round trips, one after the other."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await ib.reqCurrentTimeAsync()
        times.append(time.perf_counter() - t0)
    return median(times)


async def stream(gw: FakeGateway, client_id: int, counter: Counter, reads: list[bytes],
                 messages: int) -> float:
    """Write the ticks to ``client_id`` 50 per write; return seconds until all are handled."""
    conn = next(c for c in gw.clients if c.client_id == client_id)
    done = counter.expect(messages)
    gc.collect()
    t0 = time.perf_counter()
    for data in reads:
        conn.send_raw(data)
        await asyncio.sleep(0)
    t1 = await asyncio.wait_for(done, 120)
    return t1 - t0


def tick_reads(req_id: int, count: int) -> list[bytes]:
    """``count`` tickPrice frames for ``req_id``, joined 50 per write."""
    frames = [p.encode_message([p.TICK_PRICE, 6, req_id, p.TICK_LAST,
                                100.0 + (i % 200) * 0.01, 100 + i % 7, 0]) for i in range(count)]
    return [b"".join(frames[i:i + CHUNK]) for i in range(0, count, CHUNK)]


async def connect(port: int, client_id: int) -> tuple[IB, Counter, int]:
    ib = IB()
    ib.client.MaxRequests = 0  # ib_insync throttles to 45 requests a second by default
    await ib.connectAsync("127.0.0.1", port, client_id, timeout=30)
    ticker = ib.reqMktData(contract())
    while ticker.last != ticker.last:  # nan until the first tick
        await asyncio.sleep(0.01)
    req_id = ib.wrapper.ticker2ReqId["mktData"][ticker]
    return ib, Counter(ib), req_id


Results = dict[str, list[float]]


async def bench(pairs: int, rtts: int, messages: int, child: bool,
                record: Path | None) -> Results:
    results: Results = {"direct rtt": [], "proxied rtt": [], "direct rate": [],
                        "proxied rate": []}
    async with FakeGateway() as gw, proxy_in_front(gw, child, record) as port:
        direct = await connect(gw.port, DIRECT_ID)
        proxied = await connect(port, PROXIED_ID)
        contenders = {"direct": (direct, DIRECT_ID), "proxied": (proxied, PROXIED_ID)}
        reads = {name: tick_reads(req_id, messages)
                 for name, ((_, _, req_id), _) in contenders.items()}
        for name, ((ib, counter, _), cid) in contenders.items():  # warm-up
            await round_trips(ib, 50)
            await stream(gw, cid, counter, reads[name][:100], 100 * CHUNK)
        for n in range(pairs):
            order = ["direct", "proxied"] if n % 2 == 0 else ["proxied", "direct"]
            for name in order:
                (ib, counter, _), cid = contenders[name]
                results[f"{name} rtt"].append(await round_trips(ib, rtts))
            for name in order:
                (ib, counter, _), cid = contenders[name]
                seconds = await stream(gw, cid, counter, reads[name], messages)
                results[f"{name} rate"].append(messages / seconds)
            print(f"  pair {n + 1}: rtt direct {results['direct rtt'][-1] * 1e3:.3f} ms, "
                  f"proxied {results['proxied rtt'][-1] * 1e3:.3f} ms; rate direct "
                  f"{results['direct rate'][-1]:,.0f}/s, proxied "
                  f"{results['proxied rate'][-1]:,.0f}/s", flush=True)
        for (ib, _, _), _ in contenders.values():
            ib.disconnect()
    return results


def report(results: Results, label: str) -> tuple[float, float]:
    """Print the table; return (median added ms per round trip, median rate ratio)."""
    added = [(pr - d) * 1e3 for d, pr in zip(results["direct rtt"], results["proxied rtt"],
                                              strict=True)]
    ratios = [pr / d for d, pr in zip(results["direct rate"], results["proxied rate"],
                                      strict=True)]
    print(table(
        ["contender", "pairs", "median rtt ms", "median msgs/s"],
        [["direct", len(added), median(results["direct rtt"]) * 1e3,
          f"{median(results['direct rate']):,.0f}"],
         [f"proxied ({label})", len(added), median(results["proxied rtt"]) * 1e3,
          f"{median(results['proxied rate']):,.0f}"]]))
    print()
    print(f"added per round trip: median {median(added):.3f} ms (pairs: "
          f"{', '.join(f'{a:.3f}' for a in added)})")
    print(f"rate ratio proxied / direct: median {median(ratios):.3f} (pairs: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")
    return median(added), median(ratios)


def main() -> None:
    ap = parser(__doc__.splitlines()[0], default_runs=7)
    ap.add_argument("--messages", type=int, default=MESSAGES, help="tick messages per run")
    ap.add_argument("--round-trips", type=int, default=None,
                    help=f"round trips per run (default {ROUND_TRIPS}; --quick 500)")
    ap.add_argument("--proxy-process", action="store_true",
                    help="run the proxy as 'ibkr-connection proxy' in a child process")
    ap.add_argument("--record", action="store_true",
                    help="also record every message (to a temporary file); no target")
    args = ap.parse_args()
    quiet_logging(args.verbose)
    pairs = args.runs or (3 if args.quick else 7)
    rtts = args.round_trips or (500 if args.quick else ROUND_TRIPS)
    where = "child process" if args.proxy_process else "same process and loop"
    header("proxy: added latency per round trip, message rate on 100,000 ticks", args)
    print(f"pairs: {pairs}; {rtts} round trips and {args.messages:,} tick messages per run; "
          f"proxy in the {where}{', recording' if args.record else ''}")
    label = ("child process" if args.proxy_process else "in-process") + (
        ", recording" if args.record else "")
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "bench.jsonl" if args.record else None
        results = asyncio.run(bench(pairs, rtts, args.messages, args.proxy_process, record))
    print()
    added, ratio = report(results, label)
    print()
    ok = verdict("added latency per round trip", added, ADDED_RTT_GOAL_MS, " ms")
    ok &= verdict("message rate, proxied / direct", ratio, RATE_GOAL, higher_is_better=True)
    if args.record:
        print("(recording on: the figures above include it; the goals are for relaying)")
    print(f"overall: {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
