"""The command line: demo, watch, diagram check, replay."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ibkr_connection import cli
from ibkr_connection.demo import run_demo

from conftest import read_until, run_on_virtual_time, watch_child


def test_demo_tells_the_whole_story() -> None:
    """Every chapter, the wedge through one IBC restart; ends disconnected, five recoveries."""
    out = io.StringIO()
    status = run_on_virtual_time(run_demo(out.write))
    text = out.getvalue()
    assert status == 0
    for expected in ("connected -> degraded", "connected -> lost", "lost -> connected",
                     "socket_closed", "heartbeat_missed", "connected -> disconnected",
                     "recoveries: 5"):
        assert expected in text, expected
    # The wedge act: a heartbeat miss, an unanswered handshake, one RESTART through IBC.
    assert re.search(r"connecting -> restarting +attempt_failed: no handshake .*"
                     r"no handshake within 1s", text)
    assert re.search(r"restarting -> connecting +gateway_back: the gateway at 127\.0\.0\.1:\d+ "
                     r"answers the API handshake again", text)
    # Told when it arrives, timed like the transitions: after the move to restarting,
    # before the gateway is back.
    assert re.search(r"-> restarting .*\n *\d+\.\d{3}s  IBC command server received: RESTART\n"
                     r" *\d+\.\d{3}s +restarting -> connecting", text), text
    assert text.count("-> restarting") == 1
    # The order act: Uncertain after the drop, then filled at the gateway, sent once.
    assert re.search(r"order \d+ \(demo-1\): Uncertain \(last status PendingSubmit", text)
    assert re.search(r"order \d+ \(demo-1\): resolved after the reconnect: Filled "
                     r"\(found by orderId, 1 fill\(s\)\)", text)
    assert re.search(r"the gateway received order \d+ 1 time\(s\)", text)


def test_diagram_check_passes_on_committed_diagrams() -> None:
    """`ibkr-connection diagram --check` exits 0 when diagrams/ matches the code."""
    root = Path(__file__).resolve().parent.parent
    assert cli.main(["diagram", "--check", "--out", str(root / "diagrams")]) == 0


def test_replay_reports_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A journal whose recorded state was edited makes replay exit 1 naming the input."""
    journal = tmp_path / "j.jsonl"
    journal.write_text(
        '{"type": "header", "port": 4002, "client_ids": [7], "seed": 0, "backoff": '
        '{"initial_delay": 0.05, "factor": 2.0, "max_delay": 0.25, "costly_delay": 1.0, '
        '"max_costly_delay": 10.0, "jitter": 0.1, "max_attempts": null}, '
        '"restore_timeout": 120.0, "maintenance_restore_timeout": 900.0, '
        '"same_client_id_retries": 1}\n'
        '{"type": "input", "at": 0.0, "input": "connect", "state": "connecting"}\n'
        '{"type": "input", "at": 0.1, "input": "attempt_succeeded", "state": "connected"}\n'
        '{"type": "input", "at": 0.2, "input": "connectivity_lost", "code": 1100, '
        '"state": "connected"}\n'
    )
    assert cli.main(["replay", str(journal)]) == 1
    assert "input 2: connectivity_lost" in capsys.readouterr().out


def test_replay_of_unreadable_file(tmp_path: Path) -> None:
    """A file that is not a journal gives exit status 2, not a traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "input"}\n')
    assert cli.main(["replay", str(bad)]) == 2


async def _get(port: int, path: str) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return head.splitlines()[0], body


async def _written(lines: list[str], pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """Wait until ``pattern`` was written to ``lines``; the timeout is a hang guard only."""

    async def found() -> re.Match[str]:
        while (match := re.search(pattern, "".join(lines))) is None:
            await asyncio.sleep(0.01)
        return match

    try:
        return await asyncio.wait_for(found(), timeout)
    except TimeoutError:
        raise AssertionError(f"{pattern!r} never written: {lines}") from None


def test_demo_serves_metrics_and_health() -> None:
    """With --metrics-port, the demo serves /metrics and a /healthz that follows the state."""

    async def demo_and_requests() -> None:
        lines: list[str] = []
        demo = asyncio.ensure_future(run_demo(lines.append, metrics_port=0))
        port = int((await _written(lines, r"127\.0\.0\.1:(\d+)/metrics")).group(1))
        await _written(lines, "connecting -> connected")
        status, body = await _get(port, "/healthz")
        assert status.endswith("200 OK") and "connected" in body
        status, body = await _get(port, "/metrics")
        assert status.endswith("200 OK")
        assert 'ibkr_connection_state{state="connected"} 1.0' in body
        assert "ibkr_connection_transitions_total" in body
        await _written(lines, "connected -> degraded")
        status, _ = await _get(port, "/healthz")
        assert status.endswith("503 Service Unavailable")
        assert await demo == 0

    run_on_virtual_time(demo_and_requests())


async def test_watch_live_view_and_endpoints() -> None:
    """watch prints transitions and serves /metrics and /healthz until told to stop."""
    from ib_insync import IB

    from ibkr_connection import ConnectionConfig
    from ibkr_connection.demo import run_watch
    from ibkr_connection.simulator import FakeGateway

    async with FakeGateway() as gw:
        lines: list[str] = []
        stop = asyncio.Event()
        watch = asyncio.ensure_future(run_watch(
            lines.append, ConnectionConfig(port=gw.port, client_id=5), metrics_port=0,
            degraded_ok=True, stop=stop, ib=IB()))
        port = int((await _written(lines, r"127\.0\.0\.1:(\d+)/metrics")).group(1))
        await _written(lines, "connecting -> connected")
        await gw.farm_broken("usfarm")
        await _written(lines, "connected -> degraded")
        status, body = await _get(port, "/healthz")
        assert status.endswith("200 OK") and "degraded" in body  # degraded_ok
        status, body = await _get(port, "/metrics")
        assert 'ibkr_connection_state{state="degraded"} 1.0' in body
        stop.set()
        assert await watch == 0
        assert "connected -> degraded" in "".join(lines)
        assert "time in each state" in "".join(lines)


# -- the command line as an operator runs it: a real process, real sockets -------------------

#: Runs the CLI in a child process; the first argument says whether to hide prometheus_client
#: (an import of a module set to None in sys.modules fails, as if it were not installed).
_CHILD = """
import sys
if sys.argv[1] == "hide":
    sys.modules["prometheus_client"] = None
from ibkr_connection.cli import main
sys.exit(main(sys.argv[2:]))
"""


#: The child's environment: stdout a pipe, block-buffered, as under a process supervisor.
_CHILD_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


def _cli(*args: str, hide_prometheus: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``ibkr-connection ARGS`` in a child process and wait for it to exit."""
    return subprocess.run(
        [sys.executable, "-c", _CHILD, "hide" if hide_prometheus else "show", *args],
        capture_output=True, text=True, timeout=120, check=False, env=_CHILD_ENV,
    )


@pytest.mark.parametrize("command", ["watch", "demo"])
def test_metrics_port_taken_is_one_line_and_status_2(command: str, taken_port: int) -> None:
    """A taken --metrics-port gives one line naming the port and the reason, and exit 2."""
    done = _cli(command, "--port", str(taken_port), "--metrics-port", str(taken_port)
                ) if command == "watch" else _cli(command, "--metrics-port", str(taken_port))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"ibkr-connection {command}: cannot serve /metrics and /healthz on "
        f"127.0.0.1:{taken_port}: Address already in use"]


@pytest.mark.parametrize("command", ["watch", "demo"])
def test_metrics_port_without_the_extra_says_how_to_install_it(command: str) -> None:
    """Without prometheus_client, --metrics-port gives one line on how to install it, exit 2."""
    done = _cli(command, "--metrics-port", "0", hide_prometheus=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"ibkr-connection {command}: --metrics-port needs prometheus_client")
    assert "pip install 'ibkr-connection[metrics]'" in lines[0]
    assert "uv sync --extra metrics" in lines[0]


def test_metrics_host_is_the_address_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """--metrics-host reaches the bind: an address not on this machine is refused by name."""
    # In-process: the refusal's exit path is the one the taken port's process test runs.
    status = cli.main(["watch", "--metrics-host", "203.0.113.1", "--metrics-port", "0"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.splitlines() == [
        "ibkr-connection watch: cannot serve /metrics and /healthz on 203.0.113.1:0: "
        "Cannot assign requested address"]


_TRANSITION_LINE = re.compile(r"^ *\d+\.\d{3}s +[a-z]+ -> [a-z]+ +[a-z_]+.*: .+$")


async def test_watch_quiet_prints_transition_lines_only_and_logs_nothing() -> None:
    """watch -q over a farm outage and two connects: transition lines only, as they happen."""
    from ibkr_connection.simulator import FakeGateway

    async with FakeGateway(accounts=["DU1234567"]) as gw:

        async def outage_and_two_connects(stdout: asyncio.StreamReader, lines: list[str]
                                          ) -> None:
            await read_until(stdout, lines, r"connecting -> connected")
            await gw.farm_broken("usfarm")
            await read_until(stdout, lines, r"connected -> degraded")
            await gw.farm_ok("usfarm")
            await read_until(stdout, lines, r"degraded -> connected")
            await gw.drop_clients()  # the second connect
            await read_until(stdout, lines, r"connecting -> connected", count=2)

        out, err, status = await watch_child(gw.port, outage_and_two_connects, "-q",
                                              "--metrics-port", "0")
    assert status == 0
    # stderr: the farm's warning alone (-q keeps warnings and errors), nothing per connect;
    # stdout: no endpoint notice, no summary.
    assert len(err) == 1 and re.search(r" WARNING .*IB 2103 ", err[0]), err
    assert [line for line in out if not _TRANSITION_LINE.match(line.rstrip("\n"))] == []
    assert sum("connecting -> connected" in line for line in out) == 2
    assert out[-2:] == [line for line in out if "-> disconnected" in line or "-> stopped" in line]


async def test_watch_quiet_against_a_closed_port_logs_nothing() -> None:
    """watch -q against a closed port: a line per transition on stdout, none on stderr."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connects are refused

    async def refusals(stdout: asyncio.StreamReader, lines: list[str]) -> None:
        await read_until(stdout, lines, r"connecting -> backoff +attempt_failed", count=5)

    out, err, status = await watch_child(port, refusals, "-q")
    assert status == 0
    assert err == []
    assert [line for line in out if not _TRANSITION_LINE.match(line.rstrip("\n"))] == []
    assert sum("connection refused" in line for line in out) >= 5
