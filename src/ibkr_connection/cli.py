"""Command line entry point: ``ibkr-connection <command>``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="ibkr-connection",
        description="Keep a trading bot's link to TWS / IB Gateway alive.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    diagram = sub.add_parser(
        "diagram", help="write the state diagrams and tables into diagrams/, and the "
                        "scenario reference into docs/"
    )
    diagram.add_argument("--out", type=Path, default=Path("diagrams"), help="output folder")
    diagram.add_argument(
        "--check", action="store_true", help="only report files that drifted from the code"
    )
    diagram.add_argument("--docs", type=Path, default=None,
                         help="folder of the generated reference pages (default: docs/ next "
                              "to the output folder)")
    diagram.add_argument("--no-svg", action="store_true", help="skip the Graphviz SVG")
    diagram.set_defaults(func=_diagram)

    demo = sub.add_parser("demo", help="tell a recovery story against the embedded simulator")
    demo.add_argument("--seed", type=int, default=0, help="jitter seed")
    _add_metrics_options(demo)
    demo.set_defaults(func=_demo)

    watch = sub.add_parser("watch", help="live view of the connection to a real gateway")
    watch.add_argument("--host", default=None,
                       help="gateway host (default IBKR_HOST or 127.0.0.1)")
    watch.add_argument("--port", type=int, default=None,
                       help="API port (default IBKR_PORT or 4002)")
    watch.add_argument("--client-id", type=int, default=None,
                       help="client id (default IBKR_CLIENT_ID or 1)")
    watch.add_argument("-q", "--quiet", action="store_true",
                       help="print the transition lines only (no endpoint notice, no summary)")
    _add_metrics_options(watch)
    watch.set_defaults(func=_watch)

    replay = sub.add_parser(
        "replay", help="re-feed a journal and check the transitions match (exit 0 if all do, "
                       "1 if some differ, 2 if the file is not a journal)")
    replay.add_argument("journal", type=Path, help="a JSON Lines journal written by the manager")
    replay.add_argument("--timeline", type=Path, default=None, metavar="FILE.svg",
                        help="also draw the journal's states over time as an SVG picture")
    replay.set_defaults(func=_replay)

    from ibkr_connection.proxy import cli as proxy_cli
    from ibkr_connection.simulator import cli as sim_cli

    sim_cli.add_parser(sub)
    proxy_cli.add_parser(sub)
    return parser


def _add_metrics_options(command: argparse.ArgumentParser) -> None:
    """The metrics endpoint's options, shared by ``demo`` and ``watch``."""
    from ibkr_connection.health import DEFAULT_HOST

    command.add_argument("--metrics-port", type=int, default=None,
                         help="serve /metrics and /healthz on HOST:PORT (needs the metrics "
                              "extra)")
    command.add_argument("--metrics-host", default=DEFAULT_HOST,
                         help=f"address the endpoint binds (default {DEFAULT_HOST}; "
                              "0.0.0.0 in a container)")
    command.add_argument("--healthz-degraded-ok", action="store_true",
                         help="/healthz answers 200 while degraded too")


def _quiet_client_logs(args: argparse.Namespace) -> None:
    if not args.verbose:
        for name in ("ib_insync", "ib_async", "ibkr_connection", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _write(text: str) -> None:
    """Write to stdout at once: a pipe (a container's log, ``tee``) must not sit on lines."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _demo(args: argparse.Namespace) -> int:
    from ibkr_connection.demo import EndpointUnavailable, run_demo

    _quiet_client_logs(args)
    try:
        return asyncio.run(run_demo(_write, seed=args.seed,
                                    metrics_port=args.metrics_port,
                                    degraded_ok=args.healthz_degraded_ok,
                                    metrics_host=args.metrics_host))
    except EndpointUnavailable as exc:
        sys.stderr.write(f"ibkr-connection demo: {exc}\n")
        return 2


def _watch(args: argparse.Namespace) -> int:
    from ibkr_connection.config import ConnectionConfig
    from ibkr_connection.demo import EndpointUnavailable, run_watch
    from ibkr_connection.errors import ConfigError

    overrides = {name: value for name, value in (
        ("host", args.host), ("port", args.port), ("client_id", args.client_id))
        if value is not None}
    try:
        config = ConnectionConfig.from_env(**overrides)
    except ConfigError as exc:
        sys.stderr.write(f"ibkr-connection watch: {exc}\n")
        return 2
    try:
        return asyncio.run(run_watch(_write, config, metrics_port=args.metrics_port,
                                     degraded_ok=args.healthz_degraded_ok,
                                     metrics_host=args.metrics_host, quiet=args.quiet))
    except EndpointUnavailable as exc:
        sys.stderr.write(f"ibkr-connection watch: {exc}\n")
        return 2


def _replay(args: argparse.Namespace) -> int:
    from ibkr_connection.errors import JournalError
    from ibkr_connection.journal import replay_file

    try:
        result = replay_file(args.journal)
    except OSError as exc:
        sys.stderr.write(f"ibkr-connection replay: cannot read {args.journal}: {exc}\n")
        return 2
    except JournalError as exc:
        sys.stderr.write(f"ibkr-connection replay: {args.journal}: {exc}\n")
        return 2
    for index, step in enumerate(result.inputs):
        if not step.matches:
            sys.stdout.write(f"input {index}: {step.input} (line {step.line}): journal says "
                             f"{step.recorded}, the machine now says {step.replayed}\n")
    for line in result.cut_lines:
        # A crash mid-write cuts the last line; the lines before it are whole.
        sys.stdout.write(f"line {line}: cut mid-write (the bot stopped while writing it), "
                         f"not replayed\n")
    if args.timeline is not None:
        from ibkr_connection.timeline import render_svg, timeline_from_journal

        lane, marks, end = timeline_from_journal(
            args.journal.read_text(encoding="utf-8").splitlines(), args.journal.name)
        args.timeline.write_text(render_svg([lane], marks, end=end, title=str(args.journal)),
                                 encoding="utf-8")
        sys.stdout.write(f"timeline written: {args.timeline}\n")
    mismatches = len(result.mismatches)
    verdict = f"{mismatches} differ" if mismatches else "all transitions match"
    complete = "complete inputs" if result.cut_lines else "inputs"
    sessions = f" in {result.sessions} sessions" if result.sessions > 1 else ""
    sys.stdout.write(f"{len(result.inputs)} {complete}{sessions} replayed: {verdict}\n")
    return 1 if mismatches else 0


def _diagram(args: argparse.Namespace) -> int:
    from ibkr_connection import diagram

    docs = args.docs if args.docs is not None else args.out.parent / "docs"
    if args.check:
        stale = diagram.stale_paths(args.out, docs)
        for path in stale:
            sys.stderr.write(f"{path} is out of date: run 'ibkr-connection diagram'\n")
        return 1 if stale else 0
    for path in diagram.write_all(args.out, with_svg=not args.no_svg, docs=docs):
        sys.stdout.write(f"wrote {path}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named on the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
