"""Fault matrix: every socket-level fault in every reachable state, against a real IB client.

The expected end states are written out by hand below (read off the README's
machine and the simulator's behaviour), never derived from the code under test.

Decisions are proved pure, integration once. Turning an IB code into an input
does not depend on the state, and what each state does with each input is the
hand-written grid of tests/test_machine_table.py (``test_outcome``, one case per
(state, input)). So the socket faults run in every column here, and the IB codes
in two representative columns only: ``connected`` (a session up, every code
moves or keeps it) and ``lost`` (the restore codes end it). Each code cell left
out is named by ``test_dropped_code_cells_are_in_the_pure_grid``. The simulator's
``wedge`` and ``stall`` are one fault (sockets accepted, nothing answered): the
``stall`` row is the wedge's. Each module runs on one wire per client library
(ib_insync at 176, ib_async at 178, see conftest); test_fault_matrix_at_157 is
the smoke run at 157.

The matrix runs on virtual time (``VIRTUAL_TIME``, see conftest.py): a held fault,
the restarting column's restart_wait, the handshake deadlines and the backoff delays
cost no wall clock; the sockets are the real loopback ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

import test_machine_table as pure_grid
from ibkr_connection import (
    BackoffPolicy,
    Config,
    ConnectFailedError,
    ConnectionManager,
    ConnectionState,
    IBKRIBInsyncApi,
    RecoveryPolicy,
)
from ibkr_connection.clock import Clock, LoopClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.ibc import IbcCommandServer
from ibkr_connection.simulator.month import VirtualTimeLoop

from .conftest import (
    FAST_POLICY,
    TracebackCatcher,
    handler_counts,
    settle,
    wait_until,
)

S = ConnectionState
C, D, L, B, X, F = S.CONNECTED, S.DEGRADED, S.LOST, S.BACKOFF, S.DISCONNECTED, S.FAILED
Make = Callable[..., ConnectionManager]

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock.
VIRTUAL_TIME = True

#: Start states, in the column order of EXPECTED.
#:   connected     session up, every farm OK
#:   degraded      the gateway's usfarm is broken (2103, and again at every reconnect)
#:   lost          1100 received
#:   backoff       had a session; the gateway stopped listening and dropped it
#:   connecting_hs an attempt waits on a 0.3 s handshake delay (cleared after the fault)
#:   connecting_sy an attempt waits on a held reqPositions end (released after the fault)
#:   disconnected  a manager that was never started
#:   failed        max_attempts=1 exhausted against a closed port (the port reopens)
#:   restarting    a controller (an IBC command server that never answers) was asked to
#:                 restart the wedged gateway (restart_after=1); the wedge is then
#:                 lifted, and a short restart_wait (RESTART_WAIT) ends the restart
STATES = ("connected", "degraded", "lost", "backoff", "connecting_hs", "connecting_sy",
          "disconnected", "failed", "restarting")

#: The machine state each column starts in.
START = {"connected": C, "degraded": D, "lost": L, "backoff": B,
         "connecting_hs": S.CONNECTING, "connecting_sy": S.CONNECTING,
         "disconnected": X, "failed": F, "restarting": S.RESTARTING}

#: The end state per (socket fault, start state), once the fault played out (persistent
#: faults are held, then healed) and the manager made no move for a while.
EXPECTED: dict[str, tuple[ConnectionState, ...]] = {
    #                 conn  degr  lost  back  c_hs  c_sy  disc  fail  rest
    "drop_clients":  (C,    D,    C,    B,    C,    C,    X,    F,    C),
    "stop_listening": (C,   D,    L,    B,    C,    C,    X,    F,    C),
    "restart":       (C,    D,    C,    C,    C,    C,    X,    F,    C),
    "stall":         (C,    D,    C,    B,    C,    C,    X,    F,    C),
    "handshake_delay": (C,  D,    L,    B,    C,    C,    X,    F,    C),
    "held_sync":     (C,    D,    L,    B,    C,    C,    X,    F,    C),
}

#: The columns where the IB codes are played, in the column order of CODE_EXPECTED.
CODE_STATES = ("connected", "lost")

#: The end state per (IB code, start state) in those two columns.
CODE_EXPECTED: dict[str, tuple[ConnectionState, ConnectionState]] = {
    #                 conn  lost
    "code_1100":     (L,    L),
    "code_1101":     (C,    C),
    "code_1102":     (C,    C),
    "code_2103":     (D,    L),
    "code_2104":     (C,    L),
    "code_2105":     (D,    L),
    "code_2106":     (C,    L),
    "code_2157":     (D,    L),
    "code_2158":     (C,    L),
    "code_2110":     (D,    L),
    "code_1300":     (C,    C),
    "code_10182":    (C,    L),
    "code_9999":     (C,    L),
}

#: The input each code becomes (None: logged only, no input in any state), written
#: out by hand, and the grid row of each column: the code cells not played here are
#: (row, input) cases of tests/test_machine_table.py::test_outcome.
CODE_INPUT: dict[str, str | None] = {
    "code_1100": "connectivity_lost", "code_1101": "restored_data_lost",
    "code_1102": "restored_data_kept", "code_2103": "farm_broken", "code_2104": "farm_ok",
    "code_2105": "farm_broken", "code_2106": "farm_ok", "code_2157": "farm_broken",
    "code_2158": "farm_ok", "code_2110": "server_link_broken", "code_1300": "port_reset",
    "code_10182": None, "code_9999": None,
}
GRID_ROW = {"connected": "connected", "degraded": "degraded", "lost": "lost",
            "backoff": "backoff", "connecting_hs": "connecting", "connecting_sy": "connecting",
            "disconnected": "disconnected", "failed": "failed", "restarting": "restarting"}

CASES = ([(state, fault) for fault in EXPECTED for state in STATES]
         + [(state, fault) for fault in CODE_EXPECTED for state in CODE_STATES])


def _expected(state: str, fault: str) -> ConnectionState:
    """The hand-written end state of the cell."""
    if fault in CODE_EXPECTED:
        return CODE_EXPECTED[fault][CODE_STATES.index(state)]
    return EXPECTED[fault][STATES.index(state)]


#: Seconds a persistent fault is held when the manager does not react to it sooner.
HOLD = {"stop_listening": 0.25, "stall": 1.0, "handshake_delay": 0.25, "held_sync": 0.25}

#: How long the restarting column's restart lasts: long enough for the fault to be
#: injected while it runs, short enough that the column costs little.
RESTART_WAIT = 0.3

#: Attempts in the connecting columns get more time than 0.5 s so that the fault,
#: not a timeout on a loaded machine, decides the outcome.
CONNECTING_TIMEOUT = 1.5


async def _enter(state: str, make: Make, gw: FakeGateway) -> ConnectionManager:
    """Build a manager and drive it, through the real simulator, into ``state``."""
    if state == "disconnected":
        return make()
    if state == "failed":
        port = gw.port
        await gw.stop_listening()
        manager = make(policy=RecoveryPolicy(backoff=BackoffPolicy(max_attempts=1)))
        with pytest.raises(ConnectFailedError):
            await manager.start(timeout=3)
        assert gw.port == port
        await gw.start_listening()
        return manager
    if state == "restarting":
        gw.ibc = IbcCommandServer(gw, silent=True)
        await gw.ibc.start()
        manager = make(ibc_port=gw.ibc.port, policy=replace(
            FAST_POLICY, restart_after=1, restart_wait=RESTART_WAIT, restart_cooldown=600.0))
        await manager.start(timeout=3)
        gw.wedge()
        await manager.wait_for(S.RESTARTING, timeout=3)
        gw.unstall()
        return manager
    if state.startswith("connecting"):
        manager = make(connect_timeout=CONNECTING_TIMEOUT)
        if state == "connecting_hs":
            gw.handshake_delay = 0.3
            accepted = gw.accepted_connections
            manager.feed(Input(InputKind.CONNECT, message="matrix"))
            await wait_until(lambda: gw.accepted_connections > accepted, what="TCP accepted")
        else:
            gw.hold_sync("reqPositions")
            manager.feed(Input(InputKind.CONNECT, message="matrix"))
            await wait_until(lambda: bool(gw.requests_named("reqPositions")),
                             what="startup sync under way")
        assert manager.state is S.CONNECTING
        return manager
    manager = make()
    await manager.start(timeout=3)
    if state == "degraded":
        await gw.farm_broken("usfarm")
        await manager.wait_for(S.DEGRADED, timeout=2)
    elif state == "lost":
        await gw.send_error(1100)
        await manager.wait_for(S.LOST, timeout=2)
    elif state == "backoff":
        await gw.stop_listening()
        await gw.drop_clients()
        await manager.wait_for(S.BACKOFF, timeout=2)
    return manager


async def _leave_connecting(state: str, gw: FakeGateway) -> None:
    """Heal the condition that held the attempt in ``connecting``."""
    if state == "connecting_hs":
        gw.handshake_delay = 0.0
    elif state == "connecting_sy":
        gw.release_sync("reqPositions")


async def _hold(manager: ConnectionManager, seconds: float) -> None:
    """Keep a persistent fault in force until the manager reacts, or ``seconds`` pass."""
    moves = len(manager.transcript)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while len(manager.transcript) == moves and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def _inject(fault: str, manager: ConnectionManager, gw: FakeGateway) -> None:
    """Inject ``fault``; a persistent one is held, then healed to what it was before."""
    if fault.startswith("code_"):
        await gw.send_error(int(fault.removeprefix("code_")))
    elif fault == "drop_clients":
        await gw.drop_clients()
    elif fault == "restart":
        await gw.restart(outage=0.1)
    elif fault == "stop_listening":
        was_listening = gw.listening
        await gw.stop_listening()
        await _hold(manager, HOLD[fault])
        if was_listening:
            await gw.start_listening()
    elif fault == "stall":
        gw.stall()
        await _hold(manager, HOLD[fault])
        gw.unstall()
    elif fault == "handshake_delay":
        before = gw.handshake_delay
        gw.handshake_delay = 3.0
        await _hold(manager, HOLD[fault])
        gw.handshake_delay = before
    elif fault == "held_sync":
        gw.hold_sync("reqExecutions")
        await _hold(manager, HOLD[fault])
        gw.release_sync("reqExecutions")
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(f"unknown fault {fault}")


@pytest.mark.parametrize(("state", "fault"), CASES, ids=[f"{s}-{f}" for s, f in CASES])
async def test_fault_in_state(
    state: str, fault: str, make_manager: Make, gw: FakeGateway,
    tracebacks: TracebackCatcher,
) -> None:
    """The fault leaves the manager in its declared state, with no leak and no escape."""
    expected = _expected(state, fault)
    # An execution booked before the session and one booked during the fault.
    gw.fill_mode = "manual"
    booked = gw.create_order("AAPL", "BUY", 10, client_id=7)
    gw.fill_order(booked.order_id)
    working = gw.create_order("AAPL", "BUY", 5, client_id=7)
    manager = await _enter(state, make_manager, gw)
    ib = manager.ib
    counts = handler_counts(ib)
    assert manager.state is START[state], "the fault would not hit the column's state"

    before = len(manager.transcript)
    await _inject(fault, manager, gw)
    gw.fill_order(working.order_id)
    await _leave_connecting(state, gw)
    await settle(manager, expected, before=before, healed=len(manager.transcript))

    assert handler_counts(ib) == counts, "handlers were added or removed"
    if expected in (C, D, L):
        wanted = sorted(ex.exec_id for ex in gw.executions)
        await wait_until(lambda: sorted(f.execution.execId for f in ib.fills()) == wanted,
                         timeout=3, what="every execution known to the client once")
    assert tracebacks.escaped() == []


async def test_the_matrix_runs_on_virtual_time(manager_clock: Clock, gw: FakeGateway) -> None:
    """Its loop is a VirtualTimeLoop (conftest's hook), and the clock ``make_manager`` gives
    its managers and the gateway's read that loop: an hour asleep costs no wall clock, and
    both clocks moved by the hour."""
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    clocks = (manager_clock, gw.clock)
    before = [clock.monotonic() for clock in clocks]
    started = time.monotonic()
    await asyncio.sleep(3600)
    assert time.monotonic() - started < 60
    assert [round(clock.monotonic() - at) for clock, at in zip(clocks, before, strict=True)
            ] == [3600, 3600]


def test_matrix_covers_every_reachable_state() -> None:
    """Every state of the machine but ``stopped`` is the start of a column of the matrix.

    A stopped manager has let go of its ``IB`` (no handler of its is on the client), so no
    fault over the socket can reach its machine: that every input is ignored there is the
    pure grid's (tests/test_machine_table.py::test_outcome[stopped-*]).
    """
    assert set(START) == set(STATES)
    assert set(START.values()) == set(ConnectionState) - {ConnectionState.STOPPED}
    assert all(len(row) == len(STATES) for row in EXPECTED.values())
    assert set(CODE_STATES) <= set(STATES)


def test_dropped_code_cells_are_in_the_pure_grid() -> None:
    """Each code cell not played over a socket is a (state, input) case of the pure grid."""
    dropped = [(state, fault) for fault in CODE_EXPECTED for state in STATES
               if state not in CODE_STATES]
    assert len(dropped) == len(CODE_EXPECTED) * (len(STATES) - len(CODE_STATES))
    for state, fault in dropped:
        row, column = GRID_ROW[state], CODE_INPUT[fault]
        assert row in pure_grid.EXPECTED, (state, fault)
        # A logged-only code is no input: nothing in any state (tests/test_codes.py).
        assert column is None or column in pure_grid.COLUMNS, (state, fault)


# -- fills across drops and restarts ----------------------------------------------------------

AAPL = Stock("AAPL", "SMART", "USD")


def _pump_until(api: IBKRIBInsyncApi, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_event_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; state {api.state.value}")
        api.handle_callbacks(0.01)


def test_no_fill_lost_or_doubled_across_drops_and_restarts() -> None:
    """Fills booked while disconnected are in the book exactly once after every reconnect."""
    loop = VirtualTimeLoop()  # the outages and backoffs cost no wall clock
    asyncio.set_event_loop(loop)
    gw = FakeGateway(accounts=["DU1234567"], next_order_id=100, prices={"AAPL": 150.0},
                     fill_mode="manual")
    loop.run_until_complete(gw.start())
    api = IBKRIBInsyncApi(
        Config(IBKR_PORT=gw.port, IBKR_CLIENT_ID=7), IB(), connect_timeout=0.5,
        policy=FAST_POLICY, clock=LoopClock(loop=loop),
    )
    try:
        assert api.connect() is True
        trades = [api.place_order(AAPL, LimitOrder("BUY", 30, 151.0)) for _ in range(3)]
        trades.append(api.place_order(AAPL, MarketOrder("SELL", 20)))
        _pump_until(api, lambda: len(gw.orders) == 4)
        order_ids = [t.order.orderId for t in trades]
        episodes: list[str] = ["drop", "restart", "drop", "drop", "restart", "drop"]
        for n, episode in enumerate(episodes):
            sessions = sum(1 for t in api.manager.transcript if t.dest is S.CONNECTED)
            live = order_ids[n % len(order_ids)]
            gw.fill_order(live, quantity=1)  # booked while connected
            if episode == "drop":
                loop.run_until_complete(gw.stop_listening())
                loop.run_until_complete(gw.drop_clients())
            else:
                loop.run_until_complete(gw.restart(outage=0.05))
            for oid in order_ids:  # booked while the bot is disconnected
                if not gw.orders[oid].is_done:
                    gw.fill_order(oid, quantity=2)
            if episode == "drop":
                loop.run_until_complete(gw.start_listening())
            _pump_until(api, lambda s=sessions: sum(
                1 for t in api.manager.transcript if t.dest is S.CONNECTED) > s)
        wanted = sorted(ex.exec_id for ex in gw.executions)
        assert len(wanted) > 20

        def booked() -> list[str]:
            book = api.snapshot()["orders"]
            return sorted(e["execution_id"] for o in book.values() for e in o["executions"])

        _pump_until(api, lambda: booked() == wanted)
        book = api.snapshot()["orders"]
        for oid in order_ids:
            entry = book[str(oid)]
            assert entry["filled"] == gw.orders[oid].filled
            commissions = [c["execution_id"] for c in entry["commissions"]]
            assert len(commissions) == len(set(commissions))
        assert booked() == wanted  # each execution id exactly once
    finally:
        api.disconnect()
        loop.run_until_complete(gw.stop())
        asyncio.set_event_loop(None)
        loop.close()
