"""Step definitions for features/recovery.feature, against the gateway simulator.

Each scenario runs on virtual time (a :class:`VirtualTimeLoop`, the bot on its
``LoopClock``): outages, heartbeat deadlines, backoff delays and IBC's restart cost
no wall clock, while the sockets stay real loopback ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from ib_insync import IB, Stock
from pytest_bdd import given, parsers, scenarios, then, when

from ibkr_connection import (
    ConnectionConfig,
    ConnectionManager,
    IBCController,
)
from ibkr_connection.clock import LoopClock
from ibkr_connection.inputs import InputKind
from ibkr_connection.outputs import Transition
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.ibc import IbcCommandServer
from ibkr_connection.simulator.month import VirtualTimeLoop
from ibkr_connection.table import ConnectionState

from conftest import FAST_POLICY as FAST
from conftest import round_trip, wait_until

scenarios("recovery.feature")

T = TypeVar("T")


class World:
    """What the scenario knows: one event loop on virtual time, the gateway, the bot."""

    def __init__(self) -> None:
        self.loop = VirtualTimeLoop()
        asyncio.set_event_loop(self.loop)  # ib_insync looks the loop up itself
        #: The bot's clock: the loop's, so its timers and readings agree.
        self.clock = LoopClock(loop=self.loop)
        self.gw: FakeGateway | None = None
        self.manager: ConnectionManager | None = None
        self.others: list[IB] = []
        self.mark = 0
        self.dropped = 0
        self.connections = 0
        self.new_port = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def bot(self) -> ConnectionManager:
        assert self.manager is not None
        return self.manager

    @property
    def gateway(self) -> FakeGateway:
        assert self.gw is not None
        return self.gw


@pytest.fixture
def world() -> Iterator[World]:
    """A fresh world per scenario, torn down afterwards."""
    w = World()
    yield w
    if w.manager is not None:
        w.run(w.manager.stop())
    for ib in w.others:
        ib.disconnect()
    if w.gw is not None:
        w.run(w.gw.stop())
    w.loop.close()
    asyncio.set_event_loop(None)


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


@given(parsers.parse("a simulated IB Gateway with account {account}"))
def _gateway(world: World, account: str) -> None:
    world.gw = FakeGateway(accounts=[account], prices={"AAPL": 150.0})
    world.run(world.gw.start())


@given(parsers.parse(
    "my bot is connected with client id {client_id:d} and streams AAPL market data"))
def _bot(world: World, client_id: int) -> None:
    gw = world.gateway
    config = ConnectionConfig(port=gw.port, client_id=client_id, fallback_client_ids=(8,),
                              heartbeat_idle=0.3, heartbeat_timeout=0.3, policy=FAST)
    world.manager = ConnectionManager(IB(), config, clock=world.clock)
    world.run(world.bot.start(timeout=5))
    world.bot.subscribe_market_data(Stock("AAPL", "SMART", "USD"))
    world.run(gw.wait_for_request("reqMktData"))
    world.mark = len(world.bot.transcript)
    world.connections = gw.accepted_connections


@given(parsers.parse("another program is connected with client id {client_id:d}"))
def _squatter(world: World, client_id: int) -> None:
    gw = world.gateway
    world.dropped = len(world.bot.transcript)
    world.run(gw.drop_clients())
    squatter = IB()
    world.others.append(squatter)

    async def squat() -> None:
        # Take the id while the bot is still backing off.
        await squatter.connectAsync("127.0.0.1", gw.port, clientId=client_id, timeout=2)

    world.run(squat())
    world.mark = len(world.bot.transcript)


@given("the gateway runs under IBC and my bot may ask IBC to restart it")
def _under_ibc(world: World) -> None:
    gw = world.gateway
    gw.ibc = IbcCommandServer(gw, restart_outage=0.5)
    world.run(gw.ibc.start())
    world.run(world.bot.stop())
    config = ConnectionConfig(port=gw.port, client_id=7, heartbeat_idle=0.3,
                              heartbeat_timeout=0.3, connect_timeout=1.0, policy=FAST)
    world.manager = ConnectionManager(
        IB(), config, controller=IBCController("127.0.0.1", gw.ibc.port, timeout=2.0),
        clock=world.clock)
    world.run(world.bot.start(timeout=5))
    world.bot.subscribe_market_data(Stock("AAPL", "SMART", "USD"))
    world.run(gw.wait_for_request("reqMktData"))
    world.mark = len(world.bot.transcript)
    world.connections = gw.accepted_connections


@when("the gateway wedges: it takes connections and answers nothing")
def _wedge(world: World) -> None:
    world.gateway.wedge()


@when(parsers.parse("the gateway stops accepting connections for {seconds:d} seconds"))
def _refuse(world: World, seconds: int) -> None:
    world.run(world.gateway.restart(outage=float(seconds)))


@then("IBC was asked to restart the gateway exactly once")
def _one_restart(world: World) -> None:
    ibc = world.gateway.ibc
    assert ibc is not None and ibc.commands == ["RESTART"] and ibc.restarts == 1
    assert world.bot.machine.restarts == 1


@then("IBC was never asked to restart the gateway")
def _no_restart(world: World) -> None:
    ibc = world.gateway.ibc
    assert ibc is not None and ibc.commands == []
    assert all(t.dest is not ConnectionState.RESTARTING for t in world.bot.transcript)


@when(parsers.parse("the gateway restarts after a {outage:f} second outage"))
def _restart(world: World, outage: float) -> None:
    world.run(world.gateway.restart(outage=outage))


@when(parsers.parse("IB reports code {code:d}"))
def _code(world: World, code: int) -> None:
    world.run(world.gateway.send_error(code))
    world.run(round_trip(world.bot.ib))  # the bot has heard the code


@when(parsers.parse('the "{farm}" data farm breaks'))
def _farm_broken(world: World, farm: str) -> None:
    world.run(world.gateway.farm_broken(farm))
    world.run(round_trip(world.bot.ib))  # the bot has heard the farm's code


@when(parsers.parse('the "{farm}" data farm is OK again'))
def _farm_ok(world: World, farm: str) -> None:
    world.run(world.gateway.farm_ok(farm))
    world.run(round_trip(world.bot.ib))  # the bot has heard the farm's code


@when("the gateway stops answering")
def _stall(world: World) -> None:
    world.gateway.stall()


@when("the gateway answers again")
def _unstall(world: World) -> None:
    world.gateway.unstall()


@when("the connection drops")
def _drop(world: World) -> None:
    # The drop came with the squatter (it had to take the id while the bot was away):
    # here the bot has noticed it.
    world.run(wait_until(
        lambda: any(t.source is ConnectionState.CONNECTED
                    for t in world.bot.transcript[world.dropped:]),
        what="the bot noticed the drop"))


@when("the gateway resets its API port")
def _port_reset(world: World) -> None:
    world.new_port = world.run(world.gateway.reset_port())


@then(parsers.parse('the bot is "{state}"'))
def _is(world: World, state: str) -> None:
    assert world.run(_until(lambda: world.bot.state.value == state, 2.0)), world.bot.state


@then(parsers.parse('the bot goes through "{via}" and is "{state}" again'))
def _through(world: World, via: str, state: str) -> None:
    def done() -> bool:
        later = [t.dest.value for t in world.bot.transcript[world.mark:]]
        return via in later and world.bot.state.value == state

    # A hang guard only: the scenario's other steps check why the bot is back
    # soon (the delays it chose, what ended the session); benchmarks/recovery.py
    # and benchmarks/detect_hang.py time it.
    assert world.run(_until(done, 30.0)), [t.dest.value for t in world.bot.transcript]


@then(parsers.parse(
    "while the gateway was down the bot tried again at least every {seconds:g} seconds"))
def _cadence(world: World, seconds: float) -> None:
    delays = [t.delay for t in world.bot.transcript[world.mark:]
              if t.dest is ConnectionState.BACKOFF]
    assert delays and all(d is not None and d <= seconds for d in delays), delays


@then("the bot drops the session because its heartbeat went unanswered")
def _heartbeat_missed(world: World) -> None:
    def backoffs() -> list[Transition]:
        return [t for t in world.bot.transcript[world.mark:] if t.dest is ConnectionState.BACKOFF]

    assert world.run(_until(lambda: bool(backoffs()), 30.0)), world.bot.state
    assert backoffs()[0].trigger is InputKind.HEARTBEAT_MISSED


@then("the bot tried the new port at once, without a backoff delay")
def _at_once(world: World) -> None:
    backoff = next(t for t in world.bot.transcript[world.mark:]
                   if t.dest is ConnectionState.BACKOFF)
    assert (backoff.code, backoff.delay) == (1300, 0.0)


@then("AAPL market data was requested again")
def _requested_again(world: World) -> None:
    assert world.run(_until(lambda: len(world.gateway.requests_named("reqMktData")) == 2, 1.0))


@then("AAPL market data was not requested again")
def _not_requested(world: World) -> None:
    # A re-request would be sent when the bot handled the code, before this barrier.
    world.run(round_trip(world.bot.ib))
    assert len(world.gateway.requests_named("reqMktData")) == 1


@then("the socket was never reopened")
def _same_socket(world: World) -> None:
    assert world.gateway.accepted_connections == world.connections


@then(parsers.parse('the bot is "{state}" again with client id {client_id:d}'))
def _with_id(world: World, state: str, client_id: int) -> None:
    def done() -> bool:
        return (world.bot.state.value == state
                and world.bot.ib.client.clientId == client_id)

    assert world.run(_until(done, 5.0)), [t.to_json() for t in world.bot.transcript[-6:]]
    assert any(t.code == 326 for t in world.bot.transcript[world.mark:])


@then("the bot is connected on the new port")
def _new_port(world: World) -> None:
    assert world.bot.ib.client.port == world.new_port
