"""One relayed session: the bot's socket, the gateway's socket, and the frames between.

:class:`RelaySession` frames both streams (the ``API\\0`` opening, the two
handshakes, then length-prefixed messages), keeps the negotiated version and
the client id, writes only whole frames to either side (so anything injected
lands at a message boundary), holds the gateway's frames while the proxy
stalls or delays them, and feeds the recorder. A stream that is not TWS
frames is passed on unframed. It belongs to a
:class:`~ibkr_connection.proxy.relay.ProxyServer`, which owns the faults.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Protocol

from ibkr_connection.wire import framing
from ibkr_connection.wire.recording import RecordingWriter

logger = logging.getLogger(__name__)

#: Startup requests whose closing message ``hold_sync`` / ``delay_sync`` act on:
#: request name -> (its message id, the id of the message that ends its answer).
#: Ids from ib_insync's ``client.py`` (requests) and ``decoder.py`` (answers).
SYNC_ENDS: dict[str, tuple[int, int]] = {
    "reqPositions": (61, 62),
    "reqOpenOrders": (5, 53),
    "reqAllOpenOrders": (16, 53),
    "reqCompletedOrders": (99, 102),
    "reqAccountUpdates": (6, 54),
    "reqAccountUpdatesMulti": (76, 74),
    "reqExecutions": (7, 55),
    "reqAccountSummary": (62, 64),
    "reqPositionsMulti": (74, 72),
    "reqCurrentTime": (49, 49),
    "reqContractDetails": (9, 52),
}

_REQUEST_OF_ID = {req_id: name for name, (req_id, _) in SYNC_ENDS.items()}
_END_IDS = {end for _, end in SYNC_ENDS.values()}

#: Farm notices whose text ends with ``:<farm>`` (2103/2104 market data,
#: 2105/2106 historical data, 2157/2158 security definitions).
_FARM_CODES = {2103, 2104, 2105, 2106, 2157, 2158}


def addr(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SessionHost(Protocol):
    """What a session needs of the relay that owns it (:class:`ProxyServer
    <ibkr_connection.proxy.relay.ProxyServer>`): its settings and faults in
    force, the recorder, and the calls that tell it a session opened, closed
    or has something to say. Declared here so that a session does not import
    the relay that makes it.
    """

    upstream_host: str
    upstream_port: int
    connect_timeout: float
    recorder: RecordingWriter | None
    inspect: bool
    handshake_delay: float
    sync_delays: dict[str, float]
    held_syncs: set[str]

    @property
    def upstream(self) -> str: ...

    @property
    def stalled(self) -> bool: ...

    def say(self, line: str) -> None: ...

    def session_opened(self, transport: asyncio.Transport) -> RelaySession: ...

    def session_closed(self, session: RelaySession) -> None: ...


class RelaySession:
    """One bot's connection through the proxy, and its connection to the gateway.

    Attributes:
        number: The session's number, from 1, in the order bots connected.
        peer: The bot's address.
        client_id: The client id of the bot's ``startApi`` (None before it).
        version: The server version the gateway answered (0 before it).
        c2s_bytes: Bytes received from the bot.
        s2c_bytes: Bytes received from the gateway.
        opened_at: ``time.monotonic()`` when the bot connected.
        farms: Data farms the gateway named to this bot, in order.
    """

    def __init__(self, proxy: SessionHost, number: int, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.number = number
        peer = client.get_extra_info("peername")
        self.peer = addr(peer[0], peer[1]) if peer else "?"
        self.client_id: int | None = None
        self.version = 0
        self.client_versions: tuple[int, int] | None = None
        self.c2s_bytes = 0
        self.s2c_bytes = 0
        self.opened_at = time.monotonic()
        self.farms: list[str] = []
        self.closed = False
        self.reason = ""
        self._client = client
        self._upstream: asyncio.Transport | None = None
        self._early: list[bytes] = []
        self._client_open = True
        self._upstream_open = False
        self._c2s_state = "prefix"  # prefix -> hello -> frames | raw
        self._s2c_state = "hello"  # hello -> frames | raw
        self._prefix = b""
        self._c2s = framing.FrameSplitter()
        self._s2c = framing.FrameSplitter()
        self._held: list[tuple[bytes, bool]] = []
        self._hs_hold = False
        self._held_ends: dict[str, list[bytes]] = {}
        self._pending_ends: dict[int, collections.deque[str]] = {}
        self._timers: list[asyncio.TimerHandle] = []
        self._connector: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """True once the handshake is done and the bot sent ``startApi``."""
        return self.version > 0 and self.client_id is not None and not self.closed

    @property
    def held_bytes(self) -> int:
        """Bytes from the gateway held by a stall or a handshake delay, not yet delivered."""
        return sum(len(data) for data, _ in self._held)

    @property
    def upstream_paused(self) -> bool:
        """True while the relay does not read the gateway: the bot reads slower than it sends."""
        return self._upstream is not None and not self._upstream.is_reading()

    def __repr__(self) -> str:
        return f"<RelaySession {self.number} client {self.client_id} {self.peer}>"

    # ------------------------------------------------------------------ upstream
    def start(self) -> None:
        """Open the connection to the gateway (a task of the session)."""
        self._connector = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamSide(self), proxy.upstream_host,
                                       proxy.upstream_port),
                proxy.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            proxy.say(f"session {self.number} from {self.peer}: upstream "
                       f"{proxy.upstream} unreachable ({reason}); client connection closed")
            self.reason = f"upstream unreachable: {reason}"
            self._client.abort()
            return
        if not self._client_open:
            transport.close()
            return
        assert isinstance(transport, asyncio.Transport)
        self._upstream = transport
        self._upstream_open = True
        early, self._early = b"".join(self._early), []
        if early:
            transport.write(early)

    # ------------------------------------------------------------------ bot -> gateway
    def client_data(self, data: bytes) -> None:
        """Relay bytes from the bot, framing them on the way."""
        self.c2s_bytes += len(data)
        if self._c2s_state == "prefix":
            data = self._prefix + data
            if len(data) < len(framing.API_PREFIX) and framing.API_PREFIX.startswith(data):
                self._prefix = data
                return
            self._prefix = b""
            if not data.startswith(framing.API_PREFIX):
                logger.warning("session %d: the client did not open with API\\0; relaying its "
                               "bytes unframed", self.number)
                self._c2s_state = "raw"
            else:
                self._c2s_state = "hello"
                self._to_upstream(framing.API_PREFIX)
                data = data[len(framing.API_PREFIX):]
        if self._c2s_state == "raw":
            self._record_raw("c2s", data)
            self._to_upstream(data)
            return
        whole = self._c2s.feed(data)
        if self._c2s.broken:
            logger.warning("session %d: the client sent a frame longer than %d bytes; relaying "
                           "its bytes unframed from here", self.number, framing.MAX_FRAME)
            self._c2s_state = "raw"
            self._record_raw("c2s", whole)
            self._to_upstream(whole)
            return
        if not whole:
            return
        payloads = framing.iter_payloads(whole)
        recorder = self.proxy.recorder
        messages = whole
        if self._c2s_state == "hello":
            hello = payloads.pop(0)
            messages = whole[4 + len(hello):]
            parsed = framing.parse_client_hello(hello)
            if parsed is not None:
                self.client_versions = parsed[:2]
            if recorder is not None:
                recorder.client_hello(self.number, framing.API_PREFIX + framing.frame(hello),
                                      self.client_versions, parsed[2] if parsed else "")
            self._c2s_state = "frames"
        for payload in payloads:
            self._on_request(framing.decode(payload, self.version))
        if recorder is not None and messages:
            recorder.frames(self.number, "c2s", messages, self.version)
        self._to_upstream(whole)

    def _on_request(self, message: framing.Message) -> None:
        fields = message.fields
        if message.msg_id == framing.START_API and fields and len(fields) > 2:
            with contextlib.suppress(ValueError):
                self.client_id = int(fields[2])
            return
        name = _REQUEST_OF_ID.get(message.msg_id)
        if name is None or not self.proxy.inspect:
            # Only while the answers are read too: a request counted here must be
            # popped by its end, or a later hold would pair ends with stale names.
            return
        if name == "reqAccountUpdates" and not (fields and len(fields) > 2 and fields[2] == "1"):
            return  # an unsubscribe gets no answer
        end = SYNC_ENDS[name][1]
        # Bounded: a request answered by an error instead of its end never pops.
        self._pending_ends.setdefault(end, collections.deque(maxlen=64)).append(name)

    def _to_upstream(self, data: bytes) -> None:
        if not data:
            return
        if self._upstream is None:
            self._early.append(data)
        elif not self._upstream.is_closing():
            self._upstream.write(data)

    # ------------------------------------------------------------------ gateway -> bot
    def upstream_data(self, data: bytes) -> None:
        """Relay bytes from the gateway, framing them on the way."""
        self.s2c_bytes += len(data)
        proxy = self.proxy
        if self._s2c_state == "frames" and not (proxy.inspect or proxy.recorder is not None
                                                or proxy.stalled or self._hs_hold):
            # The hot path (ticks): whole frames straight through, nothing else to do.
            whole = self._s2c.feed(data)
            if self._s2c.broken:
                self._s2c_unframed(whole)
            elif whole and not self._client.is_closing():
                self._client.write(whole)
            return
        if self._s2c_state == "raw":
            self._record_raw("s2c", data)
            self._deliver(data, raw=True)
            return
        whole = self._s2c.feed(data)
        if self._s2c.broken:
            self._s2c_unframed(whole)
            return
        if not whole:
            return
        if self._s2c_state == "hello":
            whole = self._server_hello(whole)
            if not whole:
                return
        if self.proxy.inspect:
            whole = self._inspect(whole)
        self._deliver(whole)

    def _s2c_unframed(self, data: bytes) -> None:
        logger.warning("session %d: the gateway sent a frame longer than %d bytes; relaying "
                       "its bytes unframed from here", self.number, framing.MAX_FRAME)
        self._s2c_state = "raw"
        self._record_raw("s2c", data)
        self._deliver(data, raw=True)

    def _server_hello(self, whole: bytes) -> bytes:
        size = int.from_bytes(whole[:4], "big")
        hello, rest = whole[: 4 + size], whole[4 + size:]
        version = framing.parse_server_hello(hello[4:])
        if self.proxy.recorder is not None:
            self.proxy.recorder.server_hello(self.number, hello, version)
        if version is None:
            logger.warning("session %d: the gateway's first message is not a version; relaying "
                           "its bytes unframed", self.number)
            self._s2c_state = "raw"
            self._record_raw("s2c", whole)
            self._deliver(whole, raw=True)
            return b""
        self.version = version
        self._s2c_state = "frames"
        delay = self.proxy.handshake_delay
        if delay > 0:
            self._hs_hold = True
            self._timers.append(asyncio.get_running_loop().call_later(delay, self._end_hs_hold))
            logger.info("session %d: handshake answer held %.2fs", self.number, delay)
        self._deliver(hello, raw=True)
        return rest

    def _end_hs_hold(self) -> None:
        self._hs_hold = False
        if not self.proxy.stalled:
            self.flush_held()

    def _inspect(self, whole: bytes) -> bytes:
        """Watch each frame: farm names, and the end messages held or delayed."""
        version = self.version
        proxy = self.proxy
        keep: list[bytes] = []
        start = 0
        pos, size = 0, len(whole)
        while pos < size:
            end = pos + 4 + int.from_bytes(whole[pos:pos + 4], "big")
            msg_id = _msg_id(whole, pos + 4, end, version)
            if msg_id == framing.ERR_MSG:
                self._learn_farm(whole[pos + 4:end])
            elif msg_id in _END_IDS:
                queue = self._pending_ends.get(msg_id)
                name = queue.popleft() if queue else None
                if name is not None and (name in proxy.held_syncs or name in proxy.sync_delays):
                    keep.append(whole[start:pos])
                    start = end
                    frame = whole[pos:end]
                    if name in proxy.held_syncs:
                        self._held_ends.setdefault(name, []).append(frame)
                        logger.info("session %d: holding the end of %s", self.number, name)
                    else:
                        self._timers.append(asyncio.get_running_loop().call_later(
                            proxy.sync_delays[name], self._deliver, frame))
            pos = end
        if start == 0:
            return whole
        keep.append(whole[start:])
        return b"".join(keep)

    def _learn_farm(self, payload: bytes) -> None:
        message = framing.decode(payload, self.version)
        fields = message.fields
        if not fields:
            return
        offset = 1 if self.version >= framing.ERROR_TIME_VERSION else 2
        try:
            code = int(fields[offset + 1])
            text = fields[offset + 2]
        except (IndexError, ValueError):
            return
        if code in _FARM_CODES and ":" in text:
            farm = text.rsplit(":", 1)[1].strip()
            if farm and farm not in self.farms:
                self.farms.append(farm)

    def _deliver(self, data: bytes, *, raw: bool = False) -> None:
        """Write whole frames to the bot, or hold them while stalled or delayed.

        Args:
            data: Whole frames (or unframed bytes).
            raw: Not messages to record (the handshake answer, unframed bytes).
        """
        if self.closed or not data:
            return
        if self.proxy.stalled or self._hs_hold:
            self._held.append((data, raw))
            return
        self._write_client(data, raw=raw)

    def _write_client(self, data: bytes, *, raw: bool = False, injected: bool = False) -> None:
        if self._client.is_closing():
            return
        recorder = self.proxy.recorder
        if recorder is not None and not raw:
            # On disk before the bot can see it: a proxy killed in between loses nothing
            # the bot got.
            recorder.frames(self.number, "s2c", data, self.version, injected=injected)
        self._client.write(data)

    def flush_held(self, discard: bool = False) -> int:
        """Deliver (or throw away) what a stall held; return the bytes concerned."""
        if self._hs_hold and not discard:
            return 0  # the handshake delay's timer delivers them
        held, self._held = self._held, []
        size = 0
        for data, raw in held:
            size += len(data)
            if not discard:
                self._write_client(data, raw=raw)
            elif self.proxy.recorder is not None and not raw:
                self.proxy.recorder.frames(self.number, "s2c", data, self.version,
                                           discarded=True)
        return size

    def release_ends(self, names: set[str]) -> int:
        """Deliver the held end messages of these requests; return how many."""
        count = 0
        for name in names:
            for frame in self._held_ends.pop(name, []):
                self._deliver(frame)
                count += 1
        return count

    def inject(self, frame: bytes) -> None:
        """Write a frame the proxy made to the bot, at a message boundary.

        Everything written to the bot so far is whole frames, so the boundary
        is here; a stall does not hold it (as a hung gateway's error messages
        still reach the simulator's clients).
        """
        self._write_client(frame, injected=True)

    def _record_raw(self, direction: str, data: bytes) -> None:
        if self.proxy.recorder is not None and data:
            self.proxy.recorder.raw(self.number, direction, data)

    # ------------------------------------------------------------------ closing
    def drop(self) -> None:
        """Abort both sides at once (a gateway that crashed)."""
        self.reason = self.reason or "dropped by the proxy"
        self._client.abort()
        if self._upstream is not None:
            self._upstream.abort()
        if self._connector is not None:
            self._connector.cancel()

    def client_lost(self, exc: Exception | None) -> None:
        self._client_open = False
        if not self.reason:
            self.reason = f"client closed ({exc})" if exc else "client closed"
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.close()
        if self._upstream is None and self._connector is not None:
            self._connector.cancel()
        self._maybe_done()

    def upstream_lost(self, exc: Exception | None) -> None:
        self._upstream_open = False
        if not self.reason:
            self.reason = f"gateway closed ({exc})" if exc else "gateway closed"
        # Let the bot read what the gateway said last (e.g. a 326) before its socket closes.
        if not self._client.is_closing():
            self._client.close()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.closed or self._client_open or self._upstream_open:
            return
        self.closed = True
        for handle in self._timers:
            handle.cancel()
        self.proxy.session_closed(self)

    # ------------------------------------------------------------------ flow control
    def pause_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_upstream(self) -> None:
        if self._upstream is not None and not self._upstream.is_closing():
            self._upstream.resume_reading()

    def pause_client(self) -> None:
        self._client.pause_reading()

    def resume_client(self) -> None:
        if not self._client.is_closing():
            self._client.resume_reading()


def _msg_id(buf: bytes, start: int, end: int, version: int) -> int:
    if version >= framing.BINARY_MSG_ID_VERSION:
        if end - start < 4:
            return -1
        wire_id = int.from_bytes(buf[start:start + 4], "big")
        return wire_id - framing.PROTOBUF_OFFSET if wire_id > framing.PROTOBUF_OFFSET else wire_id
    nul = buf.find(b"\0", start, end)
    try:
        return int(buf[start:nul if nul >= 0 else end])
    except ValueError:
        return -1


class ClientSide(asyncio.Protocol):
    """The bot's socket."""

    def __init__(self, proxy: SessionHost) -> None:
        self.proxy = proxy
        self.session: RelaySession | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.session = self.proxy.session_opened(transport)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.client_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.client_lost(exc)

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_upstream()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_upstream()


class UpstreamSide(asyncio.Protocol):
    """The session's socket to the gateway."""

    def __init__(self, session: RelaySession) -> None:
        self.session = session

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_client()

    def resume_writing(self) -> None:
        self.session.resume_client()
