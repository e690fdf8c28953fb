"""The driver over real sockets, on both backends: it forwards every input, the table decides."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from ibkr_connection import ConnectionConfig, ConnectionManager, ConnectionState
from ibkr_connection.clock import LoopClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.simulator import FakeGateway

from .conftest import FAST
from conftest import wait_until

S = ConnectionState

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock
#: (``LoopClock``): deadlines, backoffs and held syncs cost no wall clock.
VIRTUAL_TIME = True


def _manager(*args: Any, **kwargs: Any) -> ConnectionManager:
    """A ConnectionManager on the loop's (virtual) clock."""
    return ConnectionManager(*args, clock=LoopClock(), **kwargs)


def _journal(out: io.StringIO) -> list[tuple[str, str]]:
    """The (input, state) of each input line of a journal."""
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    return [(r["input"], r["state"]) for r in records if r["type"] == "input"]


async def test_a_close_during_the_attempt_is_forwarded_and_the_attempt_reports_it(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """A drop during the startup sync: socket_closed is fed and ignored, then attempt_failed."""
    out = io.StringIO()
    manager = _manager(
        ib_factory(), ConnectionConfig(port=gw.port, client_id=7, connect_timeout=3.0,
                                       policy=FAST), journal=out)
    gw.hold_sync("reqPositions")
    manager.feed(Input(InputKind.CONNECT, message="connect"))
    await wait_until(lambda: gw.requests_named("reqPositions"), what="startup sync under way")
    await gw.drop_clients()
    await manager.wait_for(S.BACKOFF, timeout=2)
    gw.release_sync()
    await manager.wait_for(S.CONNECTED, timeout=3)
    await manager.stop()
    # The close was fed while the attempt ran, and the table left the state
    # alone: the attempt's own classified failure made the move.
    assert _journal(out)[:6] == [
        ("connect", "connecting"), ("farm_ok", "connecting"), ("farm_ok", "connecting"),
        ("farm_ok", "connecting"), ("socket_closed", "connecting"), ("attempt_failed", "backoff"),
    ]
    moves = [(t.source, t.dest, t.trigger) for t in manager.transcript[:2]]
    assert moves == [(S.DISCONNECTED, S.CONNECTING, InputKind.CONNECT),
                     (S.CONNECTING, S.BACKOFF, InputKind.ATTEMPT_FAILED)]
    assert manager.transcript[1].delay is not None and manager.transcript[1].delay >= 0.045


async def test_one_sync_catcher_serves_every_attempt(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """The time-out catcher is added once, kept across reconnects, and removed at stop()."""
    ib = ib_factory()
    owner = ib._logger

    def handlers() -> int:
        return len(owner.handlers)

    before = handlers()
    manager = _manager(ib, ConnectionConfig(port=gw.port, client_id=7, policy=FAST))
    assert handlers() == before + 1
    await manager.start()
    await gw.drop_clients()
    await manager.wait_for(S.BACKOFF, timeout=2)
    await manager.wait_for(S.CONNECTED, timeout=3)
    assert len(manager.transcript) >= 4
    assert handlers() == before + 1
    await manager.stop()
    assert handlers() == before


async def test_one_socket_watch_serves_every_attempt(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """The socket's close handler is added once, kept across reconnects, and removed at stop()."""
    ib = ib_factory()
    closed_event = ib.client.conn.disconnected
    before = len(closed_event)
    manager = ConnectionManager(ib, ConnectionConfig(port=gw.port, client_id=7, policy=FAST))
    assert len(closed_event) == before + 1
    await manager.start()
    await gw.drop_clients()
    await manager.wait_for(S.BACKOFF, timeout=2)
    await manager.wait_for(S.CONNECTED, timeout=3)
    assert len(manager.transcript) >= 4
    assert len(closed_event) == before + 1
    await manager.stop()
    assert len(closed_event) == before


async def test_an_incomplete_sync_after_a_reconnect_is_still_caught(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """The shared catcher is cleared per attempt: a later attempt's time-out is its own."""
    manager = _manager(
        ib_factory(), ConnectionConfig(port=gw.port, client_id=7, connect_timeout=0.3,
                                       policy=FAST))
    await manager.start()
    gw.hold_sync("reqPositions")
    await gw.drop_clients()
    await wait_until(lambda: any(t.trigger is InputKind.ATTEMPT_FAILED for t in manager.transcript),
                     what="an attempt failed")
    failure = next(t for t in manager.transcript if t.trigger is InputKind.ATTEMPT_FAILED)
    assert failure.source is S.CONNECTING and failure.dest is S.BACKOFF
    assert "sync" in failure.cause.lower() or "timed out" in failure.cause
    assert [t.dest for t in manager.transcript].count(S.CONNECTED) == 1
    gw.release_sync()
    await manager.wait_for(S.CONNECTED, timeout=3)
    await manager.stop()


async def test_the_coroutine_twins_have_the_conventions_names(
    gw: FakeGateway, ib_factory: Callable[[], Any]
) -> None:
    """connect_async() connects and disconnect_async() stops, as start() and stop() do."""
    manager = _manager(ib_factory(), ConnectionConfig(port=gw.port, client_id=9,
                                                               policy=FAST))
    await manager.connect_async(timeout=3)
    assert manager.state is S.CONNECTED
    await manager.disconnect_async()
    assert manager.state is S.STOPPED and manager.stopped
