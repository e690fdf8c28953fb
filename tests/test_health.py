"""Tests of the health server (``/healthz`` and ``/metrics``), over real loopback sockets."""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

import ibkr_connection.health
from ibkr_connection.errors import UsageError
from ibkr_connection.health import HealthServer
from ibkr_connection.metrics import ConnectionMetrics
from ibkr_connection.table import ConnectionState

S = ConnectionState


class FakeClock:
    """A monotonic clock that stands still."""

    def __call__(self) -> float:
        return 100.0


async def request(port: int, raw: bytes, host: str = "127.0.0.1") -> tuple[str, dict[str, str],
                                                                          bytes]:
    """Send raw bytes, read to EOF; return (status line, headers, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("ascii").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def get(path: str) -> bytes:
    """A raw HTTP/1.1 GET."""
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


class StateBox:
    """A mutable connection state behind a callable."""

    def __init__(self, state: S) -> None:
        self.state = state

    def __call__(self) -> S:
        return self.state


async def test_metrics_endpoint_serves_render() -> None:
    """GET /metrics answers 200 with the exposition in text format 0.0.4."""
    m = ConnectionMetrics(clock=FakeClock())
    m.set_state(S.CONNECTED)
    async with HealthServer(m, lambda: S.CONNECTED) as server:
        status, headers, body = await request(server.port, get("/metrics"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "ibkr_connection_state" in families
    assert b'ibkr_connection_state{state="connected"} 1.0' in body


@pytest.mark.parametrize(
    ("state", "degraded_ok", "status", "body"),
    [
        (S.CONNECTED, False, "HTTP/1.1 200 OK", b"ok connected\n"),
        (S.DEGRADED, False, "HTTP/1.1 503 Service Unavailable", b"unhealthy degraded\n"),
        (S.DEGRADED, True, "HTTP/1.1 200 OK", b"ok degraded\n"),
        (S.CONNECTED, True, "HTTP/1.1 200 OK", b"ok connected\n"),
        (S.LOST, False, "HTTP/1.1 503 Service Unavailable", b"unhealthy lost\n"),
        (S.LOST, True, "HTTP/1.1 503 Service Unavailable", b"unhealthy lost\n"),
        (S.BACKOFF, True, "HTTP/1.1 503 Service Unavailable", b"unhealthy backoff\n"),
        (S.CONNECTING, False, "HTTP/1.1 503 Service Unavailable", b"unhealthy connecting\n"),
        (S.DISCONNECTED, False, "HTTP/1.1 503 Service Unavailable", b"unhealthy disconnected\n"),
        (S.FAILED, True, "HTTP/1.1 503 Service Unavailable", b"unhealthy failed\n"),
    ],
)
async def test_healthz(state: S, degraded_ok: bool, status: str, body: bytes) -> None:
    """GET /healthz is 200 only in a healthy state."""
    async with HealthServer(ConnectionMetrics(), lambda: state, degraded_ok=degraded_ok) as server:
        got_status, headers, got_body = await request(server.port, get("/healthz"))
    assert (got_status, got_body) == (status, body)
    assert headers["content-type"] == "text/plain; charset=utf-8"


async def test_healthz_follows_the_state_as_it_changes() -> None:
    """The probe reads the state at each request."""
    box = StateBox(S.CONNECTED)
    async with HealthServer(ConnectionMetrics(), box) as server:
        first, _, _ = await request(server.port, get("/healthz"))
        box.state = S.BACKOFF
        second, _, _ = await request(server.port, get("/healthz?verbose=1"))
    assert (first, second) == ("HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable")


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/", "/favicon.ico"])
async def test_unknown_path_is_404(path: str) -> None:
    """Paths other than /metrics and /healthz are 404."""
    async with HealthServer(ConnectionMetrics(), lambda: S.CONNECTED) as server:
        status, _, body = await request(server.port, get(path))
    assert (status, body) == ("HTTP/1.1 404 Not Found", b"not found\n")


async def test_head_sends_headers_only() -> None:
    """HEAD answers like GET without the body."""
    async with HealthServer(ConnectionMetrics(), lambda: S.CONNECTED) as server:
        status, headers, body = await request(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert (status, body) == ("HTTP/1.1 200 OK", b"")
    assert headers["content-length"] == str(len(b"ok connected\n"))


async def test_other_methods_are_405() -> None:
    """A well-formed request with another method is refused with 405."""
    async with HealthServer(ConnectionMetrics(), lambda: S.CONNECTED) as server:
        status, headers, _ = await request(
            server.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/1.1 extra\r\n\r\n",
        b"get /healthz HTTP/1.1\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz SPDY/3\r\n\r\n",
        b"GET /h\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    ],
)
async def test_malformed_request_is_400_and_the_server_survives(raw: bytes) -> None:
    """Garbage gets 400 and the next request is served normally."""
    async with HealthServer(ConnectionMetrics(), lambda: S.CONNECTED) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        if not raw.endswith(b"\r\n\r\n"):
            writer.write_eof()
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        await writer.wait_closed()
        after, _, _ = await request(server.port, get("/healthz"))
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert after == "HTTP/1.1 200 OK"


async def test_silent_or_slow_clients_do_not_block_the_server() -> None:
    """A client that closes at once or never speaks does not stop others."""
    async with HealthServer(ConnectionMetrics(), lambda: S.CONNECTED,
                            read_timeout=0.2) as server:
        _, quiet = await asyncio.open_connection("127.0.0.1", server.port)
        quiet.close()
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", server.port)
        slow.write(b"GET /hea")
        status, _, _ = await request(server.port, get("/healthz"))
        timed_out = await asyncio.wait_for(slow_reader.read(), 5.0)
        slow.close()
        await slow.wait_closed()
    assert status == "HTTP/1.1 200 OK"
    assert timed_out.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_a_failing_state_callable_is_500() -> None:
    """An exception while building the response is a 500, not a dead server."""

    def broken() -> S:
        raise RuntimeError("boom")

    async with HealthServer(ConnectionMetrics(), broken) as server:
        status, _, _ = await request(server.port, get("/healthz"))
        metrics_status, _, _ = await request(server.port, get("/metrics"))
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert metrics_status == "HTTP/1.1 200 OK"


async def test_binds_loopback_by_default() -> None:
    """The default bind address is 127.0.0.1 and port 0 picks a free port."""
    server = HealthServer(ConnectionMetrics(), lambda: S.CONNECTED)
    assert server.host == "127.0.0.1"
    await server.start()
    try:
        assert server.port > 0
        bound = server._server.sockets if server._server else []
        assert [s.getsockname()[0] for s in bound] == ["127.0.0.1"]
        assert all(s.family == socket.AF_INET for s in bound)
    finally:
        await server.stop()


async def test_port_before_start_and_double_start_are_usage_errors() -> None:
    """Reading the port of a stopped server or starting twice is misuse."""
    server = HealthServer(ConnectionMetrics(), lambda: S.CONNECTED)
    with pytest.raises(UsageError):
        _ = server.port
    async with server:
        with pytest.raises(UsageError):
            await server.start()
    with pytest.raises(UsageError):
        _ = server.port
    await server.stop()


async def test_stop_closes_the_listening_socket() -> None:
    """After stop() the port refuses connections."""
    async with HealthServer(ConnectionMetrics(), lambda: S.CONNECTED) as server:
        port = server.port
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_old_import_path_still_works() -> None:
    """The health server and its constants are still importable from ibkr_connection.metrics."""
    from ibkr_connection import metrics

    assert metrics.HealthServer is HealthServer
    assert sorted(metrics.USABLE_STATES) == [S.CONNECTED, S.DEGRADED]


async def test_healthz_needs_no_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus_client, the health module imports and serves /healthz; /metrics is 404."""
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "ibkr_connection.health")
    # The import rebinds the package attribute too; put the original back afterwards.
    monkeypatch.setattr(ibkr_connection, "health", ibkr_connection.health)
    fresh = importlib.import_module("ibkr_connection.health")
    async with fresh.HealthServer(None, lambda: S.CONNECTED) as server:
        health, _, body = await request(server.port, get("/healthz"))
        metrics, _, _ = await request(server.port, get("/metrics"))
    assert (health, body) == ("HTTP/1.1 200 OK", b"ok connected\n")
    assert metrics == "HTTP/1.1 404 Not Found"
