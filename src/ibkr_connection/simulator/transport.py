"""The gateway's socket side: listening, connections, framing and the handshake.

:class:`GatewayTransport` accepts TCP connections on the caller's event loop,
gives each one an :class:`ApiClient`, reads the ``API\\0`` prefix and the
client's version range, answers with the server version it negotiated (or
refuses a range it cannot serve, see
:meth:`GatewayTransport._on_version_range`; a subclass picks the version by
overriding ``_negotiate`` and ``_refusal``, as the replay does to speak only
the recorded one), accepts ``startApi`` (refusing a
client id already in use with 326), and turns every later frame into a logged
:class:`Request` handed to :meth:`_handle_request`, which the gateway
overrides to dispatch it. It knows nothing of orders or
accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from ibkr_connection.simulator import messages
from ibkr_connection.wire import protocol as p
from ibkr_connection.wire import versions
from ibkr_connection.wire.protocol import Field

if TYPE_CHECKING:
    # Only for annotations: the transport carries instruments, never reads them.
    from ibkr_connection.simulator.brokerage import Instrument

logger = logging.getLogger(__name__)


class SimClock(Protocol):
    """The time the simulator reads: any :class:`ibkr_connection.clock.Clock` serves."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    def wall(self) -> datetime:
        """The current time of day, timezone-aware."""


class RealClock:
    """The real clock: ``time.monotonic()`` and the current UTC time."""

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(timezone.utc)


@dataclass(slots=True)
class Request:
    """One request received from a client (slotted: a gateway keeps thousands).

    Attributes:
        client_id: API client id (``None`` before ``startApi``).
        msg_id: Numeric message id.
        name: Readable name such as ``"reqMktData"``.
        fields: All fields of the message, the message id first.
        at: ``time.monotonic()`` when it was received.
        conn_id: Sequence number of the TCP connection.
    """

    client_id: int | None
    msg_id: int
    name: str
    fields: list[str]
    at: float
    conn_id: int


@dataclass
class ApiClient:
    """One TCP connection to the gateway.

    Attributes:
        conn_id: Connection sequence number.
        peer: Remote address.
        client_id: API client id once ``startApi`` was accepted.
        connected_at: ``time.monotonic()`` of the accept.
        ready: True once ``startApi`` was accepted (in ``FakeGateway.clients``).
        client_versions: The ``(min, max)`` range the client offered.
        version: The server version negotiated with this client (0 until
            the handshake); every message to it is laid out for this version.
        connect_options: Connect options the client sent.
        positions_subscribed: True after ``reqPositions``.
        account_subscription: Account of the active ``reqAccountUpdates``.
        mkt_data: Active market data subscriptions, reqId -> instrument.
    """

    conn_id: int
    peer: str
    transport: asyncio.Transport = field(repr=False)
    client_id: int | None = None
    connected_at: float = 0.0
    ready: bool = False
    client_versions: tuple[int, int] = (0, 0)
    version: int = 0
    connect_options: str = ""
    positions_subscribed: bool = False
    account_subscription: str | None = None
    mkt_data: dict[int, Instrument] = field(default_factory=dict)
    held: dict[str, list[bytes]] = field(default_factory=dict, repr=False)
    backlog: bytearray = field(default_factory=bytearray, repr=False)
    handles: list[asyncio.TimerHandle] = field(default_factory=list, repr=False)
    greeted: bool = False
    reader: p.FrameReader = field(default_factory=p.FrameReader, repr=False)

    def send(self, *fields: Field) -> None:
        """Send one message to this client (ignored once closing).

        Args:
            *fields: Message fields, the message id first.
        """
        self.send_raw(p.encode_message(fields))

    def send_raw(self, data: bytes) -> None:
        """Write pre-encoded frames to the socket (ignored once closing).

        Args:
            data: Framed bytes.
        """
        if not self.transport.is_closing():
            self.transport.write(data)

    def send_error(self, req_id: int, code: int, text: str, advanced_reject_json: str = "") -> None:
        """Send an errMsg laid out for this client's server version.

        Args:
            req_id: Request or order id; -1 for system messages.
            code: IB message code.
            text: Message text.
            advanced_reject_json: IB's JSON detail of an order rejection
                (only sent at version 166 and later).
        """
        self.send_raw(
            p.error(
                req_id, code, text, version=self.version, advanced_reject_json=advanced_reject_json
            )
        )


#: Bytes one read may take from a client's socket (the buffer is the protocol's own).
READ_SIZE = 64 * 1024


class ClientProtocol(asyncio.BufferedProtocol):
    """asyncio protocol bridging one socket to the gateway.

    A buffered protocol: each read lands in this connection's own buffer
    (``recv_into``), and only the bytes read are copied out. A plain
    :class:`asyncio.Protocol` has the transport allocate 256 KiB for every
    read (``recv(max_size)``) and shrink it; once glibc has freed one such
    block its mmap threshold rises above 256 KiB, the next ones come from the
    main heap, and the small objects placed between them keep it from
    shrinking: over the month this gateway's reads alone left about 0.5 MB of
    the process's RSS growth (issue 21, benchmarks/README.md section 10).
    """

    def __init__(self, gateway: GatewayTransport) -> None:
        self.gateway = gateway
        self.client: ApiClient | None = None
        self._view = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = self.gateway._on_connect(transport)
        # Every read goes straight to the gateway, without this method's own
        # call in between: a heartbeat probe is a read, ~837,000 a month (issue 21).
        self.buffer_updated = functools.partial(  # type: ignore[method-assign]
            self.gateway._on_read, self.client, self._view)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self.client is not None:
            self.gateway._on_read(self.client, self._view, nbytes)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:
            self.gateway._on_disconnect(self.client, exc)


class GatewayTransport:
    """The TCP server and per-client connections of a simulated gateway.

    Args:
        host: Interface to bind.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        server_version: Highest protocol version spoken (157..178).

    Attributes:
        host: Interface bound.
        handshake_delay: Seconds before the server version is sent.
        requests: Every request received, oldest first.
        accepted_connections: TCP connections accepted so far.
        handshakes: ``startApi`` requests accepted so far.
    """

    def __init__(self, host: str, port: int, server_version: int) -> None:
        self.host = host
        #: Where the simulator reads time (the real clock unless given one,
        #: e.g. a LoopClock for a run on virtual time).
        self.clock: SimClock = RealClock()
        self._port = port
        self._server_version = versions.check_cap(server_version)
        self.handshake_delay: float = 0.0
        self.requests: list[Request] = []
        self.accepted_connections = 0
        self.handshakes = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[int, ApiClient] = {}
        self._conn_seq = itertools.count(1)
        # Set by the fault layer; while True incoming bytes wait in each backlog.
        self._stalled = False
        self._request_waiters: list[tuple[str, int | None, asyncio.Future[Request]]] = []

    # ------------------------------------------------------------ state
    @property
    def server_version(self) -> int:
        """Highest protocol version spoken: each client gets the highest in its range up to it.

        Raises:
            ValueError: When set outside 157..178.
        """
        return self._server_version

    @server_version.setter
    def server_version(self, value: int) -> None:
        # Takes effect for the next handshakes; open sessions keep their version.
        self._server_version = versions.check_cap(value)

    @property
    def port(self) -> int:
        """The TCP port the gateway listens (or last listened) on."""
        return self._port

    @property
    def listening(self) -> bool:
        """True while the gateway accepts connections."""
        return self._server is not None

    @property
    def clients(self) -> list[ApiClient]:
        """Connected clients whose ``startApi`` was accepted."""
        return [c for c in self._conns.values() if c.ready]

    @property
    def connections(self) -> list[ApiClient]:
        """All open TCP connections, including those still handshaking."""
        return list(self._conns.values())

    @property
    def stalled(self) -> bool:
        """True while the gateway is hung (see ``stall``)."""
        return self._stalled

    def _client(self, client_id: int | None) -> list[ApiClient]:
        return [c for c in self.clients if client_id is None or c.client_id == client_id]

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start listening on :attr:`host` / :attr:`port`."""
        # DEBUG: whoever started the gateway says it is ready (the CLI's one line).
        await self._listen(logging.DEBUG)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self._stop_listening(logging.DEBUG)
        for conn in list(self._conns.values()):
            conn.transport.abort()
        await asyncio.sleep(0)

    async def start_listening(self, *, quiet: bool = False) -> None:
        """Listen again on the same port (no-op if already listening).

        Args:
            quiet: Log at DEBUG: the caller says it in its own line.
        """
        await self._listen(logging.DEBUG if quiet else logging.INFO)

    async def stop_listening(self) -> None:
        """Stop accepting connections (new ones are refused); existing stay."""
        await self._stop_listening(logging.INFO)

    async def _listen(self, level: int) -> None:
        if self._server is not None:
            return
        self._server, self._port = await self._create_server(self._port)
        logger.log(level, "gateway listening on %s:%d", self.host, self._port)

    async def _stop_listening(self, level: int) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            logger.log(level, "gateway stopped listening on port %d", self._port)
        await asyncio.sleep(0)

    async def _create_server(self, port: int) -> tuple[asyncio.base_events.Server, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientProtocol(self), self.host, port, reuse_address=True
        )
        return server, int(server.sockets[0].getsockname()[1])

    # ------------------------------------------------------------ connections
    def _on_connect(self, transport: asyncio.Transport) -> ApiClient:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        conn = ApiClient(
            conn_id=next(self._conn_seq),
            peer=f"{peer[0]}:{peer[1]}" if peer else "?",
            transport=transport,
            connected_at=self.clock.monotonic(),
        )
        self._conns[conn.conn_id] = conn
        self.accepted_connections += 1
        logger.debug("connection %d accepted from %s", conn.conn_id, conn.peer)
        return conn

    def _on_disconnect(self, conn: ApiClient, exc: Exception | None) -> None:
        self._conns.pop(conn.conn_id, None)
        for handle in conn.handles:
            handle.cancel()
        logger.info(
            "client %s (connection %d) disconnected%s",
            conn.client_id,
            conn.conn_id,
            f": {exc}" if exc else "",
        )

    def _close_broken(self, conn: ApiClient, reason: str) -> None:
        logger.warning(
            "closing connection %d (client %s): %s", conn.conn_id, conn.client_id, reason
        )
        conn.transport.abort()

    def _on_data(self, conn: ApiClient, data: bytes) -> None:
        self._on_read(conn, memoryview(data), len(data))

    def _on_read(self, conn: ApiClient, buffer: memoryview, nbytes: int) -> None:
        """Take the first ``nbytes`` of ``buffer``, just read from ``conn``'s socket.

        ``buffer`` is read into again at the next read: what is kept of it is
        copied (into the backlog, the frame reader's buffer).
        """
        data: bytes | memoryview = buffer[:nbytes]
        if self._stalled:
            conn.backlog += data
            return
        try:
            if not conn.greeted:
                conn.reader._buffer += data
                prefix = conn.reader.take_prefix(len(p.API_PREFIX))
                if prefix is None:
                    return
                if prefix != p.API_PREFIX:
                    self._close_broken(conn, f"bad API prefix {prefix!r}")
                    return
                conn.greeted = True
                data = b""
            for payload in conn.reader.feed(data):
                if conn.transport.is_closing():
                    return
                self._on_frame(conn, payload)
        except p.ProtocolError as exc:
            self._close_broken(conn, str(exc))

    def _on_frame(self, conn: ApiClient, payload: bytes) -> None:
        if conn.client_versions == (0, 0):
            self._on_version_range(conn, payload)
            return
        fields = p.split_fields(payload)
        if not fields:
            return
        try:
            msg_id = int(fields[0])
        except ValueError:
            logger.warning("connection %d sent garbage %r; ignored", conn.conn_id, fields[:3])
            return
        # The unknown name is built only for an unknown id (a default argument
        # would be formatted for every request).
        name = p.INCOMING.get(msg_id) or f"unknown{msg_id}"
        request = Request(conn.client_id, msg_id, name, fields, self.clock.monotonic(),
                          conn.conn_id)
        self.requests.append(request)
        if self._request_waiters:
            self._notify_waiters(request)
        self._handle_request(conn, request)

    def _on_version_range(self, conn: ApiClient, payload: bytes) -> None:
        """Answer the client's ``v<min>..<max>`` with the version both speak, or refuse it.

        The version comes from :meth:`_negotiate`. A range it refuses is
        answered as TWS answers it: with a version outside the client's range
        (:meth:`_refusal` logs why and says which), which the client itself
        rejects (IB's EClient.serverVersion disconnects with 506 "Unsupported
        version" when the version is above its max or below its min;
        ib_insync and ib_async disconnect when it is below their
        ``MinClientVersion``). TWS's next step is not documented; the
        simulator closes the socket after the answer so that a client that
        does not check cannot go on at a version it never offered.

        Raises:
            ProtocolError: If the payload is not a version range (the caller
                closes the connection).
        """
        low, high, options = p.parse_version_range(payload)
        if low > high:
            raise p.ProtocolError(f"empty version range v{low}..{high}")
        conn.client_versions = (low, high)
        conn.connect_options = options
        version = self._negotiate(conn, low, high)
        if version is None:
            answer = self._refusal(conn, low, high)
            conn.send_raw(messages.server_version(answer, self.clock.wall()))
            conn.transport.close()  # close() flushes the answer first; abort() would not
            return
        conn.version = version
        logger.debug(
            "connection %d offered versions %d..%d; speaking %d", conn.conn_id, low, high, version
        )
        self._later(conn, self.handshake_delay, self._send_server_version, conn)

    def _negotiate(self, conn: ApiClient, low: int, high: int) -> int | None:
        """The version to speak with a client that offered ``low..high``; ``None`` refuses it.

        Like TWS: the highest version in the range up to the cap
        (:func:`~ibkr_connection.wire.versions.negotiate`). A replay
        overrides it to speak the recorded version or nothing.

        Args:
            conn: The connection.
            low: Lowest version the client accepts.
            high: Highest version the client accepts.

        Returns:
            The version, or ``None``.
        """
        return versions.negotiate(low, high, self._server_version)

    def _refusal(self, conn: ApiClient, low: int, high: int) -> int:
        """Log why a client's range is refused; return the version to answer it with.

        Args:
            conn: The connection.
            low: Lowest version the client accepts.
            high: Highest version the client accepts.

        Returns:
            The gateway's own highest version (outside the client's range).
        """
        logger.warning(
            "connection %d offered versions %d..%d; this gateway speaks %d..%d: "
            "answered %d and closed",
            conn.conn_id,
            low,
            high,
            versions.MIN_SERVER_VERSION,
            self._server_version,
            self._server_version,
        )
        return self._server_version

    def _handle_request(self, conn: ApiClient, request: Request) -> None:
        """Act on a logged request; the transport alone answers none.

        Args:
            conn: The connection it came on.
            request: The request.
        """
        logger.info(
            "client %s sent %s %s; ignored", conn.client_id, request.name, request.fields[1:]
        )

    def _later(
        self, conn: ApiClient, delay: float, func: Callable[..., None], *args: object
    ) -> None:
        # Timers belong to the connection so that a disconnect cancels them.
        if delay <= 0:
            func(*args)
            return
        handle = asyncio.get_running_loop().call_later(delay, func, *args)
        conn.handles.append(handle)

    def _send_server_version(self, conn: ApiClient) -> None:
        conn.send_raw(messages.server_version(conn.version, self.clock.wall()))

    def accept_client(self, conn: ApiClient, client_id: int) -> bool:
        """Accept a ``startApi``, or refuse a client id already in use (326).

        Args:
            conn: The connection that sent ``startApi``.
            client_id: The client id it asked for.

        Returns:
            True if accepted (the connection is ready), False if refused (the
            connection is closing).
        """
        conn.client_id = client_id
        if any(c.client_id == client_id for c in self.clients):
            logger.warning(
                "client id %d already in use; rejecting connection %d", client_id, conn.conn_id
            )
            conn.send_error(-1, 326, p.default_message(326))
            conn.transport.close()
            return False
        conn.ready = True
        self.handshakes += 1
        # One line per connect: the accept and the version were DEBUG.
        logger.info("client %d connected (connection %d from %s, server version %d)",
                    client_id, conn.conn_id, conn.peer, conn.version)
        return True

    # ------------------------------------------------------------ requests log
    def requests_named(self, name: str, client_id: int | None = None) -> list[Request]:
        """Return logged requests with the given name.

        Args:
            name: Readable request name, e.g. ``"reqMktData"``.
            client_id: Only this client's requests (``None`` = any).

        Returns:
            The matching requests, oldest first.
        """
        return [
            r
            for r in self.requests
            if r.name == name and (client_id is None or r.client_id == client_id)
        ]

    async def wait_for_request(
        self, name: str, client_id: int | None = None, timeout: float = 5.0
    ) -> Request:
        """Wait until a request with this name arrives (after the call).

        Args:
            name: Readable request name.
            client_id: Only this client's requests (``None`` = any).
            timeout: Seconds before ``asyncio.TimeoutError``.

        Returns:
            The request.
        """
        fut: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        entry = (name, client_id, fut)
        self._request_waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._request_waiters:
                self._request_waiters.remove(entry)

    def _notify_waiters(self, request: Request) -> None:
        for name, client_id, fut in list(self._request_waiters):
            if name == request.name and client_id in (None, request.client_id) and not fut.done():
                fut.set_result(request)

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.requests.clear()
