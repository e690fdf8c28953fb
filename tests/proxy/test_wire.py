"""The relay's wire helpers: frame splitting and error frames per negotiated version."""

from __future__ import annotations

import asyncio
import importlib
import struct

import pytest

from ibkr_connection.proxy import ProxyServer, proxy_error_frame
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.wire import protocol
from ibkr_connection.wire.framing import FrameSplitter, decode, encode

from .conftest import frame, wait_until


@pytest.mark.parametrize(
    ("version", "payload"),
    [
        (150, b"4\x002\x00-1\x001100\x00lost\x00"),
        (157, b"4\x002\x00-1\x001100\x00lost\x00"),
        (165, b"4\x002\x00-1\x001100\x00lost\x00"),
        (166, b"4\x002\x00-1\x001100\x00lost\x00\x00"),
        (176, b"4\x002\x00-1\x001100\x00lost\x00\x00"),
        (178, b"4\x002\x00-1\x001100\x00lost\x00\x00"),
        (179, b"4\x002\x00-1\x001100\x00lost\x00\x00"),
        (193, b"4\x002\x00-1\x001100\x00lost\x00\x00"),
        (194, b"4\x00-1\x001100\x00lost\x00\x001700000000000\x00"),
        (201, b"\x00\x00\x00\x04-1\x001100\x00lost\x00\x001700000000000\x00"),
    ],
)
def test_error_frame_layout_per_version(version: int, payload: bytes) -> None:
    """The error message carries the fields the negotiated version's decoders read."""
    assert proxy_error_frame(version, -1, 1100, "lost", error_time_ms=1_700_000_000_000) == (
        struct.pack(">I", len(payload)) + payload)


@pytest.mark.parametrize("version", range(157, 179))
@pytest.mark.parametrize(
    ("req_id", "code", "text"),
    [
        (-1, 1100, "Connectivity between IB and Trader Workstation has been lost."),
        (-1, 2104, "Market data farm connection is OK:usfarm"),
        (42, 200, "No security definition has been found for the request"),
        (7, 326, ""),
    ],
)
def test_error_frame_is_the_simulators_at_the_versions_it_speaks(
    version: int, req_id: int, code: int, text: str
) -> None:
    """From 157 to 178 the proxy's error frame is the simulator's own, byte for byte."""
    assert proxy_error_frame(version, req_id, code, text) == protocol.error(
        req_id, code, text, version=version)


@pytest.mark.parametrize(
    ("version", "tail"),
    [(157, b"\x00"), (176, b"\x00\x00"), (178, b"\x00\x00"), (190, b"\x00\x00")],
)
def test_error_text_is_ascii_escaped_as_tws_does(version: int, tail: bytes) -> None:
    """Non-ASCII text goes out as \\uXXXX escapes (a surrogate pair above U+FFFF)."""
    payload = proxy_error_frame(version, 5, 200, "é€😀")[4:]
    assert payload == b"4\x002\x005\x00200\x00\\u00e9\\u20ac\\ud83d\\ude00" + tail


def test_splitter_returns_whole_frames_only() -> None:
    """Bytes cut anywhere come out as whole frames, the tail kept for later."""
    stream = frame(1, 2, 3) + frame("abc") + frame(4, "", 5)
    for cut in range(len(stream) + 1):
        splitter = FrameSplitter()
        out = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert out == stream
        assert splitter.pending == 0


def test_encode_message_lays_out_every_kind_of_field() -> None:
    """Text and integers as they are, bools 1/0, None empty, floats as TWS reads them."""
    import enum

    class Side(enum.IntEnum):
        BUY = 1

    fields = ["49", 1, -3, "", True, False, None, 1.5, 2.0, float("inf"), 1e16, Side.BUY, "é"]
    body = "49\x001\x00-3\x00\x001\x000\x00\x001.5\x002\x00Infinite\x001e+16\x001\x00é\x00"
    assert protocol.encode_message(fields) == frame_bytes(body.encode())
    assert protocol.encode_message(iter(["8", 2])) == frame_bytes(b"8\x002\x00")
    assert protocol.encode_message([]) == b"\x00\x00\x00\x00"


def frame_bytes(body: bytes) -> bytes:
    """A body with its 4-byte big-endian length in front."""
    return struct.pack(">I", len(body)) + body


def test_frame_reader_cuts_whole_frames_however_the_bytes_arrive() -> None:
    """The simulator's reader gives the same payloads for one read, any two reads, byte by byte."""
    stream = frame(49, 1) + frame("abc") + frame() + frame(4, "", 5)
    payloads = [b"49\x001\x00", b"abc\x00", b"", b"4\x00\x005\x00"]
    reader = protocol.FrameReader()
    assert reader.feed(stream) == payloads
    for cut in range(len(stream) + 1):
        reader = protocol.FrameReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == payloads
        assert reader.take_prefix(1) is None  # nothing left over
    reader = protocol.FrameReader()
    assert [p for i in range(len(stream)) for p in reader.feed(stream[i : i + 1])] == payloads
    assert reader.feed(bytearray(frame(49, 1))) == [b"49\x001\x00"]


def test_frame_reader_refuses_an_oversized_frame_after_the_good_ones() -> None:
    """A length above the limit raises; the frames before it in the same read are not returned."""
    reader = protocol.FrameReader(max_frame=8)
    with pytest.raises(protocol.ProtocolError, match="frame length 9 exceeds 8"):
        reader.feed(frame(1) + struct.pack(">I", 9) + b"123456789")
    assert reader.take_prefix(4) == struct.pack(">I", 9)


def test_splitter_passes_a_stream_that_is_not_frames() -> None:
    """A length above 16 MB turns framing off: every byte goes through as it comes."""
    splitter = FrameSplitter()
    assert splitter.feed(frame(1)[:3]) == b""
    assert splitter.feed(frame(1)[3:]) == frame(1)
    assert not splitter.broken
    bad = struct.pack(">I", 0x1000000) + b"xyz"
    assert splitter.feed(bad) == bad
    assert splitter.broken
    assert splitter.feed(b"more") == b"more"


def test_binary_message_ids_from_version_201() -> None:
    """From 201 the message id is a 4-byte integer; above 200 the body is protobuf."""
    text = encode(["49", "1", "1700000000"], 201)
    assert text[4:8] == struct.pack(">I", 49)
    assert decode(text[4:], 201).fields == ["49", "1", "1700000000"]
    proto = struct.pack(">I", 204) + b"\x08\x01"
    message = decode(proto, 201)
    assert (message.msg_id, message.fields) == (4, None)


@pytest.mark.parametrize(("library", "version"),
                         [("ib_insync", 157), ("ib_insync", 176), ("ib_async", 178)])
async def test_client_reads_the_injected_error_at_the_negotiated_version(
    library: str, version: int
) -> None:
    """ib_insync and ib_async decode the proxy's 1100 at the version the gateway answered."""
    ib = importlib.import_module(library).IB()
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, text, *rest: errors.append((req_id, code, text))
    async with FakeGateway(server_version=version) as gw, \
            ProxyServer("127.0.0.1", gw.port) as proxy:
        await ib.connectAsync("127.0.0.1", proxy.port, clientId=3, timeout=5)
        assert ib.client.serverVersion() == version
        assert next(iter(proxy.sessions.values())).version == version
        await proxy.send_error(1100)
        await wait_until(lambda: any(e[1] == 1100 for e in errors), what="1100 decoded")
        ib.disconnect()
        await asyncio.sleep(0)
    assert (-1, 1100, "Connectivity between IB and Trader Workstation has been lost.") in errors
