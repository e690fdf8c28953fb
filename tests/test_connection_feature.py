"""Step definitions for features/connection.feature, against the gateway simulator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from unittest.mock import MagicMock

import pytest
from pytest_bdd import given, scenarios, then, when

import broker_support
from broker_support import Context, pump_until, run
from ibkr_connection import Config, ConnectionState, IBKRIBInsyncApi
from ibkr_connection.simulator import FakeGateway

# The shared fixtures, taken into this module so pytest finds them.
ctx = broker_support.ctx
gw = broker_support.gw
loop = broker_support.loop

scenarios("connection.feature")


@pytest.fixture
def mock_config(gw: FakeGateway) -> MagicMock:
    """The seed's config object: a MagicMock carrying only host, port and client id."""
    config = MagicMock(spec=Config)
    config.IBKR_HOST = "127.0.0.1"
    config.IBKR_PORT = gw.port
    config.IBKR_CLIENT_ID = 1
    return config


@pytest.fixture
def api(mock_config: MagicMock, loop: asyncio.AbstractEventLoop) -> Iterator[IBKRIBInsyncApi]:
    """The wrapper under test, built from the seed's config object."""
    made = IBKRIBInsyncApi(mock_config, connect_timeout=2.0)
    yield made
    made.disconnect()


@given("the IBKR TWS/Gateway is running")
def _gateway_running(gw: FakeGateway) -> None:
    """The simulator listens on its port."""
    assert gw.listening


@given("I have valid connection parameters")
def _valid_parameters(api: IBKRIBInsyncApi, gw: FakeGateway) -> None:
    """The wrapper points at the simulator."""
    assert (api.host, api.port, api.client_id) == ("127.0.0.1", gw.port, 1)


@given("the IBKR TWS/Gateway is not running")
def _gateway_not_running(gw: FakeGateway, loop: asyncio.AbstractEventLoop) -> None:
    """The simulator stops listening: connects are refused."""
    run(loop, gw.stop_listening())


@given("I am connected to IBKR")
def _connected(api: IBKRIBInsyncApi) -> None:
    """A connect succeeds."""
    assert api.connect() is True


@when("I connect to IBKR")
def _connect(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """Connect once."""
    ctx.result = api.connect()


@when("I attempt to connect to IBKR")
def _attempt(api: IBKRIBInsyncApi, ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    """Connect once."""
    caplog.set_level(logging.INFO)
    ctx.result = api.connect()


@when("I disconnect from IBKR")
def _disconnect(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """Disconnect, recording any exception."""
    try:
        api.disconnect()
    except Exception as exc:  # the scenario checks none escapes
        ctx.error = exc


@then("the connection should be established")
def _established(api: IBKRIBInsyncApi, ctx: Context) -> None:
    """connect() said True and the machine is connected."""
    assert ctx.result is True
    assert api.connected is True and api.state is ConnectionState.CONNECTED


@then("account information should be available")
def _account(api: IBKRIBInsyncApi) -> None:
    """The account was learnt from the gateway and order ids are known."""
    assert api.account_id == "DU1234567"
    assert api.next_order_id >= 100


@then("the connection should fail")
def _failed(api: IBKRIBInsyncApi, ctx: Context, gw: FakeGateway) -> None:
    """connect() said False after the seed's 3 refused attempts: the machine gave up.

    The give-up is the table's: connect()'s input carries the budget of 3
    attempts, and the third refused attempt takes connecting -> failed (no
    attempts left). A refused connect is cheap: each attempt failed as refused
    (no connect timeout waited) and the retries were scheduled on the cheap
    schedule (50, 100 ms, shortened by up to 10 % jitter), not the costly one
    (1 s, 2 s). benchmarks/recovery.py times refused connects.
    """
    assert ctx.result is False and api.connected is False
    assert api.state is ConnectionState.FAILED
    assert gw.accepted_connections == 0
    assert [(t.source.value, t.dest.value, t.attempt, t.cause.split(":")[0])
            for t in api.manager.transcript] == [
        ("disconnected", "connecting", 1, "connect() called"),
        ("connecting", "backoff", 1, "connection refused"),
        ("backoff", "connecting", 2, "the backoff delay is over"),
        ("connecting", "backoff", 2, "connection refused"),
        ("backoff", "connecting", 3, "the backoff delay is over"),
        ("connecting", "failed", 3, "connection refused"),
    ]
    failures = [t for t in api.manager.transcript if t.dest is ConnectionState.BACKOFF]
    for failure, cheap in zip(failures, (0.05, 0.1), strict=True):
        assert failure.delay is not None and 0.9 * cheap <= failure.delay <= cheap


@then("an appropriate error message should be logged")
def _error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An ERROR record says "Failed to connect to IBKR"."""
    assert any(
        "Failed to connect to IBKR" in r.getMessage() and r.levelno == logging.ERROR
        for r in caplog.records
    )


@then("the connection should be terminated")
def _terminated(api: IBKRIBInsyncApi) -> None:
    """The wrapper reports no connection."""
    assert api.connected is False


@then("the system should handle the disconnection gracefully")
def _graceful(api: IBKRIBInsyncApi, ctx: Context, gw: FakeGateway) -> None:
    """No exception, state disconnected, no reconnect, and the gateway saw the client leave."""
    assert ctx.error is None
    assert pump_until(api, lambda: not gw.connections, timeout=2.0)
    # "No reconnect later" is a decision: disconnected ignores every timer
    # (tests/test_machine_table.py::test_outcome, its disconnected row).
    assert api.state is ConnectionState.DISCONNECTED
    assert gw.clients == [] and gw.handshakes == 1
