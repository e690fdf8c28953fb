"""``ibkr-connection sim``: run the gateway simulator in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from ibkr_connection.config import mask_account
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.ibc import IbcCommandServer
from ibkr_connection.simulator.replay import ReplayGateway
from ibkr_connection.simulator.scenario import run_scenario
from ibkr_connection.wire import versions
from ibkr_connection.wire.recording import RecordingError, load_recording
from ibkr_connection.wire.scenario import (
    Scenario,
    ScenarioError,
    resolve_scenario,
    shipped_scenarios,
)

logger = logging.getLogger(__name__)


def server_version(text: str) -> int:
    """Parse ``--server-version``: a version the simulator speaks.

    Args:
        text: The option's value.

    Returns:
        The version.

    Raises:
        argparse.ArgumentTypeError: If it is not an integer in 157..178.
    """
    try:
        return versions.check_cap(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a server version the simulator speaks "
            f"({versions.MIN_SERVER_VERSION}..{versions.MAX_SERVER_VERSION})"
        ) from None


def _positive(text: str) -> int:
    """Parse a count of at least 1 (``--fill-parts``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``sim`` sub-command to an argparse subparsers object.

    Args:
        sub: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``sim`` parser (its ``func`` default is :func:`run`).
    """
    parser: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="run a fault-injecting IB gateway simulator",
        description="Run a TWS API gateway simulator speaking the real wire protocol.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4002, help="port (default 4002, 0 = any)")
    parser.add_argument(
        "--accounts", default=None, help="comma separated managed accounts (default DU1234567)"
    )
    parser.add_argument("--next-order-id", type=int, default=1, help="first nextValidId")
    parser.add_argument(
        "--server-version",
        type=server_version,
        default=versions.MAX_SERVER_VERSION,
        metavar="N",
        help=(
            "highest API server version spoken, "
            f"{versions.MIN_SERVER_VERSION}..{versions.MAX_SERVER_VERSION} "
            f"(default {versions.MAX_SERVER_VERSION}); each client gets the highest in its range"
        ),
    )
    parser.add_argument(
        "--scenario",
        default=None,
        metavar="NAME|FILE",
        help="TOML fault timeline: a file, or the name of a shipped one (see --list-scenarios)",
    )
    parser.add_argument(
        "--list-scenarios",
        action="store_true",
        help="list the shipped scenarios with what each does, and exit",
    )
    parser.add_argument(
        "--fill-mode",
        choices=("immediate", "manual", "parts"),
        default="immediate",
        help="order fills: in full at once, never (a scenario's fill_order fills them), or "
        "in --fill-parts executions, as the scenario action fill_mode",
    )
    parser.add_argument(
        "--fill-parts",
        type=_positive,
        default=2,
        metavar="N",
        help="executions per order with --fill-mode parts (default 2)",
    )
    parser.add_argument(
        "--replay",
        default=None,
        metavar="FILE",
        help="serve a recording made by 'ibkr-connection proxy --record' at its recorded "
        "server version (--server-version does not apply); the simulator's own model answers "
        "what the recording lacks",
    )
    parser.add_argument(
        "--ibc-port",
        type=int,
        default=None,
        metavar="N",
        help="also run IBC's command server on port N (0 = any): RESTART, RECONNECTDATA, "
        "RECONNECTACCOUNT, STOP, EXIT (IBC's convention is 7462)",
    )
    parser.add_argument(
        "--ibc-restart-outage",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long a RESTART keeps the simulator refusing connections (default 1)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="exit after this many seconds (default: run until Ctrl-C)",
    )
    parser.set_defaults(func=run)
    return parser


def add_scenario_instruments(gw: FakeGateway, scenario: Scenario) -> list[str]:
    """Add the instruments of a scenario's ``[gateway]`` table to the gateway.

    Returns:
        The symbols added, in order.
    """
    added: list[str] = []
    for entry in scenario.gateway.get("instruments", []):
        fields = dict(entry)
        symbol = fields.pop("symbol")
        gw.add_instrument(symbol, float(fields.pop("price", 100.0)), **fields)
        added.append(symbol)
    return added


async def serve(args: argparse.Namespace) -> int:
    """Run the simulator (and the scenario) until cancelled or ``--duration`` passes.

    Args:
        args: Parsed ``sim`` arguments.

    Returns:
        Exit status.
    """
    scenario = resolve_scenario(args.scenario) if args.scenario else None
    recording = load_recording(args.replay) if getattr(args, "replay", None) else None
    accounts_opt: str | None = args.accounts
    if accounts_opt:
        accounts = [a.strip() for a in accounts_opt.split(",") if a.strip()]
    elif scenario is not None and scenario.gateway.get("accounts"):
        accounts = [str(a) for a in scenario.gateway["accounts"]]
    elif recording is not None and recording.accounts:
        accounts = recording.accounts
    else:
        accounts = ["DU1234567"]
    settings: dict[str, Any] = {
        "accounts": accounts,
        "next_order_id": args.next_order_id,
        "port": args.port,
        "host": args.host,
        "fill_mode": (("parts", args.fill_parts) if args.fill_mode == "parts"
                      else args.fill_mode),
    }
    if recording is None:
        gw: FakeGateway = FakeGateway(server_version=args.server_version, **settings)
        spoken = f"server versions {versions.MIN_SERVER_VERSION}..{args.server_version}"
    else:
        # A replay answers the handshake with the recording's own version, never another.
        gw = ReplayGateway(recording, **settings)
        spoken = f"replaying server version {recording.version or gw.server_version}"
    if scenario is not None:
        add_scenario_instruments(gw, scenario)
    ibc_port = getattr(args, "ibc_port", None)
    try:
        await gw.start()
    except OSError as exc:
        raise ListenError(args.host, args.port, "", exc) from exc
    if ibc_port is not None:
        ibc = IbcCommandServer(gw, args.host, ibc_port,
                               restart_outage=getattr(args, "ibc_restart_outage", 1.0))
        try:
            await ibc.start()
        except OSError as exc:
            await gw.stop()
            raise ListenError(args.host, ibc_port, " (IBC command server)", exc) from exc
        gw.ibc = ibc  # stopped with the gateway
    try:
        ibc_line = "" if gw.ibc is None else f"; IBC command server on {args.host}:{gw.ibc.port}"
        # Masked as every log line of the project masks an account id: the
        # simulator's accounts may be copies of real ones (a rehearsal).
        logger.info("simulator ready on %s:%d accounts=%s %s%s", args.host, gw.port,
                    ",".join(mask_account(a) for a in accounts), spoken, ibc_line)
        tasks: list[asyncio.Task[None]] = []
        if scenario is not None:
            tasks.append(asyncio.create_task(run_scenario(gw, scenario)))
        # Ctrl-C and SIGTERM stop it cleanly, also when the process was started
        # with SIGINT ignored (a background job of a non-interactive shell).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await gw.stop()
    logger.info("simulator stopped")
    return 0


class ListenError(Exception):
    """A port the simulator was told to listen on cannot be bound; says which, in one line."""

    def __init__(self, host: str, port: int, what: str, exc: OSError) -> None:
        # asyncio rewords the error ("error while attempting to bind on address
        # ...: address already in use"); the errno's own text is the reason.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        super().__init__(f"cannot listen on {host}:{port}{what}: {reason}")


def _fail(message: object) -> int:
    """Say why ``sim`` cannot run, in the one-line style of the other commands; return 2."""
    sys.stderr.write(f"ibkr-connection sim: {message}\n")
    return 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ibkr-connection sim``; Ctrl-C exits with status 0.

    Args:
        args: Parsed arguments.

    Returns:
        0 on a clean exit (or after listing the scenarios); 2, after one line
        on stderr, for a bad or unknown scenario, an unreadable recording, or
        a port (the gateway's or IBC's) that cannot be listened on.
    """
    if args.list_scenarios:
        return list_scenarios()
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        logger.info("simulator stopped")
        return 0
    except (ScenarioError, RecordingError, ListenError) as exc:
        return _fail(exc)


def list_scenarios() -> int:
    """Print each shipped scenario's name and description, one per line.

    Returns:
        0, or 2 if a shipped scenario is invalid.
    """
    try:
        shipped = shipped_scenarios()
    except (ScenarioError, RecordingError) as exc:
        return _fail(exc)
    width = max((len(name) for name in shipped), default=0)
    for name, scenario in shipped.items():
        sys.stdout.write(f"{name:<{width}}  {scenario.description}\n")
    return 0
