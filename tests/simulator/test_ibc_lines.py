"""IBC's command server on the simulator: what it says, and when (real sockets)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time

import pytest
from ib_insync import IB

from ibkr_connection.simulator import FakeGateway

from conftest import run_on_virtual_time

SIM = "ibkr_connection.simulator"


async def _command(port: int, command: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{command}\n".encode())
    answer = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return answer.decode().rstrip("\n")


async def _until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith(SIM) and r.levelno >= logging.INFO]


async def test_restart_of_a_healthy_gateway_says_only_what_happened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RESTART of a healthy simulator: received, down, back; nothing about faults it had not."""
    caplog.set_level(logging.INFO, logger=SIM)
    async with FakeGateway(ibc_port=0, ibc_restart_outage=0.1) as gw:
        assert gw.ibc is not None
        assert await _command(gw.ibc.port, "RESTART") == "OK RESTART in progress"
        await _until(lambda: gw.ibc is not None and gw.ibc.restarts == 1, "restarted")
        assert _said(caplog) == [
            "IBC command server received: RESTART",
            "IBC: restarting the gateway: 0 connection(s) dropped, refusing connections for "
            "0.10s",
            f"IBC: gateway restarted (1 so far), listening on 127.0.0.1:{gw.port}",
        ]


async def test_restart_of_a_wedged_gateway_says_what_it_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RESTART of a wedged simulator with a held sync and a broken farm names each one cleared."""
    async with FakeGateway(ibc_port=0, ibc_restart_outage=0.1) as gw:
        assert gw.ibc is not None
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=3, timeout=10)
        await gw.farm_broken("usfarm")
        gw.hold_sync("reqExecutions")
        gw.wedge()
        caplog.set_level(logging.INFO, logger=SIM)
        assert await _command(gw.ibc.port, "RESTART") == "OK RESTART in progress"
        await _until(lambda: gw.ibc is not None and gw.ibc.restarts == 1, "restarted")
        ib.disconnect()
        said = [line for line in _said(caplog) if "disconnected" not in line]  # the client's own
        assert said[0] == "IBC command server received: RESTART"
        assert said[1] == (
            "IBC: restarting the gateway: 1 connection(s) dropped, refusing connections for "
            "0.10s, cleared the stall; held ends of reqExecutions; broken farms usfarm")
        assert said[-1] == f"IBC: gateway restarted (1 so far), listening on 127.0.0.1:{gw.port}"
        assert not any("unstalled" in line or "released" in line for line in said), said


async def test_stop_says_restart_brings_it_back(caplog: pytest.LogCaptureFixture) -> None:
    """STOP leaves the simulator deaf and says so; a RESTART then brings it back."""
    caplog.set_level(logging.INFO, logger=SIM)
    async with FakeGateway(ibc_port=0, ibc_restart_outage=0.1) as gw:
        assert gw.ibc is not None
        assert await _command(gw.ibc.port, "STOP") == "OK Shutting down"
        assert _said(caplog)[-1] == (
            "IBC: STOP: the gateway stopped listening (0 connection(s) dropped); RESTART "
            "through this command server brings it back")
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", gw.port)
        assert await _command(gw.ibc.port, "RESTART") == "OK RESTART in progress"
        await _until(lambda: gw.ibc is not None and gw.ibc.restarts == 1, "restarted")
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=3, timeout=10)
        assert ib.isConnected()
        ib.disconnect()


async def test_on_command_is_called_as_each_command_arrives() -> None:
    """on_command hears each command before its answer is written, in order."""
    heard: list[tuple[str, int]] = []
    async with FakeGateway(ibc_port=0, ibc_restart_outage=0.1) as gw:
        ibc = gw.ibc
        assert ibc is not None
        ibc.on_command = lambda command: heard.append((command, ibc.restarts))
        assert await _command(ibc.port, "reconnectdata") == "OK "
        assert await _command(ibc.port, "RESTART") == "OK RESTART in progress"
        await _until(lambda: ibc.restarts == 1, "restarted")
    assert heard == [("RECONNECTDATA", 0), ("RESTART", 0)]


def test_the_demo_says_the_ibc_restart_when_it_arrives() -> None:
    """The demo's IBC line is timed like the transitions, between restarting and gateway_back."""
    from ibkr_connection.demo import run_demo

    out = io.StringIO()
    assert run_on_virtual_time(run_demo(out.write)) == 0
    lines = out.getvalue().splitlines()
    [at] = [i for i, line in enumerate(lines) if "IBC command server received" in line]
    assert re.fullmatch(r" +\d+\.\d{3}s  IBC command server received: RESTART", lines[at])
    assert "connecting -> restarting" in lines[at - 1], lines[at - 1: at + 2]
    assert "restarting -> connecting" in lines[at + 1], lines[at - 1: at + 2]
