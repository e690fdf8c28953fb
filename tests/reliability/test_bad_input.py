"""Bad input: malformed settings, garbage from the gateway, unknown codes, a sync cut short."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from ib_insync import IB

from ibkr_connection import (
    BackoffPolicy,
    Config,
    ConfigError,
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    IBKRIBInsyncApi,
    RecoveryPolicy,
    adapter,
)
from ibkr_connection.clock import LoopClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.wire import protocol as wire

from .conftest import TracebackCatcher, fast_config, wait_until
from conftest import round_trip

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock: the
#: handshake deadlines and backoffs against the garbage gateways cost no wall clock.
VIRTUAL_TIME = True
Make = Callable[..., ConnectionManager]

# -- malformed settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": -1}, "port"),
        ({"port": "4002"}, "port"),
        ({"port": True}, "port"),
        ({"client_id": -1}, "client_id"),
        ({"client_id": 1.5}, "client_id"),
        ({"fallback_client_ids": (8, -2)}, "fallback_client_ids"),
        ({"host": ""}, "host"),
        ({"host": "   "}, "host"),
        ({"account_fallback": "last"}, "account_fallback"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"handshake_timeout": 0}, "handshake_timeout"),
        ({"handshake_timeout": "2"}, "handshake_timeout"),
        ({"heartbeat_idle": -1.0}, "heartbeat_idle"),
        ({"heartbeat_timeout": "2"}, "heartbeat_timeout"),
    ],
)
def test_bad_connection_config_names_the_field(fields: dict[str, Any], field: str) -> None:
    """An invalid ConnectionConfig value raises ConfigError naming the field."""
    with pytest.raises(ConfigError) as raised:
        ConnectionConfig(**fields)
    assert raised.value.field == field
    assert field in str(raised.value)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"IBKR_PORT": "abc"}, "IBKR_PORT"),
        ({"IBKR_PORT": "0"}, "IBKR_PORT"),
        ({"IBKR_PORT": "99999"}, "IBKR_PORT"),
        ({"IBKR_PORT": "40 02"}, "IBKR_PORT"),
        ({"IBKR_CLIENT_ID": "-3"}, "IBKR_CLIENT_ID"),
        ({"IBKR_CLIENT_ID": "seven"}, "IBKR_CLIENT_ID"),
        ({"IBKR_FALLBACK_CLIENT_IDS": "8,x"}, "IBKR_FALLBACK_CLIENT_IDS"),
        ({"IBKR_FALLBACK_CLIENT_IDS": "8,-9"}, "IBKR_FALLBACK_CLIENT_IDS"),
        ({"IBKR_ACCOUNT_FALLBACK": "last"}, "IBKR_ACCOUNT_FALLBACK"),
        ({"IBKR_READONLY": "maybe"}, "IBKR_READONLY"),
        ({"IBKR_CONNECT_TIMEOUT": "soon"}, "IBKR_CONNECT_TIMEOUT"),
        ({"IBKR_CONNECT_TIMEOUT": "-1"}, "IBKR_CONNECT_TIMEOUT"),
        ({"IBKR_HANDSHAKE_TIMEOUT": "soon"}, "IBKR_HANDSHAKE_TIMEOUT"),
        ({"IBKR_HANDSHAKE_TIMEOUT": "0"}, "IBKR_HANDSHAKE_TIMEOUT"),
        ({"IBKR_MAX_ATTEMPTS": "0"}, "IBKR_MAX_ATTEMPTS"),
        ({"IBKR_MAX_ATTEMPTS": "many"}, "IBKR_MAX_ATTEMPTS"),
        ({"IBKR_HOST": ""}, "IBKR_HOST"),
        ({"IBKR_HOST": "   "}, "IBKR_HOST"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], field: str) -> None:
    """An invalid environment value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError) as raised:
        ConnectionConfig.from_env(env)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"IBKR_PORT": "abc"}, "IBKR_PORT"),
        ({"IBKR_PORT": 0}, "IBKR_PORT"),
        ({"IBKR_CLIENT_ID": -1}, "IBKR_CLIENT_ID"),
        ({"IBKR_CLIENT_ID": "x"}, "IBKR_CLIENT_ID"),
        ({"IBKR_HOST": ""}, "IBKR_HOST"),
        ({"IBKR_READONLY": "perhaps"}, "IBKR_READONLY"),
    ],
)
def test_bad_broker_config_names_the_field(fields: dict[str, Any], field: str) -> None:
    """The sync wrapper's Config rejects bad values with ConfigError naming the attribute."""
    with pytest.raises(ConfigError) as raised:
        Config(**fields)
    assert raised.value.field == field


def test_bad_broker_options_name_the_option() -> None:
    """IBKRIBInsyncApi refuses a nonsensical max_attempts before touching the network."""
    with pytest.raises(ConfigError) as raised:
        IBKRIBInsyncApi(Config(), IB(), max_attempts=0)
    assert raised.value.field == "max_attempts"


# -- garbage from the gateway ------------------------------------------------------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">I", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


async def _greeted(reader: asyncio.StreamReader) -> None:
    """Read the client's ``API\\0`` prefix and its version range."""
    assert await reader.readexactly(4) == wire.API_PREFIX
    await _read_frame(reader)


async def _garbage_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _greeted(reader)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()  # keep the socket open until the client gives up


async def _garbage_fields(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _greeted(reader)
    writer.write(wire.encode_message(["not-a-version", "\xff\xfe garbage"]))
    writer.write(b"\x00\x00\x00\x03\xff\xfe\x00")
    await writer.drain()
    await reader.read()


async def _huge_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _greeted(reader)
    writer.write(struct.pack(">I", 0x7FFF_FFF0) + b"157\x0020260105 17:00:00 UTC\x00")
    await writer.drain()
    await reader.read()


async def _close_mid_sync(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _greeted(reader)
    writer.write(wire.encode_message([wire.SERVER_VERSION, "20260105 17:00:00 UTC"]))
    await _read_frame(reader)  # startApi
    writer.write(wire.encode_message([wire.MANAGED_ACCTS, 1, "DU1234567"]))
    writer.write(wire.encode_message([wire.NEXT_VALID_ID, 1, 100]))
    await writer.drain()
    await _read_frame(reader)  # the first startup sync request
    writer.close()


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


@contextlib.asynccontextmanager
async def _raw_gateway(behaviour: Behaviour) -> AsyncIterator[int]:
    """A tiny raw TCP server on 127.0.0.1, port 0, answering every client with ``behaviour``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await behaviour(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


GARBAGE: dict[str, Behaviour] = {
    "garbage_handshake": _garbage_handshake,
    "garbage_fields": _garbage_fields,
    "huge_length": _huge_length,
    "close_mid_sync": _close_mid_sync,
    "close_at_once": _close_at_once,
}


@pytest.mark.parametrize("behaviour", list(GARBAGE))
async def test_garbage_gateway_fails_attempts_without_crash_or_hang(
    behaviour: str, tracebacks: TracebackCatcher,
) -> None:
    """Each garbage answer is a failed attempt followed by backoff; stop() closes the socket."""
    async with _raw_gateway(GARBAGE[behaviour]) as port:
        manager = ConnectionManager(IB(), fast_config(port), clock=LoopClock())
        manager.feed(Input(InputKind.CONNECT, message="garbage test"))

        def failures() -> list[Any]:
            return [t for t in manager.transcript if t.trigger is InputKind.ATTEMPT_FAILED]

        await wait_until(lambda: len(failures()) >= 2, timeout=6, what="two failed attempts")
        assert all(t.source is S.CONNECTING and t.dest is S.BACKOFF for t in failures())
        assert S.CONNECTED not in [t.dest for t in manager.transcript]
        assert manager.state in (S.BACKOFF, S.CONNECTING)
        await asyncio.wait_for(manager.stop(), 30)  # a hang guard only
        assert manager.state is S.STOPPED
        # stop() gives the socket up to 1 s to close; here it did close.
        assert not adapter.transport_open(manager.ib)
    ours = [r for r in tracebacks.escaped() if r.startswith("ibkr_connection")]
    assert ours == []


# -- odd codes from a real gateway --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (9999, "brand new code"),
        (0, ""),
        (-5, "negative code"),
        (2**31 - 1, "largest code"),
        (10182, "Failed to request live updates (disconnected)."),
        (2107, "HMDS data farm connection is inactive:ushmds"),
        (1102, "\udcff not utf-8 \x01\x02"),
        (200, "No security definition has been found for the request"),
    ],
)
async def test_odd_codes_change_nothing(
    code: int, message: str, make_manager: Make, gw: FakeGateway, tracebacks: TracebackCatcher,
) -> None:
    """Unknown, log-only and odd codes leave a connected manager connected."""
    manager = make_manager()
    await manager.start(timeout=3)
    text = message.encode("utf-8", "replace").decode("utf-8")
    await gw.send_error(code, message=text)
    await gw.send_error(code, message=text, req_id=42)
    await round_trip(manager.ib)  # both codes handled
    assert manager.state is S.CONNECTED
    assert [t.dest for t in manager.transcript] == [S.CONNECTING, S.CONNECTED]
    assert tracebacks.escaped() == []


async def test_farm_and_port_codes_without_payload(
    make_manager: Make, gw: FakeGateway, tracebacks: TracebackCatcher,
) -> None:
    """A farm code naming no farm and a 1300 naming no port still make declared moves."""
    manager = make_manager()
    await manager.start(timeout=3)
    await gw.send_error(2103, message="broken, farm not named")
    await manager.wait_for(S.DEGRADED, timeout=2)
    await gw.send_error(2104, message="OK, farm not named")
    await manager.wait_for(S.CONNECTED, timeout=2)
    since = len(manager.transcript)
    await gw.send_error(1300, message="port reset, no port in this text")
    await wait_until(lambda: manager.state is S.CONNECTED and len(manager.transcript) > since + 2,
                     what="reconnected on the same port")
    assert manager.machine.port == gw.port
    assert tracebacks.escaped() == []


async def test_gateway_closing_in_the_middle_of_startup_sync(
    make_manager: Make, gw: FakeGateway, tracebacks: TracebackCatcher,
) -> None:
    """A drop while the startup sync is held is a costly failed attempt, then a clean connect."""
    gw.hold_sync("reqExecutions")
    # Cheap and costly floors differ, so the delay chosen tells which schedule it came from.
    policy = RecoveryPolicy(backoff=BackoffPolicy(initial_delay=0.05, costly_delay=0.3,
                                                  jitter=0.0))
    manager = make_manager(connect_timeout=2.0, policy=policy)
    manager.feed(Input(InputKind.CONNECT, message="sync cut short"))
    await wait_until(lambda: bool(gw.requests_named("reqExecutions")), what="sync under way")
    await gw.drop_clients()
    await manager.wait_for(S.BACKOFF, timeout=2)
    failed = manager.transcript[-1]
    assert failed.trigger is InputKind.ATTEMPT_FAILED
    assert "sync" in failed.cause or "socket" in failed.cause
    assert failed.delay == 0.3  # the costly floor; a cheap failure would wait 0.05
    gw.release_sync()
    await manager.wait_for(S.CONNECTED, timeout=3)
    assert tracebacks.escaped() == []


async def test_socket_closed_during_handshake_fails_the_attempt_at_once(
    make_manager: Make, gw: FakeGateway,
) -> None:
    """A drop during the handshake fails the attempt at once, not after connect_timeout."""
    gw.handshake_delay = 5.0
    manager = make_manager(connect_timeout=3.0)
    accepted = gw.accepted_connections
    manager.feed(Input(InputKind.CONNECT, message="handshake cut short"))
    await wait_until(lambda: gw.accepted_connections > accepted, what="TCP accepted")
    await gw.drop_clients()
    await manager.wait_for(S.BACKOFF, timeout=30)  # a hang guard only
    failed = manager.transcript[-1]
    # Left to connect_timeout, the attempt would fail as "timed out".
    assert (failed.source, failed.trigger) == (S.CONNECTING, InputKind.ATTEMPT_FAILED)
    assert failed.cause.startswith("socket broke during the handshake"), failed.cause
