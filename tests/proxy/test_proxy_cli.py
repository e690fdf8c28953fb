"""``ibkr-connection proxy`` and ``sim --replay`` as an operator runs them: real processes."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.proxy import load_recording
from ibkr_connection.simulator import FakeGateway

from .conftest import ACCOUNT, FAST, wait_until
from conftest import reap

COMMAND = [sys.executable, "-m", "ibkr_connection.cli"]


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *COMMAND, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    line = await asyncio.wait_for(stream.readline(), 60)
    assert line, "the process ended early"
    return line.decode().rstrip("\n")


async def test_proxy_relays_injects_records_and_stops_cleanly(tmp_path: Path) -> None:
    """A line when listening, per fault and per session; SIGTERM ends it with status 0.

    SIGINT goes to the same handler: tests/proxy/test_proxy_cli_start.py ends a
    proxy with each signal and sees the same clean stop.
    """
    record = tmp_path / "rec.jsonl"
    scenario = tmp_path / "s.toml"
    # Pacing, not a wait for a result: the fault's time (from the proxy's start) leaves the
    # test's manager a second to connect first; the line then names one session.
    scenario.write_text('[[step]]\nat = 1.0\naction = "farm_broken"\nfarm = "usfarm"\n')
    async with FakeGateway(accounts=[ACCOUNT]) as gw:
        child = await _spawn("proxy", "--upstream", f"127.0.0.1:{gw.port}", "--port", "0",
                             "--record", str(record), "--scenario", str(scenario))
        try:
            first = await _line(child.stdout)
            match = re.fullmatch(r"proxy listening on 127\.0\.0\.1:(\d+), relaying to "
                                 rf"127\.0\.0\.1:{gw.port}, recording to (.+)", first)
            assert match and match.group(2) == str(record), first
            assert await _line(child.stdout) == f"scenario {scenario}: 1 step(s)"
            assert await _line(child.stdout) == (
                f"upstream 127.0.0.1:{gw.port} answers the API handshake (server version 178)")
            manager = ConnectionManager(IB(), ConnectionConfig(
                port=int(match.group(1)), client_id=7, policy=FAST))
            await manager.start(timeout=10)
            fault = await _line(child.stdout)
            assert fault.endswith(" fault farm_broken farm=usfarm code=2103 -> 1 session(s)")
            await manager.wait_for(ConnectionState.DEGRADED, timeout=10)
            child.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(child.communicate(), 60)
        finally:
            await reap(child)
        await manager.stop()
    assert child.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"session 1 \(client 7, 127\.0\.0\.1:\d+\) closed after \d+\.\d\ds: "
                        r"[\d,]+ bytes to the gateway, [\d,]+ bytes to the client "
                        r"\(proxy stopped\)", lines[0]), lines[0]
    assert re.fullmatch(r"recorded [\d,]+ message\(s\) of 1 session\(s\) to "
                        + re.escape(str(record)), lines[1]), lines[1]
    assert lines[2] == "proxy stopped"
    recording = load_recording(record)
    assert recording.cut_line is None
    # ib_insync 0.9.86 offers 157..176; the simulator's cap is 178.
    assert [(s.client_id, s.version, s.close_reason) for s in recording.sessions] == [
        (7, 176, "proxy stopped")]
    assert [f["action"] for f in recording.faults] == ["farm_broken"]


async def test_a_killed_proxy_loses_nothing_already_recorded(tmp_path: Path) -> None:
    """SIGKILL mid-session: every line written so far is whole and readable."""
    record = tmp_path / "rec.jsonl"
    async with FakeGateway(accounts=[ACCOUNT]) as gw:
        child = await _spawn("proxy", "--upstream", f"127.0.0.1:{gw.port}", "--port", "0",
                             "--record", str(record))
        try:
            port = int((await _line(child.stdout)).split(":")[1].split(",")[0])
            ib = IB()
            await ib.connectAsync("127.0.0.1", port, clientId=4, timeout=10)
            await ib.reqCurrentTimeAsync()
            child.kill()
            await child.wait()
            ib.disconnect()
        finally:
            await reap(child)
    recording = load_recording(record)
    session = recording.sessions[0]
    assert session.client_id == 4 and session.version == 176  # ib_insync's highest
    sent = [m.fields for m in session.messages if m.direction == "c2s"]
    assert ["49", "1"] in sent
    assert any(m.msg_id == 49 for m in session.messages if m.direction == "s2c")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize(
    ("scenario", "upstream", "message"),
    [
        ('[[step]]\nat = 1\naction = "push_tick"\nsymbol = "AAPL"\nprice = 1.0\n',
         "127.0.0.1:4002", "step 1: action 'push_tick' cannot apply to the proxy: the proxy "
                           "does not invent market data"),
        ("[[step]\nat = 1\n", "127.0.0.1:4002", "invalid TOML"),
        ('[[step]]\nat = 1\naction = "stall"\n', "localhost", "--upstream 'localhost': "
                                                              "expected HOST:PORT"),
        ('[[step]]\nat = 1\naction = "stall"\n', "127.0.0.1:99999", "port must be 1 to 65535"),
    ],
    ids=["relay-cannot-play", "bad-toml", "no-port", "bad-port"],
)
def test_proxy_bad_input_is_one_line_and_status_2(
    tmp_path: Path, scenario: str, upstream: str, message: str
) -> None:
    """A bad scenario or --upstream: one line on stderr naming the problem, exit 2."""
    path = tmp_path / "s.toml"
    path.write_text(scenario)
    done = _run("proxy", "--upstream", upstream, "--port", "0", "--scenario", str(path))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ibkr-connection proxy: "), done.stderr
    assert message in lines[0]


def test_sim_replay_of_a_garbage_recording_is_one_line_naming_it(tmp_path: Path) -> None:
    """sim --replay on garbage: one line naming the file and the line, exit 2."""
    path = tmp_path / "rec.jsonl"
    path.write_text('{"type": "header", "recording": "ibkr-connection", "format": 1}\nhello\n')
    done = _run("sim", "--replay", str(path), "--port", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"ibkr-connection sim: {path} line 2: not JSON (Expecting value at column 1)"]


async def test_sim_replay_serves_a_recording(tmp_path: Path) -> None:
    """sim --replay FILE --port 0 answers a client from the recording."""
    record = tmp_path / "rec.jsonl"
    async with FakeGateway(accounts=["DU7654321"]) as gw:
        proxy = await _spawn("proxy", "--upstream", f"127.0.0.1:{gw.port}", "--port", "0",
                             "--record", str(record))
        try:
            port = int((await _line(proxy.stdout)).split(":")[1].split(",")[0])
            ib = IB()
            await ib.connectAsync("127.0.0.1", port, clientId=4, timeout=10)
            ib.disconnect()
            await wait_until(lambda: "closed" in record.read_text().splitlines()[-1],
                             what="session recorded")
        finally:
            proxy.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proxy.communicate(), 60)
    sim = await _spawn("sim", "--replay", str(record), "--port", "0", "--duration", "60")
    try:
        port = 0
        while not port:
            line = await _line(sim.stderr)
            found = re.search(r"simulator ready on 127\.0\.0\.1:(\d+) accounts=DU\*\*\*321", line)
            port = int(found.group(1)) if found else 0
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=4, timeout=10)
        assert ib.managedAccounts() == ["DU7654321"]
        ib.disconnect()
    finally:
        sim.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(sim.communicate(), 60)
    assert sim.returncode == 0
    assert "replay: client 4 served from recorded session 1 (client 4)" in err.decode()


def test_the_readme_rehearsal_is_valid(tmp_path: Path) -> None:
    """The README's rehearsal scenario loads for the proxy and its command parses."""
    from ibkr_connection.cli import build_parser
    from ibkr_connection.proxy.injection import load_relay_scenario

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Rehearse against your paper account", 1)[1].split("\n## ", 1)[0]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "rehearsal.toml"
    path.write_text("\n".join(line.removeprefix("   ") for line in toml.splitlines()))
    scenario = load_relay_scenario(path)
    assert [(s.at, s.action) for s in scenario.steps] == [
        (20.0, "farm_broken"), (30.0, "farm_ok"), (40.0, "error"), (55.0, "error"),
        (70.0, "restart")]
    command = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").split()
    assert command[:3] == ["uv", "run", "ibkr-connection"]
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.upstream, args.port, args.scenario, args.record) == (
        "proxy", "127.0.0.1:4002", 4003, "rehearsal.toml", "rehearsal.jsonl")
