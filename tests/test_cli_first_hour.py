"""The command line as a new user meets it (issue 18): replay, demo signals, diagram, journal.

Every test runs ``ibkr-connection`` as a child process, against real sockets.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState, adapter
from ibkr_connection.proxy import ProxyServer
from ibkr_connection.proxy.recording import RecordingWriter
from ibkr_connection.simulator import FakeGateway

#: The child's environment: stdout a pipe, block-buffered, as under a process supervisor.
_CHILD_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}

_CLI = (sys.executable, "-m", "ibkr_connection.cli")


def _cli(*args: str, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ibkr-connection ARGS`` in a child process and wait for it to exit."""
    return subprocess.run([*_CLI, *args], capture_output=True, text=True, timeout=120,
                          check=False, env=env or _CHILD_ENV, cwd=cwd)


# -- replay ---------------------------------------------------------------------------------


async def test_replay_prints_the_verdict_only(tmp_path: Path) -> None:
    """replay of a journal prints its verdict and nothing else: no replayed transition logged."""
    journal = tmp_path / "conn.jsonl"
    async with FakeGateway(accounts=["DU1234567"]) as gw:
        manager = ConnectionManager(adapter.new_ib(), ConnectionConfig(port=gw.port, client_id=6),
                                    journal=journal)
        await manager.start(timeout=10)
        await gw.farm_broken("usfarm")
        await manager.wait_for(ConnectionState.DEGRADED, timeout=10)
        await manager.stop()
    inputs = len(journal.read_text().splitlines()) - 1  # every line but the header
    done = await asyncio.to_thread(_cli, "replay", str(journal))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{inputs} inputs replayed: all transitions match\n"
    assert done.stderr == ""


async def test_replay_of_a_proxy_recording_names_the_mistake(tmp_path: Path) -> None:
    """replay given a proxy recording says so and points at `sim --replay`, exit 2."""
    recording = tmp_path / "session.jsonl"
    async with FakeGateway(accounts=["DU1234567"]) as gw:
        writer = RecordingWriter(recording, upstream=f"127.0.0.1:{gw.port}")
        async with ProxyServer("127.0.0.1", gw.port, recorder=writer,
                               notify=lambda line: None) as proxy:
            ib = adapter.new_ib()
            await ib.connectAsync("127.0.0.1", proxy.port, clientId=3, timeout=10)
            ib.disconnect()
        writer.close()
    lines = recording.read_text().splitlines()
    assert lines[0].startswith('{"type":"header","recording":"ibkr-connection"')
    assert any(line.startswith('{"type":"open","session":1') for line in lines)
    done = await asyncio.to_thread(_cli, "replay", str(recording))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"ibkr-connection replay: {recording} is a proxy recording, not a journal: "
        f"use `ibkr-connection sim --replay {recording}`\n")
