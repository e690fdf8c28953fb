"""The ``/healthz`` and ``/metrics`` endpoint of one connection, on asyncio.

:class:`HealthServer` is a minimal HTTP/1.1 server built on
:func:`asyncio.start_server`, meant to run inside the bot's own process: the
operator's health check then asks the bot, which knows its connection's state,
instead of opening a second API session to the gateway.

It needs nothing beyond the standard library. ``/metrics`` is served from any
object with a ``render() -> bytes`` method, normally a
:class:`~ibkr_connection.metrics.ConnectionMetrics` (which needs the
``metrics`` extra, ``prometheus_client``); without one, only ``/healthz`` is
served and ``/metrics`` is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

from ibkr_connection.errors import UsageError
from ibkr_connection.table import USABLE_STATES, ConnectionState

logger = logging.getLogger(__name__)

#: The default bind address: loopback, so nothing is exposed beyond the
#: machine unless asked for (in a container, 0.0.0.0).
DEFAULT_HOST = "127.0.0.1"

#: The Prometheus text format version 0.0.4, which ``generate_latest`` writes.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsSource(Protocol):
    """What ``/metrics`` is served from: a :class:`~ibkr_connection.metrics.ConnectionMetrics`."""

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format (version 0.0.4)."""
        ...


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
_METHOD = re.compile(r"^[A-Z]+$")
_VERSION = re.compile(r"^HTTP/1\.[0-9]$")


class _BadRequest(Exception):
    """The request could not be parsed."""


class HealthServer:
    """A minimal HTTP server for ``/healthz`` and ``/metrics``, on asyncio.

    It answers one request per connection and closes it. ``GET`` and ``HEAD``
    are served; other methods get 405, unknown paths 404, requests it cannot
    parse 400. A client that sends nothing for ``read_timeout`` seconds gets
    408. Errors are logged, never raised into the event loop.

    Routes:
        ``GET /metrics``: 200 with ``metrics.render()``; 404 when ``metrics``
        is None.
        ``GET /healthz``: 200 ``ok <state>`` while ``state()`` is ``connected``
        (or ``degraded`` too with ``degraded_ok``), else 503 ``unhealthy <state>``.

    Args:
        metrics: the metrics to serve (e.g. a
            :class:`~ibkr_connection.metrics.ConnectionMetrics`); None serves
            ``/healthz`` only.
        state: returns the connection's current state.
        host: the address to bind; loopback by default, so nothing is exposed
            beyond the machine unless asked for.
        port: the port to bind; 0 picks a free one (see :attr:`port`).
        degraded_ok: whether ``/healthz`` reports ``degraded`` as healthy.
        read_timeout: seconds a client has to send its request head.
        max_request_bytes: the longest request line or header line accepted.
    """

    def __init__(
        self,
        metrics: MetricsSource | None,
        state: Callable[[], ConnectionState],
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        degraded_ok: bool = False,
        read_timeout: float = 5.0,
        max_request_bytes: int = 8192,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.degraded_ok = degraded_ok
        self.read_timeout = read_timeout
        self.max_request_bytes = max_request_bytes
        self._state = state
        self._requested_port = port
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            UsageError: the server is not started.
        """
        if self._port is None:
            raise UsageError("the health server is not started")
        return self._port

    @property
    def healthy_states(self) -> frozenset[ConnectionState]:
        """The states in which ``/healthz`` answers 200."""
        if self.degraded_ok:
            return frozenset(USABLE_STATES)
        return frozenset({ConnectionState.CONNECTED})

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            UsageError: the server is already started.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise UsageError("the health server is already started")
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, limit=self.max_request_bytes,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        logger.info("health server listening on http://%s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Stop listening and drop connections still being served. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
        logger.info("health server on port %s stopped", self._port)
        self._port = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.debug("health client went away: %r", exc)
        except Exception:
            logger.exception("health server failed to answer a request")
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path = await asyncio.wait_for(self._read_head(reader), self.read_timeout)
        except asyncio.TimeoutError:
            await self._send(writer, 408, b"request timeout\n", head_only=False)
            return
        except _BadRequest as exc:
            logger.debug("health server: bad request: %s", exc)
            await self._send(writer, 400, b"bad request\n", head_only=False)
            return
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"method not allowed\n", head_only=False,
                             extra={"Allow": "GET, HEAD"})
            return
        try:
            status, body, content_type = self._route(path)
        except Exception:
            logger.exception("health server failed to build the response for %s", path)
            status, body, content_type = 500, b"internal error\n", _TEXT
        logger.debug("health server: %s %s -> %d", method, path, status)
        await self._send(writer, status, body, head_only=head_only, content_type=content_type)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Read the request line and skip the headers; return (method, path)."""
        line = await self._read_line(reader, first=True)
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError as exc:
            raise _BadRequest("request line is not ASCII") from exc
        parts = text.split(" ")
        if len(parts) != 3:
            raise _BadRequest(f"malformed request line {text!r}")
        method, target, version = parts
        if not _METHOD.match(method) or not _VERSION.match(version):
            raise _BadRequest(f"malformed request line {text!r}")
        if target.startswith("/"):
            path = urlsplit(target).path
        elif target.startswith(("http://", "https://")):
            path = urlsplit(target).path or "/"
        else:
            raise _BadRequest(f"malformed request target {target!r}")
        # Read the headers to the end: closing with unread input makes the
        # kernel reset the connection, and the client may lose the response.
        for _ in range(100):
            if not await self._read_line(reader, first=False):
                return method, path
        raise _BadRequest("too many header lines")

    async def _read_line(self, reader: asyncio.StreamReader, *, first: bool) -> bytes:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest("line too long") from exc
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise  # connected and closed without a word: nothing to answer
            raise _BadRequest("connection closed inside the request head") from exc
        return line.rstrip(b"\r\n")

    def _route(self, path: str) -> tuple[int, bytes, str]:
        if path == "/metrics" and self.metrics is not None:
            return 200, self.metrics.render(), METRICS_CONTENT_TYPE
        if path == "/healthz":
            state = ConnectionState(self._state())
            if state in self.healthy_states:
                return 200, f"ok {state.value}\n".encode(), _TEXT
            return 503, f"unhealthy {state.value}\n".encode(), _TEXT
        return 404, b"not found\n", _TEXT

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        head_only: bool,
        content_type: str = _TEXT,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            "Connection": "close",
            **(extra or {}),
        }
        lines: Iterator[str] = (f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n{''.join(lines)}\r\n"
        writer.write(head.encode("ascii") + (b"" if head_only else body))
        await writer.drain()
