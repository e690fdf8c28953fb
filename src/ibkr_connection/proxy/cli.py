"""``ibkr-connection proxy``: the fault-injecting, recording relay in the foreground.

Prints one line when it listens, one per injected fault and one per session
(client id, bytes each way) on stdout, flushed as they happen; Ctrl-C or
SIGTERM stops it cleanly (exit 0, the recording closed whole).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ibkr_connection.proxy.injection import (
    load_relay_scenario,
    needs_inspection,
    run_relay_scenario,
)
from ibkr_connection.proxy.relay import ProxyServer
from ibkr_connection.proxy.session import addr
from ibkr_connection.wire.recording import RecordingWriter
from ibkr_connection.wire.scenario import Scenario, ScenarioError

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``proxy`` sub-command to an argparse subparsers object.

    Args:
        sub: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``proxy`` parser (its ``func`` default is :func:`run`).
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        "proxy",
        help="relay bots to a real TWS / IB Gateway, injecting faults and recording",
        description="A TWS API relay between bots and a real TWS / IB Gateway (a paper "
                    "account is the intended target): relays every byte unchanged, injects "
                    "a scenario's faults, records every session.",
    )
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT",
                        help="the real gateway, e.g. 127.0.0.1:4002 ([::1]:4002 for IPv6); "
                             "a line at start says whether it answers the API handshake")
    parser.add_argument("--port", type=int, required=True,
                        help="port the bots connect to (0 = any free port, printed)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--scenario", default=None, metavar="NAME|FILE",
                        help="TOML fault timeline, as for 'sim --scenario'; actions a relay "
                             "cannot play are rejected")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="write every relayed session to FILE (JSON Lines, "
                             "docs/recording.md); FILE is created once the proxy listens, "
                             "and an existing FILE is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --record replace an existing FILE")
    parser.add_argument("--mask-accounts", action="store_true",
                        help="mask account ids in the recording (MASKED1, MASKED2 ...)")
    parser.add_argument("--duration", type=float, default=None,
                        help="exit after this many seconds (default: run until Ctrl-C)")
    parser.set_defaults(func=run)
    return parser


def parse_endpoint(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too).

    Raises:
        ValueError: Not a host and a port from 1 to 65535.
    """
    host, sep, port_s = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not sep or not host:
        raise ValueError(f"--upstream {text!r}: expected HOST:PORT")
    if ":" in host and not bracketed:
        # "localhost:4002:1" would otherwise connect to port 1 of a host named
        # "localhost:4002" and fail every session; an IPv6 host needs brackets.
        raise ValueError(f"--upstream {text!r}: expected HOST:PORT (an IPv6 host in "
                         "brackets, e.g. [::1]:4002)")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"--upstream {text!r}: {port_s!r} is not a port") from None
    if not 0 < port < 65536:
        raise ValueError(f"--upstream {text!r}: port must be 1 to 65535")
    return host, port


def _write(text: str) -> None:
    """Write a line to stdout at once (a supervisor's pipe must not sit on it)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _probe(proxy: ProxyServer) -> None:
    await proxy.probe_upstream()


async def serve(args: argparse.Namespace, scenario: Scenario | None,
                stop: asyncio.Event | None = None) -> int:
    """Run the proxy (and the scenario) until stopped or ``--duration`` passes.

    Args:
        args: Parsed ``proxy`` arguments.
        scenario: The scenario, already loaded for the proxy.
        stop: Ends the run when set; SIGINT and SIGTERM set it too.

    Returns:
        Exit status.
    """
    host, port = parse_endpoint(args.upstream)
    recorder: RecordingWriter | None = None
    proxy = ProxyServer(host, port, host=args.host, port=args.port,
                        notify=_write, inspect=scenario is not None and needs_inspection(scenario))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            await proxy.start()
        except OSError as exc:
            # asyncio rewords the error ("error while attempting to bind on
            # address ..."); the errno's own text is the reason.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {addr(args.host, args.port)}: {reason}"
                              ) from exc
        if args.record:
            # Opened only now that the proxy listens: a proxy that cannot start
            # leaves the file as it was.
            recorder = RecordingWriter(args.record, upstream=f"{host}:{port}",
                                       mask_accounts=args.mask_accounts,
                                       overwrite=args.overwrite)
            proxy.recorder = recorder
        _write(f"proxy listening on {args.host}:{proxy.port}, relaying to {proxy.upstream}"
               + (f", recording to {recorder.path}" if recorder else ""))
        if scenario is not None:
            _write(f"scenario {scenario.source}: {len(scenario.steps)} step(s)")
            tasks.append(asyncio.ensure_future(run_relay_scenario(proxy, scenario)))
        # Whether the gateway answers, said once it is known; the proxy serves meanwhile.
        tasks.append(asyncio.ensure_future(_probe(proxy)))
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([waiter], timeout=args.duration)
        finally:
            waiter.cancel()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await proxy.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        if recorder is not None:
            recorder.close()
            _write(f"recorded {recorder.messages:,} message(s) of {proxy.closed_sessions} "
                   f"session(s) to {recorder.path}")
    _write("proxy stopped")
    return 0


class ListenError(Exception):
    """The port the proxy was told to listen on cannot be bound (one line, exit 2)."""


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ibkr-connection proxy``.

    Returns:
        0 on a clean exit (Ctrl-C and SIGTERM included); 2, after one line on
        stderr, for a bad ``--upstream`` or scenario, an existing ``--record``
        file without ``--overwrite``, or a port that cannot be listened on; 1
        if the recording file cannot be written.
    """
    try:
        parse_endpoint(args.upstream)
        scenario = load_relay_scenario(args.scenario) if args.scenario else None
        if args.record and not args.overwrite and Path(args.record).exists():
            raise ValueError(f"--record {args.record}: the file exists; pass --overwrite to "
                             "replace it, or name another file")
    except (ValueError, ScenarioError) as exc:
        sys.stderr.write(f"ibkr-connection proxy: {exc}\n")
        return 2
    try:
        return asyncio.run(serve(args, scenario))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 0
    except ListenError as exc:
        sys.stderr.write(f"ibkr-connection proxy: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"ibkr-connection proxy: {exc}\n")
        return 1
