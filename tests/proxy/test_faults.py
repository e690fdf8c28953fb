"""Every action a relay can play, injected by the proxy: the manager sees what the real fault shows.

The expected transitions are written out by hand from the README's machine
(and match what the simulator's own faults give in tests/reliability), never
read back from the code under test.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ibkr_connection import ConnectionManager, ConnectionState
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.proxy import ProxyServer
from ibkr_connection.proxy.injection import load_relay_scenario, run_relay_scenario
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.wire.scenario import ScenarioError

from .conftest import RawClient, frame, wait_until
from conftest import on_live_session

Make = Callable[..., ConnectionManager]
Row = tuple[str, str, str, int | None]

DISC, CONN, OK, DEG, LOST, BACK = ("disconnected", "connecting", "connected", "degraded", "lost",
                                   "backoff")


@pytest.fixture
def ib_factory(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """ib_insync unless a test names the library (tests/proxy/test_relay.py runs both)."""
    return importlib.import_module(getattr(request, "param", "ib_insync")).IB  # type: ignore[no-any-return]


#: (client library, the upstream simulator's cap, the version the session speaks).
WIRES = [("ib_insync", 178, 176), ("ib_async", 178, 178), ("ib_insync", 157, 157)]


def _rows(manager: ConnectionManager, since: int = 0) -> list[Row]:
    return [(t.source.value, t.dest.value, t.trigger.value, t.code)
            for t in manager.transcript[since:]]


async def _settled(manager: ConnectionManager, state: ConnectionState) -> None:
    """Wait until the manager is in ``state`` on a live session (a round trip answered)."""
    await on_live_session(manager, state, timeout=8.0)


async def _on_backoff(manager: ConnectionManager, heal: Callable[[], Any]) -> None:
    """Heal the fault as soon as the manager backs off (its retry is at least 45 ms away)."""
    await wait_until(lambda: manager.state is ConnectionState.BACKOFF, timeout=8,
                     what="backoff")
    result = heal()
    if asyncio.iscoroutine(result):
        await result


Act = Callable[[ProxyServer, ConnectionManager], Awaitable[None]]

#: A first attempt that fails, a retry that succeeds.
FAILED_ONCE: list[Row] = [(DISC, CONN, "connect", None), (CONN, BACK, "attempt_failed", None),
                          (BACK, CONN, "retry_due", None), (CONN, OK, "attempt_succeeded", None)]


async def _error_1100(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.send_error(1100)


async def _error_1100_then_1102(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.send_error(1100)
    await wait_until(lambda: manager.state is ConnectionState.LOST, what="lost")
    await proxy.send_error(1102)


async def _error_1100_then_1101(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.send_error(1100)
    await wait_until(lambda: manager.state is ConnectionState.LOST, what="lost")
    await proxy.send_error(1101)


async def _error_2110(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.send_error(2110)


async def _error_1300(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.send_error(1300)  # names the proxy's own port: reconnect there


async def _farm_out_and_back(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.farm_broken("ushmds")
    await wait_until(lambda: manager.state is ConnectionState.DEGRADED, what="degraded")
    await proxy.farm_ok("ushmds")


async def _drop(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.drop_clients(client_id=7)


async def _reset_port(proxy: ProxyServer, manager: ConnectionManager) -> None:
    old = proxy.port
    assert await proxy.reset_port() != old


async def _nightly_reset(proxy: ProxyServer, manager: ConnectionManager) -> None:
    await proxy.nightly_reset(silence=0.2, restore_code=1101)


#: (fault, what the proxy does, the transitions after connected, the state it ends in).
CASES: list[tuple[str, Act, list[Row], ConnectionState]] = [
    ("error 1100", _error_1100, [(OK, LOST, "connectivity_lost", 1100)], ConnectionState.LOST),
    ("error 1100, 1102", _error_1100_then_1102,
     [(OK, LOST, "connectivity_lost", 1100), (LOST, OK, "restored_data_kept", 1102)],
     ConnectionState.CONNECTED),
    ("error 1100, 1101", _error_1100_then_1101,
     [(OK, LOST, "connectivity_lost", 1100), (LOST, OK, "restored_data_lost", 1101)],
     ConnectionState.CONNECTED),
    ("error 2110", _error_2110, [(OK, DEG, "server_link_broken", 2110)],
     ConnectionState.DEGRADED),
    ("error 1300", _error_1300,
     [(OK, BACK, "port_reset", 1300), (BACK, CONN, "retry_due", None),
      (CONN, OK, "attempt_succeeded", None)], ConnectionState.CONNECTED),
    ("farm_broken, farm_ok", _farm_out_and_back,
     [(OK, DEG, "farm_broken", 2105), (DEG, OK, "farm_ok", 2106)], ConnectionState.CONNECTED),
    ("drop_clients", _drop,
     [(OK, BACK, "socket_closed", None), (BACK, CONN, "retry_due", None),
      (CONN, OK, "attempt_succeeded", None)], ConnectionState.CONNECTED),
    ("reset_port", _reset_port,
     [(OK, BACK, "port_reset", 1300), (BACK, CONN, "retry_due", None),
      (CONN, OK, "attempt_succeeded", None)], ConnectionState.CONNECTED),
    # The simulator announced usfarm, ushmds and secdefil OK: the proxy breaks those three,
    # and the last one back (secdefil, 2158) makes the session whole again.
    ("nightly_reset", _nightly_reset,
     [(OK, LOST, "connectivity_lost", 1100), (LOST, DEG, "restored_data_lost", 1101),
      (DEG, OK, "farm_ok", 2158)], ConnectionState.CONNECTED),
]


@pytest.mark.parametrize(("ib_factory", "cap", "version"), WIRES, indirect=["ib_factory"],
                         ids=[f"{lib}-{version}" for lib, _, version in WIRES])
@pytest.mark.parametrize(("fault", "act", "expected", "end"), CASES,
                         ids=[case[0] for case in CASES])
async def test_fault_through_the_proxy(
    fault: str, act: Act, expected: list[Row], end: ConnectionState, cap: int, version: int,
    make_manager: Make, gw: FakeGateway, proxy: ProxyServer,
) -> None:
    """A connected manager meets the fault injected by the proxy and moves as written."""
    gw.server_version = cap
    manager = make_manager(heartbeat_idle=5.0)
    await manager.start(timeout=10)
    assert [s.version for s in proxy.ready_sessions] == [version]
    since = len(manager.transcript)
    await act(proxy, manager)
    await _settled(manager, end)
    assert _rows(manager, since) == expected
    if fault == "reset_port":
        assert [s.client_id for s in proxy.ready_sessions] == [7]  # on the new port


def _cycles_only(rows: list[Row]) -> bool:
    """True if every row is a failed attempt or a retry: backoff <-> connecting."""
    allowed = {(CONN, BACK, "attempt_failed"), (BACK, CONN, "retry_due")}
    return all(row[:3] in allowed for row in rows)


async def test_stop_and_start_listening(make_manager: Make, proxy: ProxyServer) -> None:
    """Refused while the proxy does not listen (a drop makes the manager try), back once it does."""
    manager = make_manager()
    await manager.start(timeout=10)
    since = len(manager.transcript)
    await proxy.stop_listening()
    await proxy.drop_clients()
    await wait_until(lambda: any(r[2] == "attempt_failed" for r in _rows(manager, since)),
                     what="a refused attempt")
    await proxy.start_listening()
    await _settled(manager, ConnectionState.CONNECTED)
    rows = _rows(manager, since)
    assert rows[0] == (OK, BACK, "socket_closed", None)
    assert rows[-1] == (CONN, OK, "attempt_succeeded", None)
    assert _cycles_only(rows[1:-1]) and len(rows) >= 5


async def test_restart(make_manager: Make, proxy: ProxyServer) -> None:
    """A restart drops the session and refuses for the outage; the manager comes back after it."""
    manager = make_manager()
    await manager.start(timeout=10)
    since = len(manager.transcript)
    await proxy.restart(outage=0.4)
    await _settled(manager, ConnectionState.CONNECTED)
    rows = _rows(manager, since)
    assert rows[0] == (OK, BACK, "socket_closed", None)
    assert rows[-1] == (CONN, OK, "attempt_succeeded", None)
    assert _cycles_only(rows[1:-1]) and len(rows) >= 5  # at least one refused attempt


async def test_stall_then_unstall(make_manager: Make, proxy: ProxyServer) -> None:
    """A stall is a hung gateway: the heartbeat finds it, attempts hang until unstalled."""
    manager = make_manager(heartbeat_idle=0.2, heartbeat_timeout=0.2, connect_timeout=0.4)
    await manager.start(timeout=10)
    since = len(manager.transcript)
    proxy.stall()
    await wait_until(lambda: any(r[2] == "attempt_failed" for r in _rows(manager, since)),
                     what="an attempt that hung")
    proxy.unstall()
    await _settled(manager, ConnectionState.CONNECTED)
    rows = _rows(manager, since)
    assert rows[0] == (OK, BACK, "heartbeat_missed", None)
    assert rows[-1] == (CONN, OK, "attempt_succeeded", None)
    assert _cycles_only(rows[1:-1]) and len(rows) >= 5


async def test_unstall_delivers_or_discards_what_was_held(proxy: ProxyServer) -> None:
    """unstall delivers the held answers; unstall with discard throws them away."""
    client = await RawClient.connect(proxy.port)
    await client.handshake(client_id=9)
    await client.read_until("9")
    proxy.stall()
    client.writer.write(frame(49, 1))
    await wait_until(lambda: next(iter(proxy.sessions.values())).held_bytes > 0, what="held")
    proxy.unstall()
    assert (await client.read_until("49"))[-1][0] == "49"
    proxy.stall()
    client.writer.write(frame(8, 1, 1))  # reqIds: answered by nextValidId (9)
    await wait_until(lambda: next(iter(proxy.sessions.values())).held_bytes > 0, what="held")
    proxy.unstall(discard=True)
    client.writer.write(frame(49, 1))
    later = await client.read_until("49")
    assert [f[0] for f in later] == ["49"]  # the discarded nextValidId never came
    await client.close()


LOST = "Connectivity between IB and Trader Workstation has been lost."


@pytest.mark.parametrize(
    ("offered", "version", "expected"),
    [
        ("v157..157", 157, ["4", "2", "-1", "1100", LOST]),
        ("v157..176", 176, ["4", "2", "-1", "1100", LOST, ""]),
        ("v157..178", 178, ["4", "2", "-1", "1100", LOST, ""]),
    ],
)
async def test_error_injected_while_stalled_still_arrives(
    proxy: ProxyServer, offered: str, version: int, expected: list[str]
) -> None:
    """As with a hung gateway's own messages, an injected error is not held by a stall."""
    client = await RawClient.connect(proxy.port)
    assert await client.handshake(client_id=9, versions=offered) == version
    await client.read_until("9")
    proxy.stall()
    await proxy.send_error(1100)
    assert await client.read_error(1100) == expected  # laid out for the session's version
    proxy.unstall()
    await client.close()


async def test_handshake_delay_fails_a_short_attempt(make_manager: Make, proxy: ProxyServer,
                                                     ) -> None:
    """A handshake slower than the connect timeout fails the attempt; without it, it connects."""
    manager = make_manager(connect_timeout=0.3)
    proxy.set_handshake_delay(1.0)
    manager.feed(Input(InputKind.CONNECT, message="test"))
    await _on_backoff(manager, lambda: proxy.set_handshake_delay(0))
    await _settled(manager, ConnectionState.CONNECTED)
    assert _rows(manager) == FAILED_ONCE


async def test_handshake_delay_delays_the_answer(proxy: ProxyServer) -> None:
    """The gateway's handshake answer reaches the client no sooner than the delay."""
    proxy.set_handshake_delay(0.3)
    client = await RawClient.connect(proxy.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await client.handshake(client_id=9) == 176  # v157..176 against a cap of 178
    assert loop.time() - start >= 0.3
    await client.close()


@pytest.mark.parametrize("request_name", ["reqExecutions", "reqPositions", "reqOpenOrders"])
async def test_hold_sync_fails_the_attempt_until_released(
    request_name: str, make_manager: Make, proxy: ProxyServer
) -> None:
    """A withheld end message leaves the startup sync incomplete; released, the next one passes."""
    manager = make_manager(connect_timeout=0.5)
    proxy.hold_sync(request_name)
    manager.feed(Input(InputKind.CONNECT, message="test"))
    await _on_backoff(manager, lambda: proxy.release_sync(request_name))
    await _settled(manager, ConnectionState.CONNECTED)
    assert _rows(manager) == FAILED_ONCE


async def test_error_326_while_connecting(make_manager: Make, proxy: ProxyServer) -> None:
    """A 326 injected while the startup sync runs is a client id clash: back off and retry."""
    manager = make_manager(connect_timeout=3.0)
    proxy.hold_sync("reqExecutions")
    manager.feed(Input(InputKind.CONNECT, message="test"))
    await wait_until(lambda: bool(proxy.ready_sessions), what="startApi relayed")
    await proxy.send_error(326)
    await _on_backoff(manager, lambda: proxy.release_sync())
    await _settled(manager, ConnectionState.CONNECTED)
    assert _rows(manager) == [(DISC, CONN, "connect", None),
                              (CONN, BACK, "client_id_in_use", 326),
                              (BACK, CONN, "retry_due", None),
                              (CONN, OK, "attempt_succeeded", None)]


async def test_delay_sync_slows_the_startup_sync(make_manager: Make, proxy: ProxyServer) -> None:
    """An end message delayed past the connect timeout fails the attempt; removed, it connects."""
    manager = make_manager(connect_timeout=0.3)
    proxy.delay_sync("reqPositions", 1.0)
    manager.feed(Input(InputKind.CONNECT, message="test"))
    await _on_backoff(manager, lambda: proxy.delay_sync("reqPositions", 0))
    await _settled(manager, ConnectionState.CONNECTED)
    assert _rows(manager) == FAILED_ONCE


async def test_a_scenario_file_plays_on_the_proxy(
    tmp_path: Path, make_manager: Make, proxy: ProxyServer
) -> None:
    """The sim's TOML timeline runs on the proxy, one line per fault."""
    path = tmp_path / "s.toml"
    path.write_text('[[step]]\nat = 0.0\naction = "farm_broken"\nfarm = "usfarm"\n'
                    '[[step]]\nat = 0.1\naction = "farm_ok"\nfarm = "usfarm"\n')
    manager = make_manager()
    await manager.start(timeout=10)
    since = len(manager.transcript)
    await run_relay_scenario(proxy, load_relay_scenario(path),
                             origin=asyncio.get_running_loop().time())
    await _settled(manager, ConnectionState.CONNECTED)
    assert _rows(manager, since) == [(OK, DEG, "farm_broken", 2103), (DEG, OK, "farm_ok", 2104)]
    faults = [line for line in proxy.lines if " fault " in line]  # type: ignore[attr-defined]
    assert [line.split(" fault ")[1] for line in faults] == [
        "farm_broken farm=usfarm code=2103 -> 1 session(s)",
        "farm_ok farm=usfarm code=2104 -> 1 session(s)"]


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ('action = "fill_order"\norder_id = 1', "the proxy has no order book"),
        ('action = "push_tick"\nsymbol = "AAPL"\nprice = 1.0', "does not invent market data"),
        ('action = "set_next_valid_id"\nvalue = 5', "order ids belong to the real gateway"),
        ('action = "fill_mode"\nmode = "manual"', "fills are the real gateway's"),
    ],
)
def test_actions_a_relay_cannot_play_are_rejected_at_load(
    tmp_path: Path, step: str, reason: str
) -> None:
    """Loading for the proxy names the step, the action and why it cannot apply."""
    path = tmp_path / "s.toml"
    path.write_text(f"[[step]]\nat = 1.0\n{step}\n")
    with pytest.raises(ScenarioError) as caught:
        load_relay_scenario(path)
    action = step.split('"')[1]
    assert f"step 1: action '{action}' cannot apply to the proxy: " in str(caught.value)
    assert reason in str(caught.value)


def test_discard_is_a_proxy_only_field(tmp_path: Path) -> None:
    """unstall's discard loads for the proxy and is refused by the simulator, by name."""
    from ibkr_connection.wire.scenario import load_scenario

    path = tmp_path / "s.toml"
    path.write_text('[[step]]\nat = 1.0\naction = "unstall"\ndiscard = true\n')
    assert load_relay_scenario(path).steps[0].params == {"discard": True}
    with pytest.raises(ScenarioError, match="field 'discard' applies to the proxy only"):
        load_scenario(path)


def test_shipped_scenarios_load_for_the_proxy() -> None:
    """Every shipped scenario uses actions a relay can play."""
    from ibkr_connection.wire.scenario import shipped_scenarios

    assert set(shipped_scenarios(target="proxy")) == {"gateway_restart", "hung_gateway",
                                                      "nightly_reset"}


async def test_a_fault_reaches_only_the_named_client(gw: FakeGateway, proxy: ProxyServer) -> None:
    """client_id picks one session; the other hears nothing."""
    one, two = await RawClient.connect(proxy.port), await RawClient.connect(proxy.port)
    await one.handshake(client_id=1)
    await two.handshake(client_id=2)
    await one.read_until("9")
    await two.read_until("9")
    await wait_until(lambda: len(proxy.ready_sessions) == 2, what="two sessions")
    assert await proxy.send_error(1100, client_id=2) == 1
    two.writer.write(frame(49, 1))
    one.writer.write(frame(49, 1))
    heard_two = [f[3] for f in await two.read_until("49") if f[0] == "4"]
    heard_one = [f[3] for f in await one.read_until("49") if f[0] == "4"]
    assert "1100" in heard_two and "1100" not in heard_one
    await one.close()
    await two.close()


def test_every_scenario_action_says_whether_the_proxy_plays_it() -> None:
    """RELAY_ACTIONS has a row, with a reason, for every action of the scenario table."""
    from ibkr_connection.wire.scenario import ACTIONS, RELAY_ACTIONS

    assert set(RELAY_ACTIONS) == set(ACTIONS)
    assert all(len(why) > 10 for _, why in RELAY_ACTIONS.values())
    rejected = {name for name, (applies, _) in RELAY_ACTIONS.items() if not applies}
    assert rejected == {"fill_order", "push_tick", "set_next_valid_id", "fill_mode", "wedge"}
