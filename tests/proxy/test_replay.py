"""Recordings made through the proxy, served back by ``sim --replay``."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ib_async
import pytest
from ib_insync import IB

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState, adapter
from ibkr_connection.clock import LoopClock
from ibkr_connection.proxy import ProxyServer, RecordingWriter, load_recording
from ibkr_connection.proxy.injection import load_relay_scenario, run_relay_scenario
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.replay import ReplayGateway

from .conftest import ACCOUNT, FAST, RawClient, frame, wait_until
from conftest import run_on_virtual_time

#: The rehearsal: a farm goes down and comes back, then TWS loses IB and gets it back.
STORY = """
description = "farm outage, then 1100 and 1101"

[[step]]
at = 0.2
action = "farm_broken"
farm = "usfarm"

[[step]]
at = 0.4
action = "farm_ok"
farm = "usfarm"

[[step]]
at = 0.6
action = "error"
code = 1100

[[step]]
at = 0.9
action = "error"
code = 1101
"""


#: (client library, the recorded gateway's cap, the version the recording is at).
WIRES = [("ib_insync", 178, 176), ("ib_async", 178, 178), ("ib_insync", 157, 157)]
WIRE_IDS = [f"{lib}-{version}" for lib, _, version in WIRES]


def _config(port: int) -> ConnectionConfig:
    return ConnectionConfig(port=port, client_id=7, connect_timeout=3.0, policy=FAST)


async def _session(port: int, scenario_start: Any = None, library: str = "ib_insync",
                   version: int = 176) -> tuple[list[tuple[Any, ...]], Any]:
    """Connect, subscribe, live through the story, disconnect; return the transcript."""
    module = importlib.import_module(library)
    manager = ConnectionManager(module.IB(), _config(port), clock=LoopClock())
    restored: list[Any] = []
    manager.subscriptionRestoredEvent += restored.append
    await manager.start(timeout=10)
    assert manager.ib.client.serverVersion() == version
    contract = module.Stock("AAPL", "SMART", "USD")
    contract.conId = 1001
    handle = manager.subscribe_market_data(contract)
    await handle.wait_ready(timeout=5)
    await wait_until(lambda: handle.ticker is not None and handle.ticker.last == 150.0,
                     what="first ticks")
    task = scenario_start() if scenario_start is not None else None
    await wait_until(lambda: restored and manager.state is ConnectionState.CONNECTED,
                     timeout=10, what="1101 and the subscription restored")
    await wait_until(lambda: handle.ticker is not None and handle.ticker.last == 150.0,
                     what="ticks after the restore")
    if task is not None:
        await task
    await manager.stop()
    return [(t.source, t.dest, t.trigger, t.code) for t in manager.transcript], handle


@pytest.mark.parametrize(("library", "cap", "version"), WIRES, ids=WIRE_IDS)
def test_replayed_recording_gives_the_manager_the_same_transcript(
    tmp_path: Path, library: str, cap: int, version: int
) -> None:
    """A session recorded through the proxy, replayed, gives a fresh manager the same transcript."""
    run_on_virtual_time(_record_and_replay_the_story(tmp_path, library, cap, version))


async def _record_and_replay_the_story(tmp_path: Path, library: str, cap: int,
                                       version: int) -> None:
    """The story through a recording proxy, then its replay (virtual time: no waiting)."""
    path = tmp_path / "session.jsonl"
    story = tmp_path / "story.toml"
    story.write_text(STORY)
    scenario = load_relay_scenario(story)
    loop = asyncio.get_running_loop()
    async with FakeGateway(accounts=[ACCOUNT], prices={"AAPL": 150.0}, server_version=cap) as gw:
        gw.add_instrument("AAPL", 150.0, con_id=1001)
        recorder = RecordingWriter(path, upstream=f"127.0.0.1:{gw.port}", clock=loop.time)
        async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
            original, _ = await _session(proxy.port, lambda: asyncio.ensure_future(
                run_relay_scenario(proxy, scenario, origin=loop.time())), library, version)
        recorder.close()
    triggers = [(t[2].value, t[3]) for t in original]
    assert ("farm_broken", 2103) in triggers and ("restored_data_lost", 1101) in triggers

    recording = load_recording(path)
    async with ReplayGateway(recording) as replay:
        replayed, handle = await _session(replay.port, None, library, version)
        assert replay.served == 1
        assert replay.recorded_version == recording.version == version
        # Served from the recording alone (a heartbeat probe may come at another time).
        assert [r.name for r in replay.unmatched if r.name != "reqCurrentTime"] == []
    assert replayed == original
    assert handle.restored == 1


async def _record(path: Path, gw: FakeGateway, script: Any, offered: str = "v157..176",
                  clock: Callable[[], float] = time.monotonic) -> None:
    """Run ``script(client, proxy)`` through a recording proxy in front of ``gw``.

    ``clock`` stamps the recording (the loop's, for a test on virtual time).
    """
    recorder = RecordingWriter(path, upstream=f"127.0.0.1:{gw.port}", clock=clock)
    async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.handshake(client_id=7, versions=offered)
        await client.read_until("9")
        await script(client, proxy)
        await client.close()
        await wait_until(lambda: proxy.closed_sessions == 1, what="session closed")
    recorder.close()


def _req_contract_details(req_id: int, symbol: str, version: int) -> bytes:
    """reqContractDetails as ib_insync and ib_async write it at ``version`` (issuerId from 176)."""
    fields: list[object] = [9, 8, req_id, 0, symbol, "STK", "", 0.0, "", "", "SMART", "", "USD",
                            "", "", 0, "", ""]
    return frame(*fields, *([""] if version >= 176 else []))


NO_DEFINITION = "No security definition has been found for the request"


@pytest.mark.parametrize(
    ("offered", "version", "details_head", "no_definition"),
    [
        # contractDetails drops its version field at 164; errMsg gains a field at 166.
        ("v157..157", 157, ["10", "8", "42", "AAPL"], ["4", "2", "43", "200", NO_DEFINITION]),
        ("v157..176", 176, ["10", "42", "AAPL"], ["4", "2", "43", "200", NO_DEFINITION, ""]),
        ("v157..178", 178, ["10", "42", "AAPL"], ["4", "2", "43", "200", NO_DEFINITION, ""]),
    ],
)
async def test_request_ids_are_patched_and_the_model_answers_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, offered: str, version: int,
    details_head: list[str], no_definition: list[str],
) -> None:
    """A recorded answer carries the client's own request id; the model answers the rest."""
    path = tmp_path / "rec.jsonl"

    async def script(client: RawClient, proxy: ProxyServer) -> None:
        client.writer.write(_req_contract_details(5, "AAPL", version))
        await client.read_until("52")

    async with FakeGateway(accounts=[ACCOUNT], prices={"AAPL": 150.0}) as gw:
        await _record(path, gw, script, offered)
    caplog.set_level(logging.INFO, logger="ibkr_connection.simulator.replay")
    async with ReplayGateway(load_recording(path)) as replay:
        client = await RawClient.connect(replay.port)
        assert await client.handshake(client_id=7, versions=offered) == version
        greeting = await client.read_until("9")
        assert ["15", "1", ACCOUNT] in greeting
        client.writer.write(_req_contract_details(42, "AAPL", version))
        answer = [f for f in await client.read_until("52") if f[0] != "4"]  # farm notices
        assert [f[:len(details_head)] for f in answer] == [details_head, ["52", "1", "42"]]
        # Not in the recording: the simulator's model reads the request and answers at the
        # recorded version (a request it read at another version would get 320, not 200).
        client.writer.write(_req_contract_details(43, "ZZZZ", version))
        assert await client.read_error(200) == no_definition
        await client.close()
    assert [r.fields[4] for r in replay.unmatched] == ["ZZZZ"]
    assert any("reqContractDetails" in r.message and "answered by the simulator's model"
               in r.message for r in caplog.records)


@pytest.mark.parametrize(("library", "cap", "version"), WIRES, ids=WIRE_IDS)
async def test_the_model_answers_what_the_recording_lacks_in_the_recorded_layout(
    tmp_path: Path, library: str, cap: int, version: int
) -> None:
    """Contract details, an order and its fill, never recorded, decode at the recorded version."""
    module = importlib.import_module(library)
    path = tmp_path / "rec.jsonl"
    async with FakeGateway(accounts=[ACCOUNT], server_version=cap) as gw:
        recorder = RecordingWriter(path)
        async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
            ib = module.IB()
            await ib.connectAsync("127.0.0.1", proxy.port, clientId=7, timeout=10)
            ib.disconnect()
            await wait_until(lambda: proxy.closed_sessions == 1, what="session recorded")
        recorder.close()
    async with ReplayGateway(load_recording(path), prices={"AAPL": 150.0}) as replay:
        ib = module.IB()
        await ib.connectAsync("127.0.0.1", replay.port, clientId=7, timeout=10)
        assert ib.client.serverVersion() == version
        details = await ib.reqContractDetailsAsync(module.Stock("AAPL", "SMART", "USD"))
        assert [(d.contract.symbol, d.contract.conId) for d in details] == [
            ("AAPL", replay.instruments["AAPL"].con_id)]
        trade = ib.placeOrder(details[0].contract, module.MarketOrder("BUY", 3))
        await wait_until(lambda: trade.orderStatus.status == "Filled" and len(trade.fills) == 1
                         and trade.fills[0].commissionReport.execId != "", what="the fill")
        execution = trade.fills[0].execution
        assert (execution.side, execution.shares, execution.price) == ("BOT", 3.0, 150.0)
        assert trade.fills[0].commissionReport.commission == 1.0
        ib.disconnect()
    assert {"reqContractDetails", "placeOrder"} <= {r.name for r in replay.unmatched}


def test_unasked_messages_follow_their_request_at_the_recorded_delay(tmp_path: Path) -> None:
    """An error the proxy injected after a request is replayed after that request, as long after."""
    run_on_virtual_time(_unasked_messages(tmp_path / "rec.jsonl"))


async def _unasked_messages(path: Path) -> None:
    """Record a 2103 injected 0.3 s after reqPositions's answer; replay it (virtual time)."""
    loop = asyncio.get_running_loop()

    async def script(client: RawClient, proxy: ProxyServer) -> None:
        client.writer.write(frame(61, 1))  # reqPositions
        await client.read_until("62")
        await asyncio.sleep(0.3)
        await proxy.send_error(2103, message="Market data farm connection is broken:usfarm")
        await client.read_error(2103)

    async with FakeGateway(accounts=[ACCOUNT]) as gw:
        await _record(path, gw, script, clock=loop.time)
    async with ReplayGateway(load_recording(path)) as replay:
        client = await RawClient.connect(replay.port)
        await client.handshake(client_id=7)
        await client.read_until("9")
        # Half a second on the loop's (virtual) clock, longer than the recorded
        # 0.3 s: a 2103 timed from the session's start, not from its request,
        # would be sent in it and read below before the request's answer.
        await asyncio.sleep(0.5)
        assert replay.unmatched == []
        asked = loop.time()
        client.writer.write(frame(61, 1))
        before = await client.read_until("62")
        assert [f for f in before if f[0] == "4" and f[3] == "2103"] == []  # not before it
        await client.read_error(2103)
        assert loop.time() - asked == pytest.approx(0.3, abs=0.01)  # as recorded
        await client.close()


async def test_a_session_the_gateway_dropped_is_dropped_in_the_replay(tmp_path: Path) -> None:
    """A recorded drop closes the replayed connection; the next connection gets the next session."""
    path = tmp_path / "rec.jsonl"
    recorder = RecordingWriter(path)
    async with FakeGateway(accounts=[ACCOUNT]) as gw, \
            ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
        for _ in range(2):
            client = await RawClient.connect(proxy.port)
            await client.handshake(client_id=7)
            await client.read_until("9")
            client.writer.write(frame(61, 1))
            await client.read_until("62")
            await proxy.drop_clients()
            await client.close()
        await wait_until(lambda: proxy.closed_sessions == 2, what="both closed")
    recorder.close()
    recording = load_recording(path)
    assert [s.close_reason for s in recording.sessions] == ["dropped by the proxy"] * 2
    async with ReplayGateway(recording) as replay:
        for served in (1, 2):
            client = await RawClient.connect(replay.port)
            await client.handshake(client_id=7)
            await client.read_until("9")
            client.writer.write(frame(61, 1))
            await client.read_until("62")
            assert await asyncio.wait_for(client.reader.read(), 5) == b""
            assert replay.served == served
            await client.close()


@pytest.mark.parametrize("recorded", [178, 190])
async def test_a_recording_at_a_version_the_client_cannot_speak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recorded: int
) -> None:
    """A version outside the client's range: the handshake is refused and the log says why."""
    path = tmp_path / "rec.jsonl"

    async def script(client: RawClient, proxy: ProxyServer) -> None:
        client.writer.write(frame(49, 1))
        await client.read_until("49")

    async with FakeGateway(accounts=[ACCOUNT]) as gw:
        await _record(path, gw, script, "v157..178")  # ib_async's range: 178
    # 190: a gateway and a client newer than the simulator (its layouts are 157..178).
    path.write_text(path.read_text().replace('"version":178', f'"version":{recorded}'))
    recording = load_recording(path)
    assert recording.version == recorded
    caplog.set_level(logging.INFO)
    async with ReplayGateway(recording) as replay:
        ib = IB()  # ib_insync 0.9.86: v157..176
        # ib_insync alone would notice the close only at its connect timeout; the
        # library's connect watches the socket and fails the moment it closes.
        with pytest.raises(ConnectionError, match="closed the socket during the handshake"):
            await adapter.connect_session(
                ib, host="127.0.0.1", port=replay.port, client_id=7, timeout=30,
                readonly=False, account="", catcher=adapter.SyncTimeoutCatcher())
        ib.disconnect()
        assert replay.served == 0
        # A client whose range holds the recorded version is served the recorded session.
        client = await RawClient.connect(replay.port)
        assert await client.handshake(client_id=7, versions=f"v157..{recorded}") == recorded
        assert ["15", "1", ACCOUNT] in await client.read_until("9")
        assert replay.served == 1
        await client.close()
    assert any(f"client versions 157..176 exclude {recorded}," in r.message
               for r in caplog.records)
    unmodelled = [r.message for r in caplog.records if "does not model" in r.message]
    assert len(unmodelled) == (1 if recorded == 190 else 0)


async def test_sessions_at_two_versions_each_go_to_a_client_that_speaks_theirs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ib_insync's session (176) and ib_async's (178), recorded together, each go to their kind."""
    path = tmp_path / "rec.jsonl"
    async with FakeGateway(accounts=[ACCOUNT]) as gw:
        recorder = RecordingWriter(path)
        async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
            for ib, client_id in ((IB(), 1), (ib_async.IB(), 2)):
                await ib.connectAsync("127.0.0.1", proxy.port, clientId=client_id, timeout=10)
                ib.disconnect()
            await wait_until(lambda: proxy.closed_sessions == 2, what="both recorded")
        recorder.close()
    recording = load_recording(path)
    assert [(s.client_id, s.version) for s in recording.sessions] == [(1, 176), (2, 178)]
    caplog.set_level(logging.INFO, logger="ibkr_connection.simulator.replay")
    async with ReplayGateway(recording) as replay:
        for ib, client_id, version in ((ib_async.IB(), 2, 178), (IB(), 1, 176)):
            await ib.connectAsync("127.0.0.1", replay.port, clientId=client_id, timeout=10)
            assert ib.client.serverVersion() == version
            assert ib.managedAccounts() == [ACCOUNT]
            ib.disconnect()
        assert replay.served == 2 and replay.unmatched == []
    served = [r.message for r in caplog.records if " served from recorded session " in r.message]
    assert served == ["replay: client 2 served from recorded session 2 (client 2)",
                      "replay: client 1 served from recorded session 1 (client 1)"]


@pytest.mark.parametrize("fault", ["restart", "reset_port"])
def test_a_recorded_restart_or_port_reset_replays_to_the_same_transcript(
    tmp_path: Path, fault: str
) -> None:
    """A restart's refusals and a 1300's new port are replayed: same seed, same transcript."""
    run_on_virtual_time(_record_and_replay_a_fault(tmp_path / "rec.jsonl", fault))


async def _record_and_replay_a_fault(path: Path, fault: str) -> None:
    """``fault`` through a recording proxy, then its replay (virtual time: no waiting)."""

    async def live(port: int, proxy: ProxyServer | None) -> list[tuple[Any, ...]]:
        manager = ConnectionManager(IB(), _config(port), clock=LoopClock())
        await manager.start(timeout=10)
        if proxy is not None:
            await asyncio.sleep(0.2)
            if fault == "restart":
                await proxy.restart(outage=0.45)  # refused at ~0.05, 0.14, 0.33; in at ~0.58
            else:
                await proxy.reset_port()
        await wait_until(lambda: len(manager.transcript) > 3
                         and manager.state is ConnectionState.CONNECTED, timeout=10,
                         what="reconnected")
        await manager.stop()
        return [(t.source, t.dest, t.trigger, t.code) for t in manager.transcript]

    async with FakeGateway(accounts=[ACCOUNT]) as gw:
        recorder = RecordingWriter(path, clock=asyncio.get_running_loop().time)
        async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
            original = await live(proxy.port, proxy)
        recorder.close()
    async with ReplayGateway(load_recording(path)) as replay:
        replayed = await live(replay.port, None)
        assert replay.served == 2
    assert replayed == original
    triggers = [row[2].value for row in original]
    assert triggers.count("attempt_failed") == (3 if fault == "restart" else 0)
