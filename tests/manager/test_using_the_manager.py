"""Defects a new user met in the first hour, each over real sockets on both backends."""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

import pytest

from ibkr_connection import (
    AccountError,
    ConnectionState,
    ManagerStoppedError,
    SubscriptionError,
    Transition,
    UsageError,
    adapter,
)
from ibkr_connection.inputs import InputKind
from ibkr_connection.simulator import FakeGateway

from conftest import ACCOUNT, wait_until

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock
#: (``LoopClock``): deadlines, backoffs and held syncs cost no wall clock.
VIRTUAL_TIME = True


async def _closed(ib: Any) -> None:
    """Return once ``ib``'s socket is closed."""
    while adapter.transport_open(ib):
        await asyncio.sleep(0.001)


def _stock(ib: Any, symbol: str) -> Any:
    """``Stock(symbol, "SMART", "USD")`` from the IB object's own library, no conId."""
    module = importlib.import_module(type(ib).__module__.split(".")[0])
    return module.Stock(symbol, "SMART", "USD")


# -- wait_for after stop ---------------------------------------------------------------


async def test_wait_for_after_stop_raises_at_once(make_manager: Any) -> None:
    """wait_for() on a stopped manager raises ManagerStoppedError instead of waiting."""
    manager = make_manager()
    await manager.start()
    await manager.stop()
    with pytest.raises(ManagerStoppedError):
        await manager.wait_for(S.CONNECTED)
    with pytest.raises(ManagerStoppedError):
        await manager.wait_for(S.CONNECTED, timeout=30.0)
    # A state it is in is still answered: the terminal one (disconnected was
    # passed on the way out).
    assert await manager.wait_for(S.STOPPED) is S.STOPPED
    with pytest.raises(ManagerStoppedError):
        await manager.wait_for(S.DISCONNECTED)


async def test_waiter_pending_at_stop_is_woken(make_manager: Any, gw: FakeGateway) -> None:
    """A wait_for() pending when stop() runs raises ManagerStoppedError."""
    manager = make_manager()
    await manager.start()
    waiter = asyncio.ensure_future(manager.wait_for(S.LOST))
    await asyncio.sleep(0)
    await manager.stop()
    with pytest.raises(ManagerStoppedError):
        await waiter


# -- the blocking twins inside a running loop -------------------------------------------


async def test_blocking_connect_inside_a_loop_is_refused(make_manager: Any,
                                                          gw: FakeGateway) -> None:
    """manager.connect() in a coroutine raises UsageError and starts nothing."""
    manager = make_manager()
    with pytest.raises(UsageError, match=r"await manager\.start"):
        manager.connect()
    with pytest.raises(UsageError, match=r"await manager\.stop"):
        manager.disconnect()
    # Had anything started, the machine would have left disconnected at once:
    # a connect is fed to it before any socket is opened.
    assert manager.state is S.DISCONNECTED
    assert manager.transcript == []
    assert gw.requests_named("startApi") == []


# -- an account the login does not manage ---------------------------------------------


async def test_unknown_account_fails_in_one_handshake(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The account error wins over the socket close: connecting -> failed, one handshake."""
    caplog.set_level(logging.INFO)
    manager = make_manager(account="DU0000001")
    with pytest.raises(AccountError, match="not managed"):
        await manager.start()
    # Once the client's socket is gone, its disconnectedEvent has fired: a
    # socket_closed that went in before the fatal error would show below.
    await asyncio.wait_for(_closed(manager.ib), 30)
    # The attempt reports the managed accounts; the table refuses them.
    assert [(t.source, t.dest, t.trigger) for t in manager.transcript] == [
        (S.DISCONNECTED, S.CONNECTING, InputKind.CONNECT),
        (S.CONNECTING, S.FAILED, InputKind.ATTEMPT_SUCCEEDED),
    ]
    assert manager.transcript[-1].cause == ("account DU***001 is not managed by this login "
                                            "(managed: DU***567)")
    assert len(gw.requests_named("startApi")) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and r.name.startswith("ibkr_connection")]
    assert any("not managed" in r.getMessage() for r in errors)


# -- request ids across a drop ---------------------------------------------------------


async def test_request_ids_drawn_just_before_a_drop_are_not_reused(
    make_manager: Any, gw: FakeGateway
) -> None:
    """Ids drawn right before a gateway-side drop are never handed out again."""
    manager = make_manager()
    await manager.start()
    drawn = [manager.ib.client.getReqId() for _ in range(20)]
    gw.set_next_valid_id(100)   # the gateway's next id is below what was drawn
    since = len(manager.transcript)
    await gw.drop_clients()
    await wait_until(lambda: manager.state is S.CONNECTED and len(manager.transcript) > since + 1,
                     what="connected again after the drop")
    after = manager.ib.client.getReqId()
    assert after > max(drawn), (after, drawn)


# -- market data on both backends ------------------------------------------------------


async def test_quick_start_market_data_without_con_id(make_manager: Any,
                                                       gw: FakeGateway) -> None:
    """subscribe_market_data(Stock(...)) with no conId streams on both backends."""
    manager = make_manager()
    await manager.start()
    handle = manager.subscribe_market_data(_stock(manager.ib, "AAPL"))
    await handle.wait_ready(timeout=5.0)
    assert handle.error is None
    assert handle.ticker is not None
    await wait_until(lambda: gw.requests_named("reqMktData"), what="reqMktData sent")
    ticked = asyncio.Event()
    handle.ticker.updateEvent += lambda ticker: ticked.set()
    assert gw.push_tick("AAPL", 151.25) == 1
    await asyncio.wait_for(ticked.wait(), 5.0)
    assert handle.ticker.last == 151.25


async def test_unknown_contract_is_reported_on_the_handle(make_manager: Any,
                                                           gw: FakeGateway) -> None:
    """A subscription that cannot be issued carries the error and fires events."""
    manager = make_manager()
    await manager.start()
    failed: list[tuple[Any, Exception]] = []
    manager.subscriptionFailedEvent += lambda sub, error: failed.append((sub, error))
    contract = _stock(manager.ib, "NOSUCH")
    module = type(manager.ib).__module__.split(".")[0]
    if module == "ib_insync":
        # ib_insync streams unqualified contracts as they are; give it one it
        # cannot even send, to see the same reporting path.
        contract = None
    handle = manager.subscribe_market_data(contract)
    with pytest.raises(SubscriptionError):
        await handle.wait_ready(timeout=5.0)
    assert isinstance(handle.error, SubscriptionError)
    assert failed and failed[0][0] is handle
    assert manager.state is S.CONNECTED


# -- logs --------------------------------------------------------------------------------


async def test_client_attempt_errors_are_not_errors(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """While the manager retries, the client's per-attempt errors and code copies are not ERROR."""
    caplog.set_level(logging.DEBUG)
    manager = make_manager()
    await manager.start()
    await gw.send_error(1100)
    await manager.wait_for(S.LOST)
    await gw.restart(outage=0.3)
    await manager.wait_for(S.BACKOFF)
    await manager.wait_for(S.CONNECTED, timeout=10.0)
    client_errors = [r for r in caplog.records
                     if r.name.startswith(("ib_insync", "ib_async")) and r.levelno >= logging.ERROR]
    assert client_errors == [], [r.getMessage() for r in client_errors]
    demoted = [r for r in caplog.records if r.name.endswith(".managed")
               and r.getMessage().startswith(("API connection failed", "Error 1100"))]
    assert demoted, "the client's lines are kept at a lower level, not dropped"


async def test_a_refused_attempts_client_lines_make_no_record_with_info_off(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """With INFO off, a refused attempt's two client lines are dropped before a record is made."""
    caplog.set_level(logging.WARNING)
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(str(record.msg))
        return record

    manager = make_manager()
    await manager.start()
    logging.setLogRecordFactory(counting)
    try:
        await gw.restart(outage=0.3)
        await manager.wait_for(S.BACKOFF)
        await manager.wait_for(S.CONNECTED, timeout=10.0)
    finally:
        logging.setLogRecordFactory(factory)
    refused = [t for t in manager.transcript if t.dest is S.BACKOFF]
    assert refused, "an attempt was refused during the outage"
    assert not [m for m in made if m.startswith(("API connection failed", "Make sure API port"))]


async def test_quiet_client_logs_off_leaves_the_client_alone(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """quiet_client_logs=False: the client's 1100 line stays at ERROR, under its own logger."""
    caplog.set_level(logging.INFO)
    manager = make_manager(quiet_client_logs=False)
    await manager.start()
    await gw.send_error(1100)
    await manager.wait_for(S.LOST)
    lines = [r for r in caplog.records if r.getMessage().startswith("Error 1100")]
    assert lines and all(r.levelno == logging.ERROR and not r.name.endswith(".managed")
                         for r in lines)


async def test_a_farm_code_is_logged_once_at_info(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The startup 2104 is one line at INFO (the manager's); the client's copy is at DEBUG."""
    caplog.set_level(logging.DEBUG)
    manager = make_manager()
    await manager.start()
    await manager.ib.reqCurrentTimeAsync()  # every startup notice is in by its answer
    lines = [r for r in caplog.records if "2104" in r.getMessage()]
    shown = [(r.name, r.levelname) for r in lines if r.levelno >= logging.INFO]
    assert shown == [("ibkr_connection.driver", "INFO")]
    assert any(r.name.endswith(".managed") and r.levelno == logging.DEBUG for r in lines)


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG], ids=["INFO", "DEBUG"])
async def test_no_raw_account_in_any_line_the_managed_ib_logs(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    """Executions, positions, portfolio and account lines carry DU***567, never DU1234567."""
    caplog.set_level(level)  # the root logger, as logging.basicConfig(level=...) sets it
    earlier = gw.create_order("AAPL", "BUY", 10, client_id=7)
    gw.fill_order(earlier.order_id)  # an execution and a position for the startup sync
    manager = make_manager()
    await manager.start()
    ib = manager.ib
    library = importlib.import_module(type(ib).__module__.split(".")[0])
    contract = _stock(ib, "AAPL")
    await ib.qualifyContractsAsync(contract)
    trade = ib.placeOrder(contract, library.MarketOrder("BUY", 5))  # fills at once
    await asyncio.wait_for(_until(lambda: len(trade.fills) == 1), 30)
    await ib.reqCurrentTimeAsync()  # what the gateway sent before this answer is logged
    client_lines = [r for r in caplog.records if r.name.startswith(("ib_insync", "ib_async"))]
    leaks = [r.getMessage() for r in caplog.records
             if not r.name.startswith("ibkr_connection.simulator")
             and ACCOUNT in r.getMessage()]
    assert leaks == []
    # The client did log its account lines, masked: the check above is not vacuous.
    for start in ("position", "execDetails", "updatePortfolio"):
        assert any(r.getMessage().startswith(start) and "DU***567" in r.getMessage()
                   for r in client_lines), start
    assert all(r.name.endswith(".managed") for r in client_lines)


async def test_mask_accounts_off_shows_the_client_the_raw_account(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """mask_accounts=False: the client's position line names the account as it is."""
    caplog.set_level(logging.INFO)
    earlier = gw.create_order("AAPL", "BUY", 10, client_id=7)
    gw.fill_order(earlier.order_id)
    manager = make_manager(mask_accounts=False)
    await manager.start()
    await manager.ib.reqCurrentTimeAsync()
    assert any(r.getMessage().startswith("position") and ACCOUNT in r.getMessage()
               for r in caplog.records if r.name.endswith(".managed"))


async def test_each_manager_masks_by_its_own_setting(
    make_manager: Any, gw: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Two managers in one process, masking on and off: each IB's lines follow its own."""
    caplog.set_level(logging.INFO)
    earlier = gw.create_order("AAPL", "BUY", 10, client_id=7)
    gw.fill_order(earlier.order_id)
    masked = make_manager(client_id=7)
    await masked.start()
    raw = make_manager(client_id=8, mask_accounts=False)
    await raw.start()
    for manager in (masked, raw):
        await manager.ib.reqCurrentTimeAsync()
    positions = [r.getMessage() for r in caplog.records
                 if r.name.endswith(".managed") and r.getMessage().startswith("position")]
    assert sum("DU***567" in line for line in positions) >= 1
    assert sum(ACCOUNT in line for line in positions) >= 1


async def _until(predicate: Any) -> None:
    """Return once ``predicate()`` holds (the caller bounds the wait)."""
    while not predicate():
        await asyncio.sleep(0.005)


async def test_stop_gives_the_client_its_loggers_back(make_manager: Any) -> None:
    """After stop() the IB object logs under its own loggers again."""
    manager = make_manager()
    await manager.start()
    assert manager.ib.client._logger.name.endswith(".managed")
    await manager.stop()
    for owner in (manager.ib, manager.ib.client, manager.ib.wrapper):
        assert not owner._logger.name.endswith(".managed")


def test_transition_prints_readably() -> None:
    """A Transition prints as a trader reads it, not as enum reprs."""
    t = Transition(S.CONNECTED, S.LOST, InputKind.CONNECTIVITY_LOST, 1.0, "link lost", 1100)
    assert str(t) == "connected -> lost (connectivity_lost, 1100)"
    assert f"{t.source} -> {t.dest}" == "connected -> lost"
    assert str(Transition(S.DISCONNECTED, S.CONNECTING, InputKind.CONNECT, 0.0)) == (
        "disconnected -> connecting (connect)")

