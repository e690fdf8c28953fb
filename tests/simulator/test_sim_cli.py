"""``ibkr-connection sim`` as an operator runs it: a real child process."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "ibkr_connection.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_sim_ibc_port_taken_names_the_ibc_port(taken_port: int) -> None:
    """--ibc-port taken: one line naming that port (not the gateway's), exit 2."""
    done = _run("sim", "--port", "0", "--ibc-port", str(taken_port), "--duration", "5")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"ibkr-connection sim: cannot listen on 127.0.0.1:{taken_port} (IBC command server): "
        "Address already in use")
    assert "ERROR" not in done.stderr


def test_sim_port_taken_is_one_line_and_status_2(taken_port: int) -> None:
    """--port taken: one line in the commands' style naming the port, exit 2."""
    done = _run("sim", "--port", str(taken_port), "--duration", "5")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"ibkr-connection sim: cannot listen on 127.0.0.1:{taken_port}: Address already in use"]


def test_sim_bad_scenario_is_one_line_and_status_2(tmp_path: Path) -> None:
    """An invalid scenario: one line in the commands' style, no log timestamp, exit 2."""
    path = tmp_path / "s.toml"
    path.write_text("[[step]\nat = 1\n")
    done = _run("sim", "--port", "0", "--scenario", str(path), "--duration", "5")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"ibkr-connection sim: {path}: invalid TOML"), line
