"""Command line entry point: ``ibkr-connection <command>``."""

from __future__ import annotations

import argparse
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
        "diagram", help="write the state diagrams and tables into diagrams/"
    )
    diagram.add_argument("--out", type=Path, default=Path("diagrams"), help="output folder")
    diagram.add_argument(
        "--check", action="store_true", help="only report files that drifted from the code"
    )
    diagram.add_argument("--no-svg", action="store_true", help="skip the Graphviz SVG")
    diagram.set_defaults(func=_diagram)

    from ibkr_connection.simulator import cli as sim_cli

    sim_cli.add_parser(sub)
    return parser


def _diagram(args: argparse.Namespace) -> int:
    from ibkr_connection import diagram

    if args.check:
        stale = diagram.drift(args.out)
        for name in stale:
            sys.stderr.write(f"{args.out / name} is out of date: run 'ibkr-connection diagram'\n")
        return 1 if stale else 0
    for path in diagram.write_all(args.out, with_svg=not args.no_svg):
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
