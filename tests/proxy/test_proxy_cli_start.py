"""``ibkr-connection proxy`` at start: the recording file, the upstream, one line per event.

Each test runs the real CLI as a child process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "ibkr_connection.cli"]

#: A recording worth keeping: what a user would lose if the proxy truncated it.
KEPT = '{"type": "header", "recording": "ibkr-connection", "format": 1}\n' + "x" * 20_000 + "\n"


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


def test_record_refuses_an_existing_file_without_overwrite(tmp_path: Path) -> None:
    """--record onto an existing file: one line naming it and --overwrite, exit 2, file kept."""
    record = tmp_path / "rec.jsonl"
    record.write_text(KEPT)
    done = _run("proxy", "--upstream", "127.0.0.1:4002", "--port", "0", "--record",
                str(record), "--duration", "0.1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        f"ibkr-connection proxy: --record {record}: the file exists; pass --overwrite to "
        "replace it, or name another file"]
    assert record.read_text() == KEPT


def test_record_keeps_the_file_when_the_port_is_taken(tmp_path: Path, taken_port: int) -> None:
    """--record --overwrite with the listening port taken: exit 1 and the file untouched."""
    record = tmp_path / "rec.jsonl"
    record.write_text(KEPT)
    done = _run("proxy", "--upstream", "127.0.0.1:4002", "--port", str(taken_port),
                "--record", str(record), "--overwrite", "--duration", "0.1")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("ibkr-connection proxy: ") and str(taken_port) in line, line
    assert record.read_text() == KEPT


def test_record_overwrite_replaces_the_file_once_listening(tmp_path: Path) -> None:
    """--record --overwrite on a free port: the old content is replaced by a new recording."""
    record = tmp_path / "rec.jsonl"
    record.write_text(KEPT)
    done = _run("proxy", "--upstream", "127.0.0.1:4002", "--port", "0", "--record",
                str(record), "--overwrite", "--duration", "0.1")
    assert done.returncode == 0, done.stderr
    lines = record.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith('{"type":"header","recording":"ibkr-connection","format":1,')
    assert lines[0].endswith(',"upstream":"127.0.0.1:4002","masked":false}')
