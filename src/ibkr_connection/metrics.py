"""Prometheus metrics and a tiny health endpoint for one connection.

Optional: needs the ``metrics`` extra (``pip install 'ibkr-connection[metrics]'``),
which brings ``prometheus_client``. Nothing else in the package imports this
module, so the core runs without it.

:class:`ConnectionMetrics` turns the machine's
:class:`~ibkr_connection.machine.Transition` records and the heartbeat's round
trips into metrics, kept in a registry of its own so that several managers (or
tests) in one process never collide. :class:`HealthServer` serves them, plus a
``/healthz`` probe, over a minimal HTTP/1.1 server built on
:func:`asyncio.start_server`.

Metrics (``ibkr_connection`` is the default namespace)::

    ibkr_connection_state{state}                      gauge: 1 for the current state
    ibkr_connection_transitions_total{trigger,dest}   counter
    ibkr_connection_reconnect_attempts_total          counter: moves into connecting
    ibkr_connection_recovery_seconds                  histogram
    ibkr_connection_heartbeat_rtt_seconds             histogram
    ibkr_connection_state_seconds_total{state}        counter, current at scrape time
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "ibkr_connection.metrics needs prometheus_client: "
        "install it with pip install 'ibkr-connection[metrics]'"
    ) from exc

from ibkr_connection.errors import ConfigError, UsageError
from ibkr_connection.machine import ConnectionState, Transition

logger = logging.getLogger(__name__)

#: States in which the bot has a usable session (orders and, mostly, data).
USABLE_STATES = frozenset({ConnectionState.CONNECTED, ConnectionState.DEGRADED})

#: Recovery takes from a few milliseconds (a 1300 port reset) to many minutes
#: (IB's nightly reset), so the buckets span 10 ms to 15 min.
RECOVERY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 900.0,
)

#: A heartbeat to a local gateway answers in about a millisecond; a hung one
#: is declared missed after some seconds.
HEARTBEAT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

#: The Prometheus text format version 0.0.4, which ``generate_latest`` writes.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_RESERVED_LABELS = frozenset({"state", "trigger", "dest", "le"})
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class _StateSeconds:
    """Custom collector: seconds spent in each state, current at every scrape."""

    def __init__(self, owner: ConnectionMetrics, name: str, labels: Mapping[str, str]) -> None:
        self._owner = owner
        self._name = name
        self._labels = dict(labels)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            self._name,
            "Seconds spent in each connection state.",
            labels=[*self._labels, "state"],
        )

    def describe(self) -> Iterable[Metric]:
        """Return the metric without samples, so the registry knows its names."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """Return the seconds per state, counting the current state up to now."""
        family = self._family()
        for state, seconds in self._owner.state_seconds().items():
            family.add_metric([*self._labels.values(), state.value], seconds)
        return [family]


class ConnectionMetrics:
    """Prometheus metrics of one connection, in a registry of their own.

    Feed it every :class:`~ibkr_connection.machine.Transition` (for instance
    as a state change listener) and every heartbeat round trip; scrape it with
    :meth:`render` or through :class:`HealthServer`.

    Time spent in each state is measured on ``clock``, read at each transition
    and at each scrape; pass the manager's monotonic clock so that tests on a
    manual clock get exact values. Recovery durations are measured on the
    transitions' own ``at`` readings.

    A recovery is timed from a move out of ``connected``/``degraded`` into any
    other state to the next arrival in ``connected``/``degraded``. A move into
    ``disconnected`` (the user asked for it) is not an outage: it cancels the
    timing.

    Args:
        registry: where to register the metrics; a new private
            :class:`~prometheus_client.CollectorRegistry` when None. Never the
            global registry unless passed explicitly.
        namespace: prefix of every metric name.
        labels: constant labels added to every series (e.g. ``{"gateway": "paper"}``).
        clock: monotonic seconds, used for the time spent in each state.

    Raises:
        ConfigError: a constant label name is invalid or clashes with a label
            the metrics use themselves (``state``, ``trigger``, ``dest``, ``le``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "ibkr_connection",
        labels: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        const = dict(labels or {})
        for name in const:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ConfigError("labels", f"invalid Prometheus label name {name!r}")
            if name in _RESERVED_LABELS:
                raise ConfigError("labels", f"label name {name!r} is used by the metrics")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.namespace = namespace
        self.labels = const
        self._clock = clock
        self._lock = threading.Lock()  # a scrape may come from another thread
        self._state: ConnectionState | None = None
        self._since = 0.0
        self._seconds = dict.fromkeys(ConnectionState, 0.0)
        self._outage_since: float | None = None

        names = list(const)
        self._state_gauge = Gauge(
            "state", "The connection state: 1 for the current state, 0 for the others.",
            [*names, "state"], namespace=namespace, registry=self.registry,
        )
        self._transitions = Counter(
            "transitions", "Changes of connection state, by trigger and destination.",
            [*names, "trigger", "dest"], namespace=namespace, registry=self.registry,
        )
        self._attempts = Counter(
            "reconnect_attempts", "Connection attempts started (moves into connecting).",
            names, namespace=namespace, registry=self.registry,
        )
        self._recovery = Histogram(
            "recovery_seconds",
            "Time from leaving connected/degraded to the next arrival in either.",
            names, namespace=namespace, registry=self.registry, buckets=RECOVERY_BUCKETS,
        )
        self._heartbeat = Histogram(
            "heartbeat_rtt_seconds", "Round-trip time of the heartbeat probe.",
            names, namespace=namespace, registry=self.registry, buckets=HEARTBEAT_BUCKETS,
        )
        prefix = f"{namespace}_" if namespace else ""
        self.registry.register(_StateSeconds(self, f"{prefix}state_seconds", const))

        values = list(const.values())
        for state in ConnectionState:
            self._state_gauge.labels(*values, state.value).set(0)
        if const:
            self._attempts_child = self._attempts.labels(*values)
            self._recovery_child = self._recovery.labels(*values)
            self._heartbeat_child = self._heartbeat.labels(*values)
        else:
            self._attempts_child = self._attempts
            self._recovery_child = self._recovery
            self._heartbeat_child = self._heartbeat

    @property
    def state(self) -> ConnectionState | None:
        """The current state, or None before :meth:`set_state` or a transition."""
        return self._state

    def set_state(self, state: ConnectionState) -> None:
        """Set the current state without a transition (the initial state).

        Time spent in the previous state, if any, is counted up to now.

        Args:
            state: the state the connection is in.
        """
        self._enter(state)

    def observe_transition(self, t: Transition) -> None:
        """Record one change of state.

        Args:
            t: the transition, as the machine recorded it.
        """
        if self._state is not None and t.source is not self._state:
            logger.debug(
                "transition from %s, but metrics thought the state was %s",
                t.source.value, self._state.value,
            )
        self._transitions.labels(*self.labels.values(), t.trigger.value, t.dest.value).inc()
        if t.dest is ConnectionState.CONNECTING:
            self._attempts_child.inc()
        self._time_recovery(t)
        self._enter(t.dest)

    def observe_heartbeat(self, rtt: float) -> None:
        """Record the round-trip time of one answered heartbeat.

        Args:
            rtt: seconds between the probe and its answer; a negative or
                non-finite value is dropped with a warning.
        """
        if not math.isfinite(rtt) or rtt < 0:
            logger.warning("dropping invalid heartbeat round-trip time %r", rtt)
            return
        self._heartbeat_child.observe(rtt)

    def state_seconds(self) -> dict[ConnectionState, float]:
        """Return the seconds spent in each state, the current one counted up to now."""
        with self._lock:
            seconds = dict(self._seconds)
            if self._state is not None:
                seconds[self._state] += max(0.0, self._clock() - self._since)
        return seconds

    def bind(self, manager: Any) -> None:
        """Follow a :class:`~ibkr_connection.manager.ConnectionManager`.

        Sets the current state, then observes every transition and every
        heartbeat round trip the manager reports.
        """
        self.set_state(manager.state)
        manager.stateChangeEvent += self.observe_transition
        manager.heartbeatEvent += self.observe_heartbeat

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)

    def _enter(self, state: ConnectionState) -> None:
        with self._lock:
            now = self._clock()
            if self._state is not None:
                self._seconds[self._state] += max(0.0, now - self._since)
            previous, self._state, self._since = self._state, state, now
        values = list(self.labels.values())
        if previous is not None and previous is not state:
            self._state_gauge.labels(*values, previous.value).set(0)
        self._state_gauge.labels(*values, state.value).set(1)

    def _time_recovery(self, t: Transition) -> None:
        if t.dest is ConnectionState.DISCONNECTED:
            self._outage_since = None
        elif t.source in USABLE_STATES and t.dest not in USABLE_STATES:
            self._outage_since = t.at
        elif t.dest in USABLE_STATES and self._outage_since is not None:
            duration = max(0.0, t.at - self._outage_since)
            self._outage_since = None
            self._recovery_child.observe(duration)
            logger.debug("recovered in %.3fs", duration)


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
    """A minimal HTTP server for ``/metrics`` and ``/healthz``, on asyncio.

    It answers one request per connection and closes it. ``GET`` and ``HEAD``
    are served; other methods get 405, unknown paths 404, requests it cannot
    parse 400. A client that sends nothing for ``read_timeout`` seconds gets
    408. Errors are logged, never raised into the event loop.

    Routes:
        ``GET /metrics``: 200 with :meth:`ConnectionMetrics.render`.
        ``GET /healthz``: 200 ``ok <state>`` while ``state()`` is ``connected``
        (or ``degraded`` too with ``degraded_ok``), else 503 ``unhealthy <state>``.

    Args:
        metrics: the metrics to serve.
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
        metrics: ConnectionMetrics,
        state: Callable[[], ConnectionState],
        *,
        host: str = "127.0.0.1",
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
            return USABLE_STATES
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
        if path == "/metrics":
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
