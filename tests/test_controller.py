"""IBCController and CommandController against the simulator's IBC command server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable

import pytest
from ib_insync import IB

from ibkr_connection.controller import CommandController, Controller, IBCController
from ibkr_connection.errors import ConfigError, ControllerError
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.ibc import IbcCommandServer

from conftest import wait_until


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    """A running simulator."""
    async with FakeGateway() as gateway:
        yield gateway


@pytest.fixture
async def ibc(gw: FakeGateway) -> AsyncIterator[IbcCommandServer]:
    """IBC's command server in front of ``gw``, with a short restart."""
    async with IbcCommandServer(gw, restart_outage=0.2) as server:
        yield server


async def _heard(codes: list[int], code: int) -> None:
    """Wait until the client heard ``code``; a hang guard raises after 30 s."""
    await asyncio.wait_for(_poll(lambda: code in codes), 30)


async def _poll(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


async def _raw(port: int, data: bytes) -> list[str]:
    """Send raw bytes to a command server and return the lines it answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    lines = (await asyncio.wait_for(reader.read(), 5)).decode().splitlines()
    writer.close()
    return lines


async def test_restart_drops_clients_and_comes_back_healthy(
    gw: FakeGateway, ibc: IbcCommandServer
) -> None:
    """RESTART answers OK, drops the wedged client, and the gateway serves again, unstalled."""
    ib = IB()
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=5)
    gw.stall()
    controller = IBCController(port=ibc.port)
    assert await controller.restart() == "RESTART in progress"
    await asyncio.sleep(0)
    await wait_until(lambda: not ibc.restarting, what="the restart is over")
    assert not ib.isConnected()
    assert ibc.restarts == 1 and not gw.stalled
    await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=5)
    assert ib.isConnected()
    ib.disconnect()


async def test_second_restart_while_one_runs_is_refused(ibc: IbcCommandServer) -> None:
    """A RESTART while one runs raises ControllerError with IBC's own text."""
    controller = IBCController(port=ibc.port)
    await controller.restart()
    with pytest.raises(ControllerError, match="ERROR RESTART already in progress"):
        await controller.restart()
    assert ibc.commands == ["RESTART", "RESTART"]


async def test_reconnect_data_sends_farm_ok(gw: FakeGateway, ibc: IbcCommandServer) -> None:
    """RECONNECTDATA marks the broken farm OK and the client hears 2104."""
    ib = IB()
    codes: list[int] = []
    ib.errorEvent += lambda req_id, code, *rest: codes.append(code)
    await ib.connectAsync("127.0.0.1", gw.port, clientId=2, timeout=5)
    await gw.farm_broken("usfarm")
    await _heard(codes, 2103)
    codes.clear()
    assert await IBCController(port=ibc.port).reconnect_data() == ""
    await _heard(codes, 2104)
    assert gw.farms["usfarm"]
    assert await IBCController(port=ibc.port).reconnect_account() == ""
    await _heard(codes, 1102)
    ib.disconnect()


async def test_protocol_lines_as_ibc_writes_them(ibc: IbcCommandServer) -> None:
    """Blank lines are skipped, unknown commands are invalid, EXIT says goodbye and closes."""
    lines = await _raw(ibc.port, b"\nHELLO\nreconnectdata\nEXIT\nSTOP\n")
    assert lines == ["ERROR Command invalid", "OK ", "OK Goodbye"]
    assert ibc.commands == ["HELLO", "RECONNECTDATA", "EXIT"]


async def test_unreachable_port_names_host_and_port(gw: FakeGateway) -> None:
    """Nothing listening: ControllerError names host and port."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ControllerError, match=rf"127\.0\.0\.1:{port} is unreachable"):
        await IBCController(port=port, timeout=2).restart()


async def test_silent_ibc_times_out(gw: FakeGateway) -> None:
    """An IBC that never answers raises ControllerError after the time-out."""
    async with IbcCommandServer(gw, silent=True) as silent:
        with pytest.raises(ControllerError, match="did not answer RESTART"):
            await IBCController(port=silent.port, timeout=0.2).restart()


async def test_garbage_answer_is_an_error() -> None:
    """A peer that answers neither OK nor ERROR, then closes, raises ControllerError."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ControllerError, match="without an answer to RESTART"):
            await IBCController(port=port, timeout=2).restart()
    finally:
        server.close()
        await server.wait_closed()


async def test_info_lines_and_prompt_are_read_past() -> None:
    """INFO lines (SuppressInfoMessages=no) and a prompt before the answer are skipped."""

    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO IBC Command Server\nibc> ")
        await reader.readline()
        writer.write(b"INFO Restarting TWS\nOK RESTART in progress\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(chatty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await IBCController(port=port).restart() == "RESTART in progress"
    finally:
        server.close()
        await server.wait_closed()


async def test_command_controller_runs_and_reports_failure() -> None:
    """CommandController: exit 0 is success; a non-zero exit raises with status and stderr."""
    ok = CommandController([sys.executable, "-c", "print('restarted')"])
    assert await ok.restart() == "restarted"
    failing = CommandController(
        [sys.executable, "-c", "import sys; sys.stderr.write('no such container'); sys.exit(3)"])
    with pytest.raises(ControllerError, match="status 3: no such container"):
        await failing.restart()
    with pytest.raises(ControllerError, match="no command given for reconnect_data"):
        await ok.reconnect_data()
    missing = CommandController(["/nonexistent/ibkr-restart"])
    with pytest.raises(ControllerError, match="cannot run"):
        await missing.restart()


def test_controllers_satisfy_the_protocol_and_validate() -> None:
    """Both controllers are Controllers; bad settings raise ConfigError."""
    assert isinstance(IBCController(), Controller)
    assert isinstance(CommandController(["true"]), Controller)
    with pytest.raises(ConfigError):
        IBCController(port=0)
    with pytest.raises(ConfigError):
        CommandController([])


def test_config_from_env_builds_the_ibc_controller() -> None:
    """IBKR_IBC_HOST / IBKR_IBC_PORT build an IBCController; without a port there is none."""
    from ibkr_connection import ConnectionConfig

    config = ConnectionConfig.from_env({"IBKR_IBC_HOST": "10.0.0.5", "IBKR_IBC_PORT": "7462"})
    controller = config.controller()
    assert isinstance(controller, IBCController)
    assert (controller.host, controller.port) == ("10.0.0.5", 7462)
    assert ConnectionConfig.from_env({}).controller() is None
    with pytest.raises(ConfigError, match="IBKR_IBC_PORT"):
        ConnectionConfig.from_env({"IBKR_IBC_PORT": "seventy"})
    with pytest.raises(ConfigError, match="IBKR_IBC_PORT"):
        ConnectionConfig.from_env({"IBKR_IBC_PORT": "0"})
    with pytest.raises(ConfigError, match="IBKR_IBC_HOST"):
        ConnectionConfig.from_env({"IBKR_IBC_HOST": " ", "IBKR_IBC_PORT": "7462"})


def test_ibc_host_alone_means_ibc_at_its_conventional_port() -> None:
    """IBKR_IBC_HOST without IBKR_IBC_PORT: IBC at 7462 (IBC's config.ini suggests it), not none."""
    from unittest.mock import MagicMock

    from ibkr_connection import Config, ConnectionConfig, IBKRIBInsyncApi

    controller = ConnectionConfig.from_env({"IBKR_IBC_HOST": "10.0.0.5"}).controller()
    assert repr(controller) == "IBCController(host='10.0.0.5', port=7462)"
    api = IBKRIBInsyncApi(Config.from_env({"IBKR_IBC_HOST": "10.0.0.5"}), ib=MagicMock())
    assert repr(api.manager.controller) == "IBCController(host='10.0.0.5', port=7462)"
    explicit = ConnectionConfig.from_env({"IBKR_IBC_HOST": "10.0.0.5", "IBKR_IBC_PORT": "7470"})
    assert repr(explicit.controller()) == "IBCController(host='10.0.0.5', port=7470)"
