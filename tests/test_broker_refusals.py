"""First-hour defects of the sync wrapper, against the simulator over real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator

import ib_async
import pytest
from ib_insync import IB, MarketOrder

import broker_support
from broker_support import pump_until, round_trip, run
from ibkr_connection import (
    BackoffPolicy,
    Config,
    IBKRIBInsyncApi,
    RecoveryPolicy,
    UsageError,
)
from ibkr_connection.clock import LoopClock
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.month import VirtualTimeLoop

loop = broker_support.loop
gw = broker_support.gw
make_api = broker_support.make_api


def test_a_contract_of_the_other_backend_is_refused_before_sending(make_api, gw) -> None:  # type: ignore[no-untyped-def]
    """An ib_async Stock on the ib_insync IB raises UsageError and sends nothing."""
    api = make_api()
    assert api.connect()
    with pytest.raises(UsageError, match="ib_async"):
        api.place_order(ib_async.Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 1))
    round_trip(api)
    assert gw.requests_named("placeOrder") == []
    assert api.orders == {}


def test_unknown_account_is_not_a_dead_gateway(gw, loop, caplog) -> None:  # type: ignore[no-untyped-def]
    """connect() with an account the login lacks: one handshake, failed, no "Retrying"."""
    caplog.set_level(logging.INFO)
    api = IBKRIBInsyncApi(Config(IBKR_PORT=gw.port, IBKR_CLIENT_ID=4, IBKR_ACCOUNT="DU0000001"),
                          IB(), connect_timeout=2.0)
    try:
        assert api.connect() is False
        assert [str(t) for t in api.manager.transcript] == [
            "disconnected -> connecting (connect)",
            "connecting -> failed (attempt_succeeded)"]
        assert len(gw.requests_named("startApi")) == 1
        messages = [r.getMessage() for r in caplog.records]
        assert not any("Retrying" in m for m in messages)
        assert any(r.levelno == logging.ERROR and "not managed" in r.getMessage()
                   for r in caplog.records)
    finally:
        api.disconnect()


@pytest.fixture
def virtual_loop() -> Iterator[VirtualTimeLoop]:
    """A loop on virtual time (its clock jumps to the next timer when no socket is ready),
    set as the current one: the heartbeat, the handshake deadlines, the restart's outage
    and the backoffs cost no wall clock."""
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def test_config_from_env_with_ibc_port_restarts_a_wedged_gateway(virtual_loop, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """IBKRIBInsyncApi(Config.from_env(), IB()) with IBKR_IBC_PORT: one RESTART through IBC."""
    loop = virtual_loop
    gateway = FakeGateway(accounts=[broker_support.ACCOUNT], ibc_port=0, ibc_restart_outage=0.3,
                          clock=LoopClock(loop=loop))
    run(loop, gateway.start())
    assert gateway.ibc is not None
    for name in [n for n in os.environ if n.startswith("IBKR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IBKR_PORT", str(gateway.port))
    monkeypatch.setenv("IBKR_CLIENT_ID", "5")
    monkeypatch.setenv("IBKR_IBC_PORT", str(gateway.ibc.port))
    monkeypatch.setenv("IBKR_HANDSHAKE_TIMEOUT", "0.3")
    monkeypatch.setenv("IBKR_CONNECT_TIMEOUT", "2")
    # Quick retries and a short restart wait; the restart rule itself is the default one.
    policy = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2),
                            restart_wait=5.0, restart_cooldown=60.0)
    api = IBKRIBInsyncApi(Config.from_env(), IB(), policy=policy, clock=LoopClock(loop=loop))
    try:
        assert api.connect()  # a session first: only a gateway that had one is restarted
        gateway.wedge()
        run(loop, gateway.drop_clients())
        assert pump_until(api, lambda: gateway.ibc.restarts == 1, timeout=30), (
            [str(t) for t in api.manager.transcript])
        assert pump_until(api, lambda: api.connected, timeout=30)
        assert gateway.ibc.commands == ["RESTART"]
        assert [t.dest.value for t in api.manager.transcript].count("restarting") == 1
    finally:
        api.disconnect()
        gateway.unstall()
        run(loop, gateway.stop())
