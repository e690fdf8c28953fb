"""The command line: demo, diagram check, replay."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from ibkr_connection import cli
from ibkr_connection.demo import run_demo


async def test_demo_tells_the_whole_story() -> None:
    """The demo walks every chapter and ends disconnected, with three recoveries."""
    out = io.StringIO()
    status = await run_demo(out.write, pause=0.2)
    text = out.getvalue()
    assert status == 0
    for expected in ("connected -> degraded", "connected -> lost", "lost -> connected",
                     "socket_closed", "heartbeat_missed", "connected -> disconnected",
                     "recoveries: 3"):
        assert expected in text, expected


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


async def test_demo_serves_metrics_and_health() -> None:
    """With --metrics-port, the demo serves /metrics and a /healthz that follows the state."""
    lines: list[str] = []
    demo = asyncio.ensure_future(run_demo(lines.append, metrics_port=0, pause=0.5))
    port = 0
    for _ in range(200):
        found = [re.search(r"127\.0\.0\.1:(\d+)/metrics", line) for line in lines]
        if any(found):
            port = int(next(m for m in found if m).group(1))
            break
        await asyncio.sleep(0.01)
    assert port, "the demo did not announce its metrics port"
    for _ in range(200):
        if any("connecting -> connected" in line for line in lines):
            break
        await asyncio.sleep(0.01)
    status, body = await _get(port, "/healthz")
    assert status.endswith("200 OK") and "connected" in body
    status, body = await _get(port, "/metrics")
    assert status.endswith("200 OK")
    assert 'ibkr_connection_state{state="connected"} 1.0' in body
    assert "ibkr_connection_transitions_total" in body
    for _ in range(300):
        if any("connected -> degraded" in line for line in lines):
            break
        await asyncio.sleep(0.01)
    status, _ = await _get(port, "/healthz")
    assert status.endswith("503 Service Unavailable")
    assert await demo == 0


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
        port = 0
        for _ in range(300):
            text = "".join(lines)
            match = re.search(r"127\.0\.0\.1:(\d+)/metrics", text)
            if match and "connecting -> connected" in text:
                port = int(match.group(1))
                break
            await asyncio.sleep(0.01)
        assert port, lines
        await gw.farm_broken("usfarm")
        await asyncio.sleep(0.05)
        status, body = await _get(port, "/healthz")
        assert status.endswith("200 OK") and "degraded" in body  # degraded_ok
        status, body = await _get(port, "/metrics")
        assert 'ibkr_connection_state{state="degraded"} 1.0' in body
        stop.set()
        assert await watch == 0
        assert "connected -> degraded" in "".join(lines)
        assert "time in each state" in "".join(lines)
