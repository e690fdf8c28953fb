"""``ibkr-connection proxy`` at start: the recording file, the upstream, one line per event.

Each test runs the real CLI as a child process.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from pathlib import Path

import pytest

from conftest import CLI, reap, run_cli

#: A recording worth keeping: what a user would lose if the proxy truncated it.
KEPT = '{"type": "header", "recording": "ibkr-connection", "format": 1}\n' + "x" * 20_000 + "\n"


def test_record_refuses_an_existing_file_without_overwrite(tmp_path: Path) -> None:
    """--record onto an existing file: one line naming it and --overwrite, exit 2, file kept."""
    record = tmp_path / "rec.jsonl"
    record.write_text(KEPT)
    done = run_cli("proxy", "--upstream", "127.0.0.1:4002", "--port", "0", "--record",
                str(record), "--duration", "0.1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        f"ibkr-connection proxy: --record {record}: the file exists; pass --overwrite to "
        "replace it, or name another file"]
    assert record.read_text() == KEPT


def test_record_keeps_the_file_when_the_port_is_taken(tmp_path: Path, taken_port: int) -> None:
    """--record --overwrite with the listening port taken: one line naming it, exit 2, file kept."""
    record = tmp_path / "rec.jsonl"
    record.write_text(KEPT)
    done = run_cli("proxy", "--upstream", "127.0.0.1:4002", "--port", str(taken_port),
                "--record", str(record), "--overwrite", "--duration", "0.1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"ibkr-connection proxy: cannot listen on 127.0.0.1:{taken_port}: Address already in use"]
    assert record.read_text() == KEPT


def test_record_overwrite_replaces_the_file_once_listening(tmp_path: Path) -> None:
    """--record --overwrite on a free port: the old content is replaced by a new recording."""
    record = tmp_path / "rec.jsonl"
    record.write_text(KEPT)
    done = run_cli("proxy", "--upstream", "127.0.0.1:4002", "--port", "0", "--record",
                str(record), "--overwrite", "--duration", "0.1")
    assert done.returncode == 0, done.stderr
    lines = record.read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith('{"type":"header","recording":"ibkr-connection","format":1,')
    assert lines[0].endswith(',"upstream":"127.0.0.1:4002","masked":false}')


@pytest.mark.parametrize("upstream", ["localhost:4002:1", "::1:4002", "[::1]x:4002"])
def test_upstream_with_a_stray_colon_is_refused_at_start(upstream: str) -> None:
    """An --upstream that is not HOST:PORT is one line naming it, exit 2, before listening."""
    done = run_cli("proxy", "--upstream", upstream, "--port", "0", "--duration", "5")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"ibkr-connection proxy: --upstream {upstream!r}: expected HOST:PORT (an IPv6 host in "
        "brackets, e.g. [::1]:4002)"]


def _proxy_lines(upstream: str, sig: signal.Signals) -> list[str]:
    """Start the proxy in front of ``upstream``, ``sig`` once its notice is out: its stdout."""

    async def main() -> list[str]:
        child = await asyncio.create_subprocess_exec(
            *CLI, "proxy", "--upstream", upstream, "--port", "0", "--duration", "60",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        try:
            # The listening line, then the notice about the upstream.
            lines = [(await asyncio.wait_for(child.stdout.readline(), 60)).decode().rstrip()
                     for _ in range(2)]
            child.send_signal(sig)
            out, err = await asyncio.wait_for(child.communicate(), 60)
        finally:
            await reap(child)
        assert child.returncode == 0, err.decode()  # a clean stop, either signal
        return lines + out.decode().splitlines()

    return asyncio.run(main())


def test_the_proxy_says_at_start_that_the_upstream_answers() -> None:
    """A live upstream: a line saying it answers the API handshake, with its version."""
    from ibkr_connection.simulator import FakeGateway

    async def main() -> list[str]:
        async with FakeGateway(server_version=176) as gw:
            child = await asyncio.create_subprocess_exec(
                *CLI, "proxy", "--upstream", f"127.0.0.1:{gw.port}", "--port", "0",
                "--duration", "60", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            assert child.stdout is not None
            try:
                return [(await asyncio.wait_for(child.stdout.readline(), 60)).decode().rstrip()
                        for _ in range(2)]
            finally:
                child.send_signal(signal.SIGTERM)
                await asyncio.wait_for(child.communicate(), 60)

    lines = asyncio.run(main())
    assert lines[0].startswith("proxy listening on 127.0.0.1:"), lines
    assert re.fullmatch(r"upstream 127\.0\.0\.1:\d+ answers the API handshake "
                        r"\(server version 176\)", lines[1]), lines


def test_the_proxy_says_at_start_that_the_upstream_is_down(free_port: int) -> None:
    """Nothing on the upstream port: a notice that it does not answer yet; Ctrl-C stops it."""
    lines = _proxy_lines(f"127.0.0.1:{free_port}", signal.SIGINT)
    assert lines[1].startswith(f"upstream 127.0.0.1:{free_port} does not answer yet ("), lines
    assert lines[1].endswith("sessions that open before it does are closed"), lines
    assert lines[-1] == "proxy stopped"


def test_the_proxy_says_at_start_that_the_upstream_is_not_an_api_port(
    taken_port: int,
) -> None:
    """A socket that accepts and never speaks the API: named as maybe not a TWS API port."""
    lines = _proxy_lines(f"127.0.0.1:{taken_port}", signal.SIGTERM)
    assert lines[1] == (
        f"upstream 127.0.0.1:{taken_port} accepts connections but does not answer the API "
        "handshake within 2s: not a TWS API port, or a gateway still starting?"), lines
    assert lines[-1] == "proxy stopped"


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_proxy_says_each_event_once(tmp_path: Path) -> None:
    """stdout and stderr together: one line for the start, one per fault, none repeated."""
    from ib_insync import IB

    from ibkr_connection.simulator import FakeGateway

    scenario = tmp_path / "s.toml"
    scenario.write_text('[[step]]\nat = 1.0\naction = "farm_broken"\nfarm = "usfarm"\n'
                        '[[step]]\nat = 1.1\naction = "restart"\noutage = 0.1\n')

    async def main() -> list[str]:
        async with FakeGateway() as gw:
            child = await asyncio.create_subprocess_exec(
                *CLI, "proxy", "--upstream", f"127.0.0.1:{gw.port}", "--port", "0",
                "--scenario", str(scenario), "--duration", "60",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            assert child.stdout is not None
            try:
                first = (await asyncio.wait_for(child.stdout.readline(), 60)).decode()
                port = int(first.split(":")[1].split(",")[0])
                ib = IB()
                await ib.connectAsync("127.0.0.1", port, clientId=5, timeout=10)
                # The restart drops the client: its disconnect is the cue to stop.
                await asyncio.wait_for(ib.disconnectedEvent, 30)
                child.send_signal(signal.SIGTERM)
                out, err = await asyncio.wait_for(child.communicate(), 60)
            finally:
                await reap(child)
            return [first, *out.decode().splitlines(), *err.decode().splitlines()]

    lines = asyncio.run(main())

    def count(pattern: str) -> int:
        return sum(1 for line in lines if re.search(pattern, line))

    assert count(r"listening on") == 1, lines
    assert count(r"farm_broken") == 1, lines
    assert count(r"restart") == 1, lines
    assert count(r"session 1 .*closed after") == 1, lines
