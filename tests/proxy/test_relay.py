"""The relay: bytes unchanged both ways, sessions, bad input, a manager through it."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from ibkr_connection import ConnectionManager, ConnectionState
from ibkr_connection.proxy import ProxyServer
from ibkr_connection.simulator import FakeGateway

from .conftest import RawClient, frame, wait_until

Make = Callable[..., ConnectionManager]


class ScriptedUpstream:
    """A stand-in gateway that records every byte it gets and sends scripted bytes."""

    def __init__(self, script: bytes, chunks: int = 7) -> None:
        self.script = script
        self.chunks = chunks
        self.received = bytearray()
        self.closed = asyncio.Event()
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> ScriptedUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Odd cuts, so frames and even length prefixes arrive split over reads.
        cuts = sorted(random.Random(1).sample(range(1, len(self.script)), self.chunks))
        for start, end in zip([0, *cuts], [*cuts, len(self.script)], strict=True):
            writer.write(self.script[start:end])
            await writer.drain()
            await asyncio.sleep(0.002)
        while data := await reader.read(65536):
            self.received += data
        writer.close()
        self.closed.set()


async def _send_in_pieces(writer: asyncio.StreamWriter, data: bytes, pieces: int) -> None:
    cuts = sorted(random.Random(2).sample(range(1, len(data)), pieces))
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        writer.write(data[start:end])
        await writer.drain()
        await asyncio.sleep(0.002)


async def _read_all(reader: asyncio.StreamReader, size: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), 5)


SERVER_SCRIPT = (frame(157, "20250101 12:00:00 UTC") + frame(15, 1, "DU1234567")
                 + frame(9, 1, 100)
                 + frame(4, 2, -1, 2104, "Market data farm connection is OK:usfarm")
                 + frame(1, 6, 5, 4, 150.25, 100, 0) * 20)
CLIENT_SCRIPT = (b"API\0" + struct.pack(">I", 9) + b"v157..176" + frame(71, 2, 7, "")
                 + frame(49, 1) + frame(1, 11, 5, 0, "AAPL", "STK", "", 0.0, "", "", "SMART", "",
                                        "USD", "", "", 0, "", 0, 0, ""))


async def test_every_byte_is_relayed_unchanged_both_ways() -> None:
    """Frames split anywhere over reads reach each side exactly as the other side sent them."""
    async with ScriptedUpstream(SERVER_SCRIPT) as upstream, \
            ProxyServer("127.0.0.1", upstream.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _send_in_pieces(writer, CLIENT_SCRIPT, 9)
        got = await _read_all(reader, len(SERVER_SCRIPT))
        writer.close()
        await asyncio.wait_for(upstream.closed.wait(), 5)
    assert got == SERVER_SCRIPT
    assert bytes(upstream.received) == CLIENT_SCRIPT


async def test_the_session_line_names_the_client_and_the_bytes_each_way() -> None:
    """A session's line gives its client id and the bytes relayed each way."""
    lines: list[str] = []
    async with ScriptedUpstream(SERVER_SCRIPT, chunks=2) as upstream, \
            ProxyServer("127.0.0.1", upstream.port, notify=lines.append) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(CLIENT_SCRIPT)
        await _read_all(reader, len(SERVER_SCRIPT))
        writer.close()
        await wait_until(lambda: proxy.closed_sessions == 1, what="session closed")
    assert len(lines) == 1
    assert lines[0].startswith("session 1 (client 7, 127.0.0.1:")
    assert (f"{len(CLIENT_SCRIPT):,} bytes to the gateway, {len(SERVER_SCRIPT):,} bytes to the "
            f"client (client closed)") in lines[0]


async def test_the_proxy_binds_loopback_unless_told_otherwise(gw: FakeGateway) -> None:
    """With no host given, the proxy listens on 127.0.0.1 only."""
    async with ProxyServer("127.0.0.1", gw.port) as proxy:
        assert proxy.sockname == ("127.0.0.1", proxy.port)


@pytest.mark.parametrize(
    ("offered", "cap", "version"),
    [
        ((157, 176), 178, 176),  # ib_insync 0.9.86's range
        ((157, 178), 178, 178),  # ib_async 2.x's range
        ((157, 176), 157, 157),  # a gateway that speaks no higher than 157
        ((150, 170), 178, 170),
    ],
)
async def test_negotiated_version_and_client_id_are_read_off_the_wire(
    gw: FakeGateway, proxy: ProxyServer, offered: tuple[int, int], cap: int, version: int
) -> None:
    """The session knows the version the gateway answered and the client id of startApi."""
    gw.server_version = cap
    client = await RawClient.connect(proxy.port)
    assert await client.handshake(client_id=12, versions=f"v{offered[0]}..{offered[1]}") == version
    await client.read_until("9")
    session = next(iter(proxy.sessions.values()))
    assert (session.version, session.client_id, session.client_versions) == (version, 12, offered)
    await client.close()


async def test_manager_connects_and_streams_through_the_proxy(
    make_manager: Make, gw: FakeGateway, proxy: ProxyServer
) -> None:
    """A manager connects through the proxy, gets its account, and ticks pushed upstream arrive."""
    manager = make_manager()
    await manager.start(timeout=10)
    assert manager.state is ConnectionState.CONNECTED
    assert manager.account == "DU1234567"
    module = __import__(type(manager.ib).__module__.split(".")[0])
    contract = module.Stock("AAPL", "SMART", "USD")
    contract.conId = gw.instruments["AAPL"].con_id
    handle = manager.subscribe_market_data(contract)
    await handle.wait_ready(timeout=5)
    await gw.wait_for_request("reqMktData", client_id=7)
    gw.push_tick("AAPL", 151.5)
    await wait_until(lambda: handle.ticker is not None and handle.ticker.last == 151.5,
                     what="the pushed tick")
    await manager.stop()
    await wait_until(lambda: proxy.closed_sessions == 1, what="session line")
    assert proxy.lines[-1].startswith("session 1 (client 7, ")  # type: ignore[attr-defined]


@pytest.fixture
async def closed_port() -> AsyncIterator[int]:
    """A loopback port nothing listens on."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    yield port


async def test_unreachable_upstream_is_said_per_session_and_the_proxy_keeps_listening(
    gw: FakeGateway,
) -> None:
    """Each session says the upstream is unreachable and closes; the next one works."""
    lines: list[str] = []
    async with ProxyServer("127.0.0.1", gw.port, notify=lines.append) as proxy:
        await gw.stop_listening()
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        await wait_until(lambda: proxy.closed_sessions == 2, what="both sessions closed")
        assert len(lines) == 2
        for number, line in enumerate(lines, start=1):
            assert line.startswith(f"session {number} from 127.0.0.1:")
            assert f"upstream 127.0.0.1:{gw.port} unreachable (" in line
            assert line.endswith("; client connection closed")
        await gw.start_listening()
        client = await RawClient.connect(proxy.port)
        assert await client.handshake(client_id=3) == 176  # v157..176 against a cap of 178
        await client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not a TWS client at all
        b"API\0" + struct.pack(">I", 0xFFFFFFF) + b"v157..176",  # an absurd length prefix
        b"API\0" + struct.pack(">I", 9) + b"v157..176" + frame("not-an-id", 1, 2),
        b"API\0" + struct.pack(">I", 4) + b"\xff\xfe\x00\x01" + frame(71, 2, "x", ""),
    ],
    ids=["http", "huge-length", "bad-message-id", "binary-hello"],
)
async def test_client_garbage_is_relayed_and_the_proxy_survives(
    garbage: bytes, gw: FakeGateway
) -> None:
    """Garbage from a client reaches the gateway byte for byte; the proxy serves the next client."""
    async with ScriptedUpstream(b"\0" * 8, chunks=1) as upstream, \
            ProxyServer("127.0.0.1", upstream.port) as proxy:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(garbage)
        await writer.drain()
        await wait_until(lambda: len(upstream.received) >= len(garbage), what="garbage relayed")
        writer.close()
        await asyncio.wait_for(upstream.closed.wait(), 5)
        assert bytes(upstream.received) == garbage
        upstream.closed.clear()
    # The same garbage through a proxy in front of the simulator, then a real client.
    lines: list[str] = []
    async with ProxyServer("127.0.0.1", gw.port, notify=lines.append) as proxy:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(garbage)
        await writer.drain()
        await wait_until(lambda: gw.accepted_connections == 1, what="relayed to the simulator")
        writer.close()
        client = await RawClient.connect(proxy.port)
        assert await client.handshake(client_id=4) == 176  # v157..176 against a cap of 178
        await client.close()
        await wait_until(lambda: proxy.closed_sessions == 2, what="both sessions closed")
    assert [line.split(" (")[0] for line in lines] == ["session 1", "session 2"]


@pytest.mark.parametrize(
    "script",
    [
        struct.pack(">I", 30) + b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)),
        frame(157, "20250101 12:00:00 UTC") + frame(9, 1, 1) + struct.pack(">I", 0x7FFFFFFF)
        + bytes(range(256)),
    ],
    ids=["not-a-version", "huge-length-later"],
)
async def test_gateway_garbage_is_relayed_unframed(script: bytes) -> None:
    """A gateway stream that is not TWS frames is relayed as it comes."""
    async with ScriptedUpstream(script, chunks=3) as upstream, \
            ProxyServer("127.0.0.1", upstream.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(CLIENT_SCRIPT)
        got = await _read_all(reader, len(script))
        writer.close()
    assert got == script


async def _burst_to_slow_reader(gw: FakeGateway, proxy: ProxyServer, burst: bytes) -> bytearray:
    """Send ``burst`` to a client that reads only once it left the gateway; return the stream."""
    client = await RawClient.connect(proxy.port)
    await client.handshake(client_id=5)
    await client.read_until("9")
    conn = next(c for c in gw.clients if c.client_id == 5)
    conn.send_raw(burst)
    session = next(iter(proxy.sessions.values()))
    # The client reads nothing until the burst has left the gateway (into the sockets'
    # buffers), or until the relay, its buffer to the client full, stops reading the gateway.
    await wait_until(lambda: session.upstream_paused
                     or conn.transport.get_write_buffer_size() == 0,
                     what="the burst sent or the gateway paused")
    received = bytearray()
    # Notices sent after the handshake may come first: the burst is what ends the stream.
    while len(received) < len(burst) or not received.endswith(burst[-64:]):
        received += await asyncio.wait_for(client.reader.read(1 << 20), 5)
    await client.close()
    return received


async def test_a_slow_reader_gets_everything(gw: FakeGateway, proxy: ProxyServer) -> None:
    """A client that stops reading is not flooded nor cut: the relay pauses the gateway."""
    burst = frame(1, 6, 1, 4, 150.0, 100, 0) * 200_000  # ~5 MB, far above socket buffers
    received = await _burst_to_slow_reader(gw, proxy, burst)
    assert received.endswith(burst)


async def test_a_burst_of_distinct_frames_reaches_a_slow_reader_intact(
    gw: FakeGateway, proxy: ProxyServer
) -> None:
    """3 MB of all-different frames arrive unaltered (a read buffer reused too soon shows here)."""
    burst = b"".join(frame(1, 6, 1, 4, 100 + n / 1000, n, 0) for n in range(100_000))
    received = await _burst_to_slow_reader(gw, proxy, burst)
    assert received.endswith(burst)
