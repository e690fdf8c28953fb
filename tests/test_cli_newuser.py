"""A new user's first hour with the CLI: what the README promises and what a bare machine lacks."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_until, watch_child

README = Path(__file__).resolve().parent.parent / "README.md"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ibkr_connection.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False, env=env)


def test_diagram_without_graphviz_is_one_line_naming_no_svg(tmp_path: Path) -> None:
    """No `dot` on PATH: one line naming Graphviz and --no-svg, exit 2, no traceback."""
    bare = tmp_path / "bin"  # a PATH with no Graphviz on it
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    done = _cli("diagram", "--out", str(tmp_path / "diagrams"), env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "ibkr-connection diagram: Graphviz 'dot' is not installed (apt-get install graphviz): "
        "install it, or pass --no-svg to write everything but the SVG"]
    again = _cli("diagram", "--no-svg", "--out", str(tmp_path / "diagrams"), env=env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "diagrams" / "connection.mmd").is_file()
    assert not (tmp_path / "diagrams" / "connection.svg").exists()


#: Every option of each command's --help, written out: the README's Commands table names each.
OPTIONS = {
    "demo": ["--seed", "--journal", "--metrics-port", "--metrics-host", "--healthz-degraded-ok"],
    "watch": ["--host", "--port", "--client-id", "-q", "--quiet", "--journal",
              "--metrics-port", "--metrics-host", "--healthz-degraded-ok"],
    "sim": ["--host", "--port", "--accounts", "--next-order-id", "--server-version",
            "--scenario", "--list-scenarios", "--fill-mode", "--fill-parts", "--replay",
            "--ibc-port", "--ibc-restart-outage", "--duration"],
    "replay": ["--timeline"],
    "diagram": ["--out", "--check", "--docs", "--no-svg"],
    "proxy": ["--upstream", "--port", "--host", "--scenario", "--record", "--overwrite",
              "--mask-accounts", "--duration"],
}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_readme_commands_table_names_every_option_of_help(command: str) -> None:
    """Each option --help lists is in the README's row(s) for the command, and no other."""
    done = _cli(command, "--help")
    assert done.returncode == 0, done.stderr
    # The options section: one option per line, two spaces in ("  -q, --quiet  ...").
    starts = re.findall(r"^  (-[a-z]|--[a-z][a-z-]*)(?:, (--[a-z][a-z-]*))?", done.stdout,
                        re.MULTILINE)
    in_help = {name for pair in starts for name in pair if name} - {"-h", "--help"}
    assert in_help == set(OPTIONS[command])
    rows = [line.split(" | ")[0] for line in README.read_text(encoding="utf-8").splitlines()
            if line.startswith(f"| `ibkr-connection {command} ")
            or line.startswith(f"| `ibkr-connection {command}`")]
    assert rows, command
    in_readme = set(re.findall(r"(?<![\w-])(-q|--[a-z][a-z-]+)", " ".join(rows)))
    assert in_readme == set(OPTIONS[command])


def test_readme_names_the_global_verbose_flag() -> None:
    """`-v`/`--verbose` of the top-level --help is in the README."""
    done = _cli("--help")
    assert "-v, --verbose" in done.stdout
    assert "ibkr-connection -v" in README.read_text(encoding="utf-8")


_HINT = "nothing accepts connections on"


async def test_watch_against_a_closed_port_says_once_what_to_check() -> None:
    """watch at a port nobody listens on: one line naming host:port and IB's ports, then retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connects are refused

    async def refusals(stdout: asyncio.StreamReader, lines: list[str]) -> None:
        await read_until(stdout, lines, r"connecting -> backoff +attempt_failed", count=5)

    out, _, status = await watch_child(port, refusals)
    assert status == 0
    hints = [line.strip() for line in out if _HINT in line]
    assert hints == [
        f"nothing accepts connections on 127.0.0.1:{port}: is TWS / IB Gateway running there, "
        "with its API enabled? (ports: TWS 7497 paper, 7496 live; IB Gateway 4002 paper, "
        "4001 live; --port, --host or IBKR_PORT, IBKR_HOST); retrying until Ctrl-C"]
    first_refusal = next(i for i, line in enumerate(out) if "connection refused" in line)
    assert out.index(next(line for line in out if _HINT in line)) == first_refusal + 1


async def test_watch_gives_no_hint_for_a_restart_after_a_session() -> None:
    """Refusals after a session are a gateway restarting: no closed-port line."""
    from ibkr_connection.simulator import FakeGateway

    async with FakeGateway() as gw:

        async def restart(stdout: asyncio.StreamReader, lines: list[str]) -> None:
            await read_until(stdout, lines, r"connecting -> connected")
            restarting = asyncio.ensure_future(gw.restart(outage=0.5))
            await read_until(stdout, lines, r"connection refused")
            await read_until(stdout, lines, r"connecting -> connected", count=2)
            await restarting

        out, _, status = await watch_child(gw.port, restart)
    assert status == 0
    assert [line for line in out if _HINT in line] == []
    assert sum("connection refused" in line for line in out) >= 1
