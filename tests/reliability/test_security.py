"""Security: loopback binding by default, masked account ids in logs, read-only enforced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

from broker_support import round_trip as api_round_trip
from ibkr_connection import (
    Config,
    ConnectionManager,
    ConnectionState,
    IBKRIBInsyncApi,
    OrderRejectedError,
)
from ibkr_connection.health import HealthServer
from ibkr_connection.metrics import ConnectionMetrics
from ibkr_connection.simulator import FakeGateway

from .conftest import ACCOUNT, FAST_POLICY, fast_config, wait_until
from conftest import round_trip

S = ConnectionState
Make = Callable[..., ConnectionManager]


def _bound_host(server: object) -> str:
    """The address the server's listening socket is bound to."""
    sockets = server._server.sockets  # type: ignore[attr-defined]
    return str(sockets[0].getsockname()[0])


async def test_simulator_binds_loopback_by_default() -> None:
    """FakeGateway listens on 127.0.0.1 unless given another host."""
    async with FakeGateway() as gw:
        assert _bound_host(gw) == "127.0.0.1"
        port = await gw.reset_port()
        assert gw.port == port and _bound_host(gw) == "127.0.0.1"


async def test_simulator_binds_elsewhere_only_when_told() -> None:
    """An explicit host is honoured (the default is a choice, not a hard-coded address)."""
    async with FakeGateway(host="0.0.0.0") as gw:
        assert _bound_host(gw) == "0.0.0.0"


async def test_health_server_binds_loopback_by_default() -> None:
    """HealthServer listens on 127.0.0.1 unless given another host."""
    server = HealthServer(ConnectionMetrics(), lambda: S.CONNECTED)
    await server.start()
    try:
        assert _bound_host(server) == "127.0.0.1"
    finally:
        await server.stop()


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every log record of ``ibkr_connection.*``, down to DEBUG."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = caught.append  # type: ignore[method-assign]
    ours = logging.getLogger("ibkr_connection")
    level = ours.level
    ours.setLevel(logging.DEBUG)
    ours.addHandler(handler)
    yield caught
    ours.removeHandler(handler)
    ours.setLevel(level)


def _rendered(records: list[logging.LogRecord]) -> str:
    """Everything a log formatter could print: messages and the structured extras."""
    parts = []
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(getattr(record, "ibkr", "")))
    return "\n".join(parts)


async def _connect_and_fail(manager: ConnectionManager, gw: FakeGateway) -> None:
    """A connect, a drop and a reconnect: the log lines that name the account."""
    await manager.start(timeout=3)
    since = len(manager.transcript)
    await gw.drop_clients()
    await wait_until(lambda: manager.state is S.CONNECTED and len(manager.transcript) > since + 2,
                     what="connected again after the drop")
    await manager.stop()


async def test_account_masked_in_manager_logs(
    gw: FakeGateway, records: list[logging.LogRecord]
) -> None:
    """By default the full account id never appears in ibkr_connection logs; DU***567 does."""
    manager = ConnectionManager(IB(), fast_config(gw.port))
    await _connect_and_fail(manager, gw)
    text = _rendered(records)
    assert "DU***567" in text
    assert ACCOUNT not in text
    assert all(ACCOUNT not in t.cause for t in manager.transcript)


async def test_account_shown_when_masking_is_off(
    gw: FakeGateway, records: list[logging.LogRecord]
) -> None:
    """With mask_accounts=False the full account id is logged (the mask is what hides it)."""
    manager = ConnectionManager(IB(), fast_config(gw.port, mask_accounts=False))
    await _connect_and_fail(manager, gw)
    assert ACCOUNT in _rendered(records)


async def test_configured_unknown_account_masked(
    gw: FakeGateway, records: list[logging.LogRecord]
) -> None:
    """A configured account the login lacks is masked in the error and the logs."""
    manager = ConnectionManager(IB(), fast_config(gw.port, account="U7654321"))
    with pytest.raises(Exception, match=r"U\*\*\*321"):
        await manager.start(timeout=3)
    await manager.stop()
    text = _rendered(records)
    assert "U7654321" not in text and ACCOUNT not in text


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop set as current, for the sync wrapper."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def sync_gw(loop: asyncio.AbstractEventLoop) -> Iterator[FakeGateway]:
    """A simulator served by the sync wrapper's loop."""
    gateway = FakeGateway(accounts=[ACCOUNT], next_order_id=100, prices={"AAPL": 150.0})
    loop.run_until_complete(gateway.start())
    yield gateway
    loop.run_until_complete(gateway.stop())


def test_account_masked_in_sync_wrapper_logs(
    sync_gw: FakeGateway, records: list[logging.LogRecord]
) -> None:
    """The sync wrapper's log lines never carry the full account id either."""
    api = IBKRIBInsyncApi(Config(IBKR_PORT=sync_gw.port, IBKR_CLIENT_ID=3), IB(),
                          connect_timeout=1.0, policy=FAST_POLICY)
    try:
        assert api.connect() is True
    finally:
        api.disconnect()
    assert ACCOUNT not in _rendered(records)


def test_read_only_refuses_orders_and_sends_none(sync_gw: FakeGateway) -> None:
    """IBKR_READONLY=True: place_order and cancel_order raise; the gateway sees no placeOrder."""
    api = IBKRIBInsyncApi(Config(IBKR_PORT=sync_gw.port, IBKR_CLIENT_ID=4, IBKR_READONLY=True),
                          IB(), connect_timeout=1.0, policy=FAST_POLICY)
    try:
        assert api.connect() is True
        assert api.state is S.CONNECTED
        contract = Stock("AAPL", "SMART", "USD")
        for order in (MarketOrder("BUY", 1), LimitOrder("SELL", 5, 151.0)):
            with pytest.raises(OrderRejectedError, match="read-only"):
                api.place_order(contract, order)
        with pytest.raises(OrderRejectedError, match="read-only"):
            api.cancel_order(100)
        api_round_trip(api)
        assert sync_gw.requests_named("placeOrder") == []
        assert sync_gw.requests_named("cancelOrder") == []
        assert sync_gw.orders == {} and api.orders == {}
    finally:
        api.disconnect()


async def test_read_only_manager_refuses_orders_on_the_client(
    gw: FakeGateway, make_manager: Make
) -> None:
    """readonly=True: the manager's IB raises on every order method; nothing reaches the gateway.

    ib_insync's own ``readonly`` only skips the order sync, so a bot using
    ``manager.ib`` directly would otherwise still send orders.
    """
    manager = make_manager(readonly=True, client_id=31)
    await manager.start(timeout=5)
    ib = manager.ib
    order = LimitOrder("BUY", 1, 150.0)
    with pytest.raises(OrderRejectedError, match=r"IB\.placeOrder refused: .*read-only"):
        ib.placeOrder(Stock("AAPL", "SMART", "USD"), order)
    with pytest.raises(OrderRejectedError, match=r"IB\.cancelOrder refused"):
        ib.cancelOrder(order)
    with pytest.raises(OrderRejectedError, match=r"IB\.reqGlobalCancel refused"):
        ib.reqGlobalCancel()
    await round_trip(ib)  # anything sent before has reached the gateway
    for name in ("placeOrder", "cancelOrder", "reqGlobalCancel"):
        assert gw.requests_named(name) == [], name
    assert ib.trades() == []
    await manager.stop()
    # Stopped: the IB object is the caller's again, with its own methods.
    assert ib.placeOrder.__func__ is IB.placeOrder  # type: ignore[attr-defined]


async def test_trading_manager_leaves_order_methods_alone(make_manager: Make) -> None:
    """readonly=False (the default) shadows nothing on the IB object."""
    manager = make_manager(client_id=32)
    await manager.start(timeout=5)
    assert not {"placeOrder", "cancelOrder", "reqGlobalCancel", "exerciseOptions"} & set(
        vars(manager.ib))


def _refused(ib: IB) -> bool:
    """True if the library refuses ``reqGlobalCancel`` (not connected is not refused)."""
    try:
        ib.reqGlobalCancel()
    except OrderRejectedError:
        return True
    except ConnectionError:
        return False
    return False


async def test_read_only_guard_lasts_until_the_last_read_only_manager_stops() -> None:
    """Two read-only managers on one IB: the first stop() leaves the guard for the second.

    The last stop() puts back what the IB had before, an application's own
    wrapper included. (Nothing connects here: the guard is set at construction.)
    """
    ib = IB()

    def own_wrapper(*args: object) -> str:
        return "the application's wrapper"

    ib.reqGlobalCancel = own_wrapper  # type: ignore[method-assign]
    first = ConnectionManager(ib, fast_config(1, client_id=1, readonly=True))
    second = ConnectionManager(ib, fast_config(1, client_id=2, readonly=True))
    assert _refused(ib)
    await first.stop()
    await first.stop()  # idempotent: counts once
    assert _refused(ib)
    await second.stop()
    assert ib.reqGlobalCancel() == "the application's wrapper"
    assert ib.placeOrder.__func__ is IB.placeOrder  # type: ignore[attr-defined]


async def test_cancelled_stop_still_lifts_the_guard(gw: FakeGateway, make_manager: Make) -> None:
    """stop() cancelled while the socket closes: the clean-up has happened anyway."""
    manager = make_manager(readonly=True, client_id=33)
    await manager.start(timeout=5)
    errors_before = len(manager.ib.errorEvent)
    stopping = asyncio.ensure_future(manager.stop())
    await asyncio.sleep(0)  # stop() is now waiting for the transport to close
    assert not stopping.done()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert manager.stopped
    assert not _refused(manager.ib)
    assert len(manager.ib.errorEvent) == errors_before - 1
