"""Restarting a wedged gateway through its controller, over real sockets.

A simulator with IBC's command server (``FakeGateway(ibc_port=0)``), a real
ib_insync ``IB`` and an :class:`IBCController` at that port; the controllers
that misbehave are small TCP servers here that answer as IBC never should.
The long defaults (3 min restart wait, 10 min cooldown) are exercised on the
pure machine with a ManualClock in ``tests/test_restart_machine.py``.

The module runs on virtual time (``VIRTUAL_TIME``, see the suite's conftest.py):
the loop's clock jumps to the next timer whenever no socket is ready, so the
restart waits, cooldowns, IBC timeouts and handshake deadlines below cost no
wall clock; the managers read the loop's clock (``LoopClock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from ib_insync import IB

from ibkr_connection import ConnectionManager, ConnectionState, IBCController
from ibkr_connection.clock import LoopClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.journal import replay
from ibkr_connection.simulator import FakeGateway

from .conftest import ACCOUNT, FAST_POLICY, fast_config, on_live_session, wait_until

S = ConnectionState

#: Every test here runs on a VirtualTimeLoop (tests/reliability/conftest.py).
VIRTUAL_TIME = True

#: The suite's tight policy; the restart gets 2 s to come back, then a cooldown
#: long enough that a second restart would show within a test.
POLICY = replace(FAST_POLICY, restart_wait=2.0, restart_cooldown=30.0)


@pytest.fixture
async def ibc_gw() -> AsyncIterator[FakeGateway]:
    """A simulator with IBC's command server on a free port; a RESTART costs 0.3 s."""
    gateway = FakeGateway(accounts=[ACCOUNT], ibc_port=0, ibc_restart_outage=0.3)
    await gateway.start()
    try:
        yield gateway
    finally:
        gateway.unstall()
        await gateway.stop()


@pytest.fixture
async def managers() -> AsyncIterator[list[ConnectionManager]]:
    """Managers to stop after the test."""
    made: list[ConnectionManager] = []
    yield made
    for manager in made:
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(manager.stop(), 2.0)


class LineServer:
    """A TCP server that answers every line with ``answer`` (None: never answers).

    Attributes:
        commands: the lines received.
    """

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.commands: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while line := await reader.readline():
                self.commands.append(line.decode().strip())
                if self.answer is not None:
                    writer.write((self.answer + "\n").encode())
                    await writer.drain()
                    if not self.answer.startswith("OK"):
                        break
        writer.close()


def _manager(ib: IB, config: Any, **kwargs: Any) -> ConnectionManager:
    """A manager on the loop's (virtual) clock."""
    return ConnectionManager(ib, config, clock=LoopClock(), **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _moves(manager: ConnectionManager) -> list[tuple[str, str, str]]:
    return [(t.source.value, t.dest.value, t.trigger.value) for t in manager.transcript]


async def test_a_wedged_gateway_is_restarted_once_then_connected(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """Heartbeat miss, two unanswered handshakes: one RESTART through IBC, then connected."""
    assert ibc_gw.ibc is not None
    controller = IBCController("127.0.0.1", ibc_gw.ibc.port, timeout=1.0)
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=POLICY),
                                controller=controller)
    managers.append(manager)
    await manager.start(timeout=5)
    ibc_gw.wedge()
    await wait_until(lambda: manager.machine.restarts == 1, 10.0, "a restart")
    await on_live_session(manager, S.CONNECTED, 10.0)
    assert ibc_gw.ibc.commands == ["RESTART"]
    assert ibc_gw.ibc.restarts == 1
    moves = _moves(manager)
    into = [m for m in moves if m[1] == "restarting"]
    assert len(into) == 1 and into[0][2] == "attempt_failed"
    assert ("restarting", "connecting", "gateway_back") in moves
    assert moves[-1] == ("connecting", "connected", "attempt_succeeded")
    assert manager.machine.wedge_signs == 0


async def test_the_config_builds_the_controller(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """With ibc_port in the config and no controller argument, the manager builds an IBC one."""
    assert ibc_gw.ibc is not None
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=POLICY,
                                                  ibc_port=ibc_gw.ibc.port))
    managers.append(manager)
    assert isinstance(manager.controller, IBCController)
    await manager.start(timeout=5)
    ibc_gw.wedge()
    await wait_until(lambda: ibc_gw.ibc is not None and ibc_gw.ibc.restarts == 1, 10.0)
    await on_live_session(manager, S.CONNECTED, 10.0)
    assert ibc_gw.ibc.commands == ["RESTART"]


#: Controllers that do not restart, each as (its answer, the IBCController's
#: timeout, what the restart_failed cause names).
BAD_CONTROLLERS: dict[str, tuple[str | None, str]] = {
    "refuses": ("ERROR RESTART not allowed", "refused RESTART: ERROR RESTART not allowed"),
    "garbage": ("HELLO THERE", "closed the channel without an answer"),
    "silent": (None, "did not answer RESTART within 0.3s"),
}


@pytest.mark.parametrize("kind", [*BAD_CONTROLLERS, "unreachable"])
async def test_a_controller_that_does_not_restart_is_a_declared_transition(
    kind: str, ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """Refused, garbage, silent, unreachable: restarting -> backoff with the cause; reconnects
    go on; no second command within the cooldown; the gateway heals: connected."""
    server: LineServer | None = None
    if kind == "unreachable":
        port, cause = _free_port(), "is unreachable"
    else:
        answer, cause = BAD_CONTROLLERS[kind]
        server = LineServer(answer)
        await server.start()
        port = server.port
    controller = IBCController("127.0.0.1", port, timeout=0.3)
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=POLICY),
                                controller=controller)
    managers.append(manager)
    try:
        await manager.start(timeout=5)
        ibc_gw.wedge()
        await wait_until(lambda: any(t.trigger is InputKind.RESTART_FAILED
                                     for t in manager.transcript), 10.0, "restart_failed")
        failed = next(t for t in manager.transcript if t.trigger is InputKind.RESTART_FAILED)
        assert (failed.source, failed.dest) == (S.RESTARTING, S.BACKOFF)
        assert cause in failed.cause
        # Ordinary reconnects continue, and keep counting wedge signs, but the
        # cooldown (30 s) holds the next restart back.
        attempts = len([t for t in manager.transcript if t.dest is S.CONNECTING])
        await wait_until(lambda: len([t for t in manager.transcript
                                      if t.dest is S.CONNECTING]) >= attempts + 4, 10.0)
        assert manager.machine.restarts == 1
        assert manager.machine.wedge_signs >= 3
        if server is not None:
            assert server.commands == ["RESTART"]
        ibc_gw.unstall()
        await on_live_session(manager, S.CONNECTED, 10.0)
    finally:
        if server is not None:
            await server.stop()


async def test_a_gateway_not_back_within_restart_wait(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """The controller says OK but the gateway stays wedged: restart_timeout -> backoff."""
    server = LineServer("OK RESTART in progress")
    await server.start()
    policy = replace(POLICY, restart_wait=1.0)
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=policy),
                                controller=IBCController("127.0.0.1", server.port, timeout=1.0))
    managers.append(manager)
    try:
        await manager.start(timeout=5)
        ibc_gw.wedge()
        await wait_until(lambda: any(t.trigger is InputKind.RESTART_TIMEOUT
                                     for t in manager.transcript), 10.0, "restart_timeout")
        moves = _moves(manager)
        assert moves.index(("restarting", "backoff", "restart_timeout")) == \
            moves.index(next(m for m in moves if m[1] == "restarting")) + 1
        assert server.commands == ["RESTART"]
        assert manager.machine.restarts == 1
        ibc_gw.unstall()
        await on_live_session(manager, S.CONNECTED, 10.0)
    finally:
        await server.stop()


async def test_no_controller_nothing_escalates(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """Without a controller a wedged gateway is only reconnected to, for ever."""
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=POLICY))
    managers.append(manager)
    assert manager.controller is None
    await manager.start(timeout=5)
    ibc_gw.wedge()
    await wait_until(lambda: manager.machine.wedge_signs >= 4, 10.0, "four wedge signs")
    assert all(t.dest is not S.RESTARTING for t in manager.transcript)
    assert ibc_gw.ibc is not None and ibc_gw.ibc.commands == []


async def test_refused_connects_never_escalate(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """A gateway that is down refuses connections: it is restarting already, not wedged."""
    assert ibc_gw.ibc is not None
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=POLICY),
                                controller=IBCController("127.0.0.1", ibc_gw.ibc.port))
    managers.append(manager)
    await manager.start(timeout=5)
    await ibc_gw.stop_listening()
    await ibc_gw.drop_clients()
    await wait_until(lambda: len([t for t in manager.transcript
                                  if t.trigger is InputKind.ATTEMPT_FAILED]) >= 8, 10.0)
    assert manager.machine.wedge_signs == 0
    assert all(t.dest is not S.RESTARTING for t in manager.transcript)
    assert ibc_gw.ibc.commands == []
    await ibc_gw.start_listening()
    await on_live_session(manager, S.CONNECTED, 5.0)


async def test_a_broken_farm_gets_one_reconnect_data(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """A farm broken longer than farm_reconnect_after: one RECONNECTDATA, logged; the
    state stays degraded until the farm reports OK."""
    assert ibc_gw.ibc is not None
    policy = replace(POLICY, farm_reconnect_after=0.4)
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=policy),
                                controller=IBCController("127.0.0.1", ibc_gw.ibc.port))
    managers.append(manager)
    await manager.start(timeout=5)
    ibc_gw.ibc.commands.clear()
    # The IBC server's RECONNECTDATA would heal the farm at once; hold it back
    # to see the state stay degraded after the command.
    real_farm_ok: Callable[..., Any] = ibc_gw.farm_ok
    healed = asyncio.Event()

    async def held_farm_ok(*args: Any, **kwargs: Any) -> None:
        await healed.wait()
        await real_farm_ok(*args, **kwargs)

    ibc_gw.farm_ok = held_farm_ok  # type: ignore[method-assign]
    await ibc_gw.farm_broken("usfarm")
    await wait_until(lambda: manager.state is S.DEGRADED, 2.0)
    await wait_until(lambda: ibc_gw.ibc is not None and ibc_gw.ibc.commands != [], 3.0)
    # One, not one per farm_reconnect_after: the farm timer starts once per outage
    # (tests/test_restart_machine.py::test_a_broken_farm_gets_one_reconnect_data).
    assert ibc_gw.ibc.commands == ["RECONNECTDATA"]
    assert manager.state is S.DEGRADED
    healed.set()
    await wait_until(lambda: manager.state is S.CONNECTED, 3.0)
    assert manager.transcript[-1].trigger is InputKind.FARM_OK
    assert ibc_gw.ibc.commands == ["RECONNECTDATA"]


async def test_a_journal_of_a_restart_replays_with_every_transition_matching(
    ibc_gw: FakeGateway, managers: list[ConnectionManager]
) -> None:
    """Wedged, restarted through IBC, connected: the journal replays move for move."""
    assert ibc_gw.ibc is not None
    out = io.StringIO()
    controller = IBCController("127.0.0.1", ibc_gw.ibc.port, timeout=1.0)
    manager = _manager(IB(), fast_config(ibc_gw.port, policy=POLICY),
                                controller=controller, journal=out)
    managers.append(manager)
    await manager.start(timeout=5)
    ibc_gw.wedge()
    await wait_until(lambda: manager.machine.restarts == 1, 10.0, "a restart")
    await on_live_session(manager, S.CONNECTED, 10.0)
    await manager.stop()
    lines = out.getvalue().splitlines()
    header = json.loads(lines[0])
    assert header["controller_configured"] is True
    assert (header["restart_after"], header["restart_wait"], header["restart_cooldown"],
            header["farm_reconnect_after"]) == (3, 2.0, 30.0, 300.0)
    result = replay(lines)
    assert result.mismatches == []
    replayed = [(step.input, step.replayed) for step in result.inputs]
    assert ("attempt_failed", "restarting") in replayed
    assert ("gateway_back", "connecting") in replayed
    assert ("disconnect", "disconnected") in replayed
    # The same journal read as an older one (no controller in its header) would
    # never have restarted: the header field is what makes the replay agree.
    older = [json.dumps({k: v for k, v in header.items() if k != "controller_configured"}),
             *lines[1:]]
    assert replay(older).mismatches != []


class NotAnApiPort:
    """A loopback TCP server on a free port that is not a TWS API port.

    ``silent`` accepts and never says a word; ``http`` answers as a web server
    (``python -m http.server``) answers bytes it cannot parse, then closes.

    Attributes:
        accepted: how many sockets it accepted.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        with contextlib.suppress(ConnectionError, OSError):
            if self.kind == "http":
                await reader.read(1024)
                writer.write(b"HTTP/1.0 400 Bad request version\r\n"
                             b"Content-Type: text/html\r\n\r\n<html>Bad request</html>\n")
                await writer.drain()
            else:
                await reader.read()
        writer.close()


@pytest.mark.parametrize("kind", ["silent", "http"])
async def test_a_wrong_port_never_restarts_a_healthy_gateway(
    kind: str, ibc_gw: FakeGateway, managers: list[ConnectionManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 18.1: a port that accepts and never speaks the API, IBC in front of a healthy
    gateway: twice restart_after failed attempts, zero RESTARTs, one "not a TWS API port?"."""
    assert ibc_gw.ibc is not None
    server = NotAnApiPort(kind)
    await server.start()
    controller = IBCController("127.0.0.1", ibc_gw.ibc.port, timeout=1.0)
    manager = _manager(
        IB(), fast_config(server.port, policy=POLICY, handshake_timeout=0.2),
        controller=controller)
    managers.append(manager)
    try:
        with caplog.at_level(logging.WARNING, logger="ibkr_connection"):
            manager.feed(Input(InputKind.CONNECT, message="wrong port"))
            # restart_after is 3: six failed attempts in a row would have
            # escalated twice over on a proven endpoint.
            await wait_until(lambda: len([t for t in manager.transcript
                                          if t.trigger is InputKind.ATTEMPT_FAILED]) >= 6,
                             15.0, "six failed attempts")
            # A barrier: a command of ours reaches IBC's server after every
            # RESTART the manager might have sent along the failures above.
            assert await controller.reconnect_account() == ""
        assert ibc_gw.ibc.commands == ["RECONNECTACCOUNT"]
        assert ibc_gw.ibc.restarts == 0
        assert all(t.dest is not S.RESTARTING for t in manager.transcript)
        assert manager.machine.restarts == 0
        assert server.accepted >= 6
        warnings = [r.getMessage() for r in caplog.records
                    if "not a TWS API port?" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert f"127.0.0.1:{server.port}" in warnings[0]
        assert "never had a session" in warnings[0]
    finally:
        await server.stop()
