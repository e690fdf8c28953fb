"""The command line as a new user meets it (issue 18): replay, demo signals, diagram, journal.

Every test runs ``ibkr-connection`` as a child process, against real sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState, adapter
from ibkr_connection.proxy import ProxyServer
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.wire.recording import RecordingWriter

from conftest import reap

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


# -- signals and the journal ---------------------------------------------------------------

_TRANSITION = re.compile(r"^ *\d+\.\d{3}s +[a-z]+ -> [a-z]+ ")


async def _run_until_signal(
        args: list[str], seen: str, sig: signal.Signals,
        acts: Sequence[tuple[str, Callable[[], Awaitable[object]]]] = ()
) -> tuple[int, list[str], str]:
    """Start ``ibkr-connection ARGS``, send ``sig`` once a stdout line matches ``seen``.

    Args:
        args: the command line.
        seen: the pattern of the line after which the signal goes.
        sig: the signal.
        acts: (pattern, act): each act is awaited once a line matches its pattern,
            in order, before ``seen`` is looked for.

    Returns:
        The exit status, every stdout line, stderr.
    """
    child = await asyncio.create_subprocess_exec(
        *_CLI, *args, env=_CHILD_ENV, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    lines: list[str] = []
    try:
        for pattern, act in [*acts, (seen, None)]:
            # The child writes into a pipe: a line arrives only because it flushes each one.
            while not any(re.search(pattern, line) for line in lines):
                line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode()
                assert line, f"exited before {pattern!r}: {lines}"
                lines.append(line)
            if act is not None:
                await act()
        child.send_signal(sig)
        rest, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        await reap(child)
    assert child.returncode is not None
    return child.returncode, lines + rest.decode().splitlines(keepends=True), err.decode()


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
async def test_demo_stops_cleanly_on_a_signal(sig: signal.Signals, status: int) -> None:
    """A signal mid-demo stops the manager, says so in one line, exits 128 + the signal."""
    code, lines, err = await _run_until_signal(["demo"], _TRANSITION.pattern, sig)
    assert code == status, err
    assert err == ""
    assert re.match(rf"^ *\d+\.\d{{3}}s  --- stopped by {sig.name}: the manager is stopped, "
                    r"the simulator closed\n$", lines[-1]), lines[-1]
    assert re.search(r"-> disconnected +disconnect: stop\(\) called", lines[-3]), lines[-3]
    assert re.search(r"disconnected -> stopped +stop: stop\(\) called", lines[-2]), lines[-2]


async def test_demo_journal_replays(tmp_path: Path) -> None:
    """demo --journal FILE, stopped by Ctrl-C: the journal so far replays, exit 0."""
    journal = tmp_path / "demo.jsonl"
    code, _, err = await _run_until_signal(
        ["demo", "--journal", str(journal)], "connected -> degraded", signal.SIGINT)
    assert code == 130, err
    done = await asyncio.to_thread(_cli, "replay", str(journal))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"\d+ inputs replayed: all transitions match\n", done.stdout)
    states = [json.loads(line).get("state") for line in journal.read_text().splitlines()]
    assert "degraded" in states
    assert states[-2:] == ["disconnected", "stopped"]


async def test_watch_journal_replays(tmp_path: Path) -> None:
    """watch --journal FILE writes the manager's journal; after Ctrl-C, replay FILE exits 0."""
    journal = tmp_path / "watch.jsonl"
    async with FakeGateway(accounts=["DU1234567"]) as gw:
        code, lines, err = await _run_until_signal(
            ["watch", "-q", "--port", str(gw.port), "--client-id", "8",
             "--journal", str(journal)], "connected -> degraded", signal.SIGINT,
            acts=[("connecting -> connected", lambda: gw.farm_broken("usfarm"))])
    assert code == 0, err
    assert any("degraded -> disconnected" in line for line in lines), lines
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert records[0]["type"] == "header"
    assert records[0]["port"] == gw.port
    # Every input is journaled, the ones that move nothing too (the farm notices at connect).
    moves = [(r["input"], r["state"]) for r in records[1:]]
    changes = [move for before, move in zip([("", "disconnected"), *moves[:-1]], moves, strict=True)
               if move[1] != before[1]]
    assert changes == [("connect", "connecting"), ("attempt_succeeded", "connected"),
                       ("farm_broken", "degraded"), ("disconnect", "disconnected"),
                       ("stop", "stopped")]
    done = await asyncio.to_thread(_cli, "replay", str(journal))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{len(moves)} inputs replayed: all transitions match\n"


def test_journal_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    """watch --journal in a missing folder: one line naming the file, exit 2, nothing run."""
    journal = tmp_path / "no such folder" / "watch.jsonl"
    done = _cli("watch", "--port", "9", "--journal", str(journal))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"ibkr-connection watch: cannot write the journal {journal}: "
                           "No such file or directory\n")


# -- diagram: the checkout's files, wherever it runs ---------------------------------------

_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_diagram_check_finds_the_checkout_and_says_up_to_date(where: str, tmp_path: Path
                                                              ) -> None:
    """diagram --check checks the package's own checkout from any folder and says so on success."""
    cwd = _ROOT if where == "checkout" else tmp_path
    done = _cli("diagram", "--check", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    shown = "" if where == "checkout" else f"{_ROOT}/"
    assert done.stdout == f"{shown}diagrams/ and {shown}docs/ are up to date\n"
    assert list(tmp_path.iterdir()) == []


def test_diagram_outside_a_checkout_is_refused(tmp_path: Path) -> None:
    """An installed package (no checkout around it) refuses in one line and creates nothing."""
    # `diagram`, which would write files; `diagram --check` is refused by the same lines,
    # before --check is read (one process for both, as they were one path).
    # The package as pip installs it: its folder alone on the path, no pyproject.toml above.
    site = tmp_path / "site"
    shutil.copytree(_ROOT / "src" / "ibkr_connection", site / "ibkr_connection",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {**_CHILD_ENV, "PYTHONPATH": str(site)}
    done = _cli("diagram", cwd=cwd, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr == (
        "ibkr-connection diagram: not run from a checkout of ibkr-connection (the package is "
        "installed, not in a source tree): run it in a clone, or pass --out DIR\n")
    assert list(cwd.iterdir()) == []


def test_diagram_check_names_missing_files(tmp_path: Path) -> None:
    """diagram --check --out DIR with nothing in DIR calls each file missing, not out of date."""
    out = tmp_path / "diagrams"
    done = _cli("diagram", "--check", "--out", str(out))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert f"{out}/connection.mmd is missing: run 'ibkr-connection diagram --out {out}'" in lines
    assert f"{tmp_path}/docs/scenarios.md is missing: run 'ibkr-connection diagram --out {out}'" \
        in lines
    assert not any("out of date" in line for line in lines)
