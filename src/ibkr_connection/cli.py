"""Command line entry point: ``ibkr-connection <command>``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import shutil
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
    diagram.add_argument("--out", type=Path, default=None,
                         help="output folder (default: diagrams/ of the checkout the package "
                              "runs from, wherever the command is run)")
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
    _add_journal_option(demo)
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
                       help="print the transition lines only (no endpoint notice, no summary) "
                            "and log warnings and errors only")
    _add_journal_option(watch)
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


def _add_journal_option(command: argparse.ArgumentParser) -> None:
    """``--journal FILE``, shared by ``demo`` and ``watch``."""
    command.add_argument("--journal", type=Path, default=None, metavar="FILE",
                         help="append the manager's journal to FILE (JSON Lines; check it "
                              "with 'ibkr-connection replay FILE')")


def _journal_refused(command: str, path: Path | None) -> bool:
    """Say in one line, before anything connects, that the journal cannot be written."""
    if path is None:
        return False
    try:
        with path.open("a", encoding="utf-8"):
            pass  # the manager appends to it too: nothing is lost
    except OSError as exc:
        sys.stderr.write(f"ibkr-connection {command}: cannot write the journal {path}: "
                         f"{exc.strerror or exc}\n")
        return True
    return False


def _quiet_client_logs(args: argparse.Namespace) -> None:
    if not args.verbose:
        for name in ("ib_insync", "ib_async", "ibkr_connection", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _write(text: str) -> None:
    """Write to stdout at once: a pipe (a container's log, ``tee``) must not sit on lines."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _demo(args: argparse.Namespace) -> int:
    _quiet_client_logs(args)
    if _journal_refused("demo", args.journal):
        return 2
    # Imported once the arguments pass: a refusal does not wait for eventkit's imports.
    from ibkr_connection.demo import EndpointUnavailable, run_demo

    try:
        return asyncio.run(run_demo(_write, seed=args.seed,
                                    metrics_port=args.metrics_port,
                                    degraded_ok=args.healthz_degraded_ok,
                                    metrics_host=args.metrics_host, journal=args.journal))
    except EndpointUnavailable as exc:
        sys.stderr.write(f"ibkr-connection demo: {exc}\n")
        return 2
    except KeyboardInterrupt:  # before the demo's own handler is in place, or after
        _write("demo stopped by SIGINT\n")
        return 130


def _watch(args: argparse.Namespace) -> int:
    from ibkr_connection.config import ConnectionConfig
    from ibkr_connection.errors import ConfigError

    overrides = {name: value for name, value in (
        ("host", args.host), ("port", args.port), ("client_id", args.client_id))
        if value is not None}
    try:
        config = ConnectionConfig.from_env(**overrides)
    except ConfigError as exc:
        # A bad flag is named as the operator typed it (--client-id, not client_id).
        flag = "--" + exc.field.replace("_", "-") if exc.field in overrides else exc.field
        sys.stderr.write(f"ibkr-connection watch: {flag}{str(exc)[len(exc.field):]}\n")
        return 2
    if _journal_refused("watch", args.journal):
        return 2
    # Imported once the arguments pass: a refusal does not wait for eventkit's imports.
    from ibkr_connection.demo import EndpointUnavailable, run_watch

    if args.quiet and not args.verbose:
        # Transitions are on stdout already: stderr keeps warnings and errors only.
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return asyncio.run(run_watch(_write, config, metrics_port=args.metrics_port,
                                     degraded_ok=args.healthz_degraded_ok,
                                     metrics_host=args.metrics_host, quiet=args.quiet,
                                     journal=args.journal))
    except EndpointUnavailable as exc:
        sys.stderr.write(f"ibkr-connection watch: {exc}\n")
        return 2


def _is_proxy_recording(path: Path) -> bool:
    """True if ``path`` starts with a proxy recording's header (``proxy --record`` wrote it)."""
    from ibkr_connection.wire.recording import RECORDING_KIND

    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        header = json.loads(first)
    except (OSError, ValueError):
        return False
    return (isinstance(header, dict) and header.get("type") == "header"
            and header.get("recording") == RECORDING_KIND)


def _replay(args: argparse.Namespace) -> int:
    from ibkr_connection.errors import JournalError
    from ibkr_connection.journal import replay_file

    # The fresh machine logs each replayed move as if it happened now, stamped
    # with today's time: the output is the verdict and the differences only.
    _quiet_client_logs(args)
    try:
        result = replay_file(args.journal)
    except OSError as exc:
        sys.stderr.write(f"ibkr-connection replay: cannot read {args.journal}: {exc}\n")
        return 2
    except JournalError as exc:
        if _is_proxy_recording(args.journal):
            sys.stderr.write(f"ibkr-connection replay: {args.journal} is a proxy recording, "
                             f"not a journal: use `ibkr-connection sim --replay "
                             f"{args.journal}`\n")
        else:
            sys.stderr.write(f"ibkr-connection replay: {args.journal}: {exc}\n")
        return 2
    for index, step in enumerate(result.inputs):
        if not step.matches:
            sys.stdout.write(f"input {index}: {step.input} (line {step.line}): "
                             f"{step.difference}\n")
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


def _checkout_root() -> Path | None:
    """The checkout the running package comes from (``src/ibkr_connection`` in it), or None.

    An installed package (site-packages) has no checkout: there are no
    committed diagrams to check or rewrite.
    """
    import ibkr_connection

    root = Path(ibkr_connection.__file__).resolve().parent.parent.parent
    try:
        project = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if re.search(r'^name = "ibkr-connection"$', project, re.MULTILINE) else None


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it, as given otherwise."""
    try:
        return f"{path.resolve().relative_to(Path.cwd().resolve())}/"
    except ValueError:
        return f"{path}/"


def _diagram(args: argparse.Namespace) -> int:
    from ibkr_connection import diagram

    out: Path | None = args.out
    if out is None:
        # The files live in the package's own source tree, not wherever the
        # command happens to run: never create diagrams/ and docs/ in a stranger's folder.
        root = _checkout_root()
        if root is None:
            sys.stderr.write(
                "ibkr-connection diagram: not run from a checkout of ibkr-connection (the "
                "package is installed, not in a source tree): run it in a clone, or pass "
                "--out DIR\n")
            return 2
        out = root / "diagrams"
    docs = args.docs if args.docs is not None else out.parent / "docs"
    rerun = "ibkr-connection diagram" + "".join(
        f" --{name} {value}" for name, value in (("out", args.out), ("docs", args.docs))
        if value is not None)
    if args.check:
        stale = diagram.stale_paths(out, docs)
        for path in stale:
            why = "is out of date" if path.exists() else "is missing"
            sys.stderr.write(f"{path} {why}: run '{rerun}'\n")
        if not stale:
            _write(f"{_shown(out)} and {_shown(docs)} are up to date\n")
        return 1 if stale else 0
    if not args.no_svg and shutil.which("dot") is None:
        # No Graphviz on a fresh machine: say how to get on without it, before writing
        # anything, not a traceback after writing half the files.
        sys.stderr.write("ibkr-connection diagram: Graphviz 'dot' is not installed (apt-get "
                         "install graphviz): install it, or pass --no-svg to write "
                         "everything but the SVG\n")
        return 2
    for path in diagram.write_all(out, with_svg=not args.no_svg, docs=docs):
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
