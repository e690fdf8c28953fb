"""ConnectionManager against the gateway simulator, over real loopback sockets."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import pytest

from ibkr_connection import (
    AccountError,
    BackoffPolicy,
    ConnectFailedError,
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    ManagerStoppedError,
    RecoveryPolicy,
    Transition,
)
from ibkr_connection.clock import LoopClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.journal import replay_journal
from ibkr_connection.simulator import FakeGateway

from .conftest import ACCOUNT, FAST
from conftest import round_trip

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock
#: (``LoopClock``): deadlines, backoffs and held syncs cost no wall clock.
VIRTUAL_TIME = True


def _manager(*args: Any, **kwargs: Any) -> ConnectionManager:
    """A ConnectionManager on the loop's (virtual) clock."""
    return ConnectionManager(*args, clock=LoopClock(), **kwargs)
Make = Callable[..., ConnectionManager]


def _contract(ib: Any, gw: FakeGateway) -> Any:
    """AAPL as the IB object's own library spells it (ib_async needs a conId)."""
    module = __import__(type(ib).__module__.split(".")[0])
    contract = module.Stock("AAPL", "SMART", "USD")
    contract.conId = gw.instruments["AAPL"].con_id
    return contract


async def _reconnected(manager: ConnectionManager, since: int, guard: float = 30.0) -> list[str]:
    """Wait until the manager left ``connected`` after transition ``since`` and came back."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard  # a hang guard, not the assertion: generous
    while loop.time() < deadline:
        later = [t.dest.value for t in manager.transcript[since:]]
        if "backoff" in later and manager.state is S.CONNECTED:
            return later
        await asyncio.sleep(0.001)
    raise TimeoutError(f"no reconnect; transcript since: {later}")


async def _until(predicate: Callable[[], object], what: str, guard: float = 30.0) -> None:
    """Poll the loop until ``predicate()`` holds; raise if ``what`` never happens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard  # a hang guard, not the assertion: generous
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"hang guard: {what} did not happen within {guard} s")
        await asyncio.sleep(0.001)


def _codes_seen(manager: ConnectionManager) -> list[int]:
    """Record the IB codes the manager's IB object reports, from now on.

    Registered after the manager's own handler, which feeds the machine
    synchronously: once a code is recorded here the manager has acted on it.
    """
    seen: list[int] = []
    manager.ib.errorEvent += lambda req_id, code, msg, contract=None: seen.append(code)
    return seen


def _path(manager: ConnectionManager) -> list[str]:
    return [t.dest.value for t in manager.transcript]


async def test_start_connects_and_selects_account(make_manager: Make) -> None:
    """start() returns once connected, with the only managed account selected."""
    manager = make_manager()
    seen: list[Transition] = []
    manager.stateChangeEvent += seen.append
    await manager.start()
    assert manager.state is S.CONNECTED
    assert manager.account == ACCOUNT
    assert _path(manager) == ["connecting", "connected"]
    assert [t.dest for t in seen] == [S.CONNECTING, S.CONNECTED]
    assert manager.ib.isConnected()


async def test_drop_backs_off_and_reconnects_with_subscriptions(
    make_manager: Make, gw: FakeGateway
) -> None:
    """A dropped socket goes through backoff, reconnects, and re-requests market data."""
    manager = make_manager()
    await manager.start()
    handle = manager.subscribe_market_data(_contract(manager.ib, gw))
    restored: list[Any] = []
    manager.subscriptionRestoredEvent += restored.append
    await gw.wait_for_request("reqMktData")
    since = len(manager.transcript)
    asked_again = asyncio.ensure_future(gw.wait_for_request("reqMktData", timeout=30))
    await asyncio.sleep(0)  # one loop turn: the waiter is registered
    await gw.drop_clients()
    await _reconnected(manager, since)
    assert _path(manager)[-3:] == ["backoff", "connecting", "connected"]
    assert restored == [handle] and handle.restored == 1
    await asked_again
    assert len(gw.requests_named("reqMktData")) == 2
    assert handle.ticker is not None


async def test_refused_gives_up_after_max_attempts() -> None:
    """With nothing listening and max_attempts=3, start() gives up after three refused connects.

    Refused connects are cheap: the machine waits the cheap schedule between
    them (50 ms, 100 ms), not the costly one (1 s, 2 s), and no attempt waits
    for its connect timeout. benchmarks/recovery.py times the refused connects.
    """
    async with FakeGateway() as gw:
        port = gw.port
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=3, jitter=0.0))
    manager = _manager(__import__("ib_insync").IB(),
                                ConnectionConfig(port=port, policy=policy))
    with pytest.raises(ConnectFailedError, match="after 3 attempt"):
        await manager.start(timeout=30)  # a hang guard: TimeoutError is not ConnectFailedError
    assert manager.state is S.FAILED
    failures = [t for t in manager.transcript if t.trigger is InputKind.ATTEMPT_FAILED]
    assert [t.cause.split(":")[0] for t in failures] == ["connection refused"] * 3
    assert [t.delay for t in manager.transcript if t.dest is S.BACKOFF] == [0.05, 0.1]
    await manager.stop()


async def test_incomplete_sync_is_not_connected(make_manager: Make, gw: FakeGateway) -> None:
    """A startup sync that never finishes is a failed attempt, never 'connected'."""
    gw.hold_sync("reqPositions")
    manager = make_manager(connect_timeout=0.3)
    starting = asyncio.ensure_future(manager.start())
    await manager.wait_for(S.BACKOFF, timeout=30)  # the first attempt is over; a hang guard
    assert not starting.done()
    assert S.CONNECTED not in [t.dest for t in manager.transcript]
    failures = [t for t in manager.transcript if t.trigger.value == "attempt_failed"]
    assert failures and "sync" in failures[0].cause + failures[0].cause.lower()
    gw.release_sync()
    await asyncio.wait_for(starting, 30)
    assert manager.state is S.CONNECTED


async def test_incomplete_sync_caught_after_a_cancelled_attempt(
    make_manager: Make, gw: FakeGateway
) -> None:
    """Disconnect and connect again while the first TCP connect is still pending.

    The cancelled attempt unwinds a few loop turns later; the attempt that
    replaced it must still see its own sync time-out (it once lost its log
    catcher to the cancelled one and called the session connected).
    """
    gw.hold_sync("reqPositions")
    manager = make_manager(connect_timeout=0.3)
    conn = manager.ib.client.conn
    real_connect = conn.connectAsync
    calls: list[int] = []

    async def first_connect_hangs(host: str, port: int) -> Any:
        calls.append(port)
        if len(calls) == 1:
            await asyncio.sleep(30)  # a SYN nobody answers: no transport yet
        return await real_connect(host, port)

    conn.connectAsync = first_connect_hangs
    manager.feed(Input(InputKind.CONNECT, message="first"))
    await _until(lambda: calls, "the first TCP connect pending")
    manager.feed(Input(InputKind.DISCONNECT, message="user disconnect"))
    manager.feed(Input(InputKind.CONNECT, message="again"))
    await manager.wait_for(S.BACKOFF, timeout=3)
    assert len(calls) == 2
    assert S.CONNECTED not in [t.dest for t in manager.transcript]
    failure = [t for t in manager.transcript if t.trigger is InputKind.ATTEMPT_FAILED][-1]
    assert "sync" in failure.cause.lower() or "timed out" in failure.cause


async def test_client_id_clash_fails_fast_then_falls_back(
    make_manager: Make, gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """326 fails the attempt at once (no connect timeout), retries the id, then the fallback.

    An attempt left to its 5 s connect timeout would end in attempt_failed
    ("timed out"); each clash must end its attempt as the 326 itself.
    """
    squatter = ib_factory()
    await squatter.connectAsync("127.0.0.1", gw.port, clientId=7, timeout=2)
    try:
        manager = make_manager(connect_timeout=5.0, fallback_client_ids=(8,))
        await manager.start(timeout=30)  # a hang guard only
        assert [(t.dest, t.trigger, t.code) for t in manager.transcript] == [
            (S.CONNECTING, InputKind.CONNECT, None),
            (S.BACKOFF, InputKind.CLIENT_ID_IN_USE, 326),
            (S.CONNECTING, InputKind.RETRY_DUE, None),
            (S.BACKOFF, InputKind.CLIENT_ID_IN_USE, 326),
            (S.CONNECTING, InputKind.RETRY_DUE, None),
            (S.CONNECTED, InputKind.ATTEMPT_SUCCEEDED, None),
        ]
        assert [c.client_id for c in gw.clients] == [7, 8]
    finally:
        squatter.disconnect()


async def test_unknown_account_is_fatal(make_manager: Make) -> None:
    """A configured account the login does not manage fails at once with AccountError."""
    manager = make_manager(account="U9999999")
    with pytest.raises(AccountError, match="not managed"):
        await manager.start(timeout=5)
    assert manager.state is S.FAILED
    assert "U9999999" not in str(manager.transcript[-1].cause)  # masked in messages


async def test_several_accounts_need_a_choice(ib_factory: Callable[[], Any]) -> None:
    """Several managed accounts and none configured: clear error, unless 'first'."""
    async with FakeGateway(accounts=["DU1111111", "DU2222222"]) as gw:
        manager = _manager(ib_factory(), ConnectionConfig(port=gw.port, policy=FAST))
        with pytest.raises(AccountError, match="2 accounts"):
            await manager.start(timeout=5)
        await manager.stop()
        manager = _manager(
            ib_factory(), ConnectionConfig(port=gw.port, account_fallback="first", policy=FAST))
        await manager.start(timeout=5)
        assert manager.account == "DU1111111"
        await manager.stop()


async def test_order_ids_never_go_backwards(make_manager: Make, gw: FakeGateway) -> None:
    """After a reconnect whose nextValidId is lower, order ids keep moving forward."""
    manager = make_manager()
    await manager.start()
    module = __import__(type(manager.ib).__module__.split(".")[0])
    gw.fill_mode = "manual"
    ids = []
    for _ in range(5):
        trade = manager.ib.placeOrder(_contract(manager.ib, gw), module.MarketOrder("BUY", 1))
        ids.append(trade.order.orderId)
    gw.set_next_valid_id(1)
    since = len(manager.transcript)
    await gw.drop_clients()
    await _reconnected(manager, since)
    assert manager.ib.client.getReqId() > max(ids)


async def test_1100_lost_then_1101_resubscribes(make_manager: Make, gw: FakeGateway) -> None:
    """1100 -> lost; 1101 -> connected and market data re-requested on the same socket."""
    manager = make_manager()
    await manager.start()
    manager.subscribe_market_data(_contract(manager.ib, gw))
    await gw.wait_for_request("reqMktData")
    connections = gw.accepted_connections
    await gw.send_error(1100)
    await manager.wait_for(S.LOST, timeout=2)
    asked_again = asyncio.ensure_future(gw.wait_for_request("reqMktData", timeout=30))
    await asyncio.sleep(0)  # one loop turn: the waiter is registered
    await gw.send_error(1101)
    await manager.wait_for(S.CONNECTED, timeout=2)
    await asked_again
    assert len(gw.requests_named("reqMktData")) == 2
    assert gw.accepted_connections == connections, "the socket was not touched"


async def test_1102_keeps_subscriptions(make_manager: Make, gw: FakeGateway) -> None:
    """1100 then 1102: back to connected without re-requesting market data."""
    manager = make_manager()
    await manager.start()
    manager.subscribe_market_data(_contract(manager.ib, gw))
    await gw.wait_for_request("reqMktData")
    await gw.send_error(1100)
    await manager.wait_for(S.LOST, timeout=2)
    await gw.send_error(1102)
    await manager.wait_for(S.CONNECTED, timeout=2)
    # a re-request would be sent as the 1102 is handled, before this barrier
    await round_trip(manager.ib)
    assert len(gw.requests_named("reqMktData")) == 1


async def test_farms_degrade_and_recover(make_manager: Make, gw: FakeGateway) -> None:
    """Each broken farm must report OK before the session is connected again; 2110 degrades."""
    manager = make_manager()
    await manager.start()
    seen = _codes_seen(manager)
    await gw.farm_broken("usfarm")
    await gw.farm_broken("ushmds")
    await manager.wait_for(S.DEGRADED, timeout=2)
    await gw.farm_ok("usfarm")
    await _until(lambda: 2104 in seen, "the manager handling 2104")
    assert manager.state is S.DEGRADED
    await gw.farm_ok("ushmds")
    await manager.wait_for(S.CONNECTED, timeout=2)
    await gw.send_error(2110)
    await manager.wait_for(S.DEGRADED, timeout=2)


async def test_port_reset_reconnects_on_new_port(make_manager: Make, gw: FakeGateway) -> None:
    """1300 names a new port; the manager reconnects there."""
    manager = make_manager()
    await manager.start()
    since = len(manager.transcript)
    new_port = await gw.reset_port()
    assert await _reconnected(manager, since) == ["backoff", "connecting", "connected"]
    assert manager.transcript[since].code == 1300
    assert manager.machine.port == new_port
    assert manager.ib.client.port == new_port


async def test_heartbeat_catches_hung_gateway(make_manager: Make, gw: FakeGateway) -> None:
    """A gateway that keeps its socket open but answers nothing is torn down and reconnected."""
    manager = make_manager(heartbeat_idle=0.2, heartbeat_timeout=0.2)
    await manager.start()
    gw.stall()
    await manager.wait_for(S.BACKOFF, timeout=3)
    assert manager.transcript[-1].trigger.value == "heartbeat_missed"
    gw.unstall()
    await manager.wait_for(S.CONNECTED, timeout=5)


async def test_quiet_healthy_gateway_is_not_a_false_alarm(
    make_manager: Make, gw: FakeGateway
) -> None:
    """A quiet but healthy gateway answers the probe: no reconnect."""
    manager = make_manager(heartbeat_idle=0.1, heartbeat_timeout=0.5)
    beats: list[float] = []
    two_beats = asyncio.Event()

    def beat(rtt: float) -> None:
        beats.append(rtt)
        if len(beats) >= 2:
            two_beats.set()

    manager.heartbeatEvent += beat
    await manager.start()
    await asyncio.wait_for(two_beats.wait(), 30)  # two probes answered; a hang guard only
    assert manager.state is S.CONNECTED
    assert len(gw.requests_named("reqCurrentTime")) >= 2
    assert _path(manager) == ["connecting", "connected"]


async def test_handlers_registered_once(make_manager: Make, gw: FakeGateway) -> None:
    """Reconnects add no handlers to IB's events and leave no tasks behind."""
    manager = make_manager()
    await manager.start()
    ib = manager.ib
    before = (len(ib.errorEvent), len(ib.disconnectedEvent), len(ib.newOrderEvent))
    tasks_before = len(asyncio.all_tasks())
    for _ in range(10):
        since = len(manager.transcript)
        await gw.drop_clients()
        await _reconnected(manager, since)
    assert (len(ib.errorEvent), len(ib.disconnectedEvent), len(ib.newOrderEvent)) == before
    # cancelled tasks unwind a few loop turns later; a leaked one never does
    await _until(lambda: len(asyncio.all_tasks()) <= tasks_before, "the tasks unwinding")
    assert len(asyncio.all_tasks()) <= tasks_before


async def test_stop_is_final_and_idempotent(make_manager: Make, gw: FakeGateway) -> None:
    """After stop() nothing reconnects; stop() twice is fine; start() raises."""
    manager = make_manager()
    await manager.start()
    await manager.stop()
    await manager.stop()
    assert manager.state is S.STOPPED and manager.stopped
    await _until(lambda: not gw.clients, "the gateway seeing the disconnect")
    # "Nothing reconnects later" is a decision: stopped ignores every input
    # (tests/test_machine_table.py::test_outcome, its stopped row).
    assert manager.state is S.STOPPED and not gw.clients
    # The disconnect, then the stop: one more stateChangeEvent than a disconnect.
    assert [(t.source, t.dest, t.trigger) for t in manager.transcript[-2:]] == [
        (S.CONNECTED, S.DISCONNECTED, InputKind.DISCONNECT),
        (S.DISCONNECTED, S.STOPPED, InputKind.STOP),
    ]
    manager.feed(Input(InputKind.CONNECT))
    assert manager.state is S.STOPPED
    with pytest.raises(ManagerStoppedError):
        await manager.start()


async def test_context_manager(gw: FakeGateway, ib_factory: Callable[[], Any]) -> None:
    """async with starts and stops the manager."""
    async with _manager(ib_factory(), ConnectionConfig(port=gw.port)) as manager:
        assert manager.state is S.CONNECTED
    assert manager.state is S.STOPPED


async def test_unknown_code_changes_nothing(make_manager: Make, gw: FakeGateway) -> None:
    """An IB code not in the table is logged and changes nothing."""
    manager = make_manager()
    await manager.start()
    seen = _codes_seen(manager)
    await gw.send_error(9999, message="brand new code")
    await gw.send_error(1102)
    await gw.send_error(1102)
    await _until(lambda: len(seen) >= 3, "the manager handling all three codes")
    assert manager.state is S.CONNECTED and _path(manager) == ["connecting", "connected"]


async def test_journal_replays(make_manager: Make, gw: FakeGateway) -> None:
    """The JSON Lines journal re-fed into a fresh machine gives the same states."""
    journal = io.StringIO()
    manager = _manager(
        make_manager().ib.__class__(),
        ConnectionConfig(port=gw.port, client_id=9, policy=FAST), journal=journal)
    await manager.start()
    await gw.farm_broken("usfarm")
    await gw.send_error(1100)
    await gw.send_error(1101)
    await gw.farm_ok("usfarm")
    since = len(manager.transcript)
    await gw.drop_clients()
    await _reconnected(manager, since)
    await manager.stop()
    recorded, replayed = replay_journal(journal.getvalue().splitlines())
    assert len(recorded) > 8
    assert recorded == replayed


@pytest.mark.parametrize(("utc", "maintenance"), [("2026-01-06 04:50:00", True),
                                                   ("2026-01-06 16:00:00", False)])
async def test_1100_in_nightly_reset_window_is_expected_maintenance(
    make_manager: Make, gw: FakeGateway, caplog: pytest.LogCaptureFixture,
    utc: str, maintenance: bool,
) -> None:
    """A 1100 at 23:50 New York is logged as maintenance and gets the longer patience."""
    from freezegun import freeze_time

    with freeze_time(utc, real_asyncio=True, tick=True):
        manager = make_manager()
        await manager.start()
        caplog.set_level("WARNING", logger="ibkr_connection.machine")
        await gw.send_error(1100)
        await manager.wait_for(S.LOST, timeout=2)
    text = caplog.text
    assert ("scheduled reset window" in text) is maintenance
    assert ("900s" in text) is maintenance and ("120s" in text) is not maintenance
