"""The journal: wall-clock times, cut last lines, appended sessions, and their replay."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from ib_insync import IB

from ibkr_connection import (
    BackoffPolicy,
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    RecoveryPolicy,
    cli,
    journal,
)
from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.outputs import JournalEntry
from ibkr_connection.simulator import FakeGateway

FAST = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))


@pytest.fixture(autouse=True)
def _logger_levels_kept() -> Iterator[None]:
    """cli.main(["replay", ...]) quietens the library's loggers for its process: undo it here."""
    names = ("ib_insync", "ib_async", "ibkr_connection", "asyncio")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)

HEADER = (
    '{"type": "header", "port": 4002, "client_ids": [7], "seed": 0, "backoff": '
    '{"initial_delay": 0.05, "factor": 2.0, "max_delay": 0.25, "costly_delay": 1.0, '
    '"max_costly_delay": 10.0, "jitter": 0.1, "max_attempts": null}, '
    '"restore_timeout": 120.0, "maintenance_restore_timeout": 900.0, '
    '"same_client_id_retries": 1}'
)

#: A journal as written before lines carried wall-clock time.
WITHOUT_WALL = "\n".join([
    HEADER,
    '{"type": "input", "at": 0.0, "input": "connect", "state": "connecting"}',
    '{"type": "input", "at": 0.1, "input": "attempt_succeeded", "state": "connected"}',
    '{"type": "input", "at": 0.2, "input": "connectivity_lost", "code": 1100, "state": "lost"}',
]) + "\n"

#: The same journal with wall-clock times, as written now.
WITH_WALL = "\n".join([
    HEADER.replace('{"type": "header", ',
                   '{"type": "header", "at": 0.0, "wall": "2026-01-06T04:50:00.000Z", '),
    '{"type": "input", "at": 0.0, "wall": "2026-01-06T04:50:00.000Z", "input": "connect", '
    '"state": "connecting"}',
    '{"type": "input", "at": 0.1, "wall": "2026-01-06T04:50:00.100Z", '
    '"input": "attempt_succeeded", "state": "connected"}',
    '{"type": "input", "at": 0.2, "wall": "2026-01-06T04:50:00.200Z", '
    '"input": "connectivity_lost", "code": 1100, "state": "lost"}',
]) + "\n"


async def _record_session(path: Path, gw: FakeGateway, *, stop: bool = True) -> ConnectionManager:
    """Connect a manager journaling to ``path``, break and mend a farm, and stop it."""
    m = ConnectionManager(IB(), ConnectionConfig(port=gw.port, client_id=9, policy=FAST),
                          journal=path)
    await m.start()
    await gw.farm_broken("usfarm")
    await m.wait_for(ConnectionState.DEGRADED, timeout=5)
    await gw.farm_ok("usfarm")
    await m.wait_for(ConnectionState.CONNECTED, timeout=5)
    if stop:
        await m.stop()
    return m


def _cut_last_line(path: Path) -> int:
    """Cut the file's last line in half, as a crash mid-write would; return its number."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    last = lines[-1]
    path.write_bytes(data[: len(data) - len(last)] + last[: len(last) // 2])
    return len(lines)


async def test_replay_of_a_journal_cut_mid_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cut last line is named by its line number; the complete lines replay, exit 0."""
    path = tmp_path / "conn.jsonl"
    async with FakeGateway() as gw:
        await _record_session(path, gw)
    cut = _cut_last_line(path)
    assert cli.main(["replay", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"line {cut}: cut mid-write (the bot stopped while writing it), not replayed",
        f"{cut - 2} complete inputs replayed: all transitions match",
    ]
    recorded, replayed = journal.replay_journal(path.read_text().splitlines())
    assert len(recorded) == cut - 2 and recorded == replayed


async def test_a_restarted_bot_appends_a_new_session_after_a_cut_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a crash, the next manager's header starts a new line; each session replays afresh."""
    path = tmp_path / "conn.jsonl"
    async with FakeGateway() as gw:
        first = await _record_session(path, gw, stop=False)
        at_crash = path.read_bytes()
        await first.stop()
        # The bot died while connected, writing the line of the farm's recovery:
        # its session ends degraded, where a connect would change nothing.
        path.write_bytes(at_crash)
        cut = _cut_last_line(path)
        await _record_session(path, gw)
    lines = path.read_text().splitlines()
    assert json.loads(lines[cut])["type"] == "header"  # the line after the cut one
    assert cli.main(["replay", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"line {cut}: cut mid-write (the bot stopped while writing it), not replayed",
        f"{len(lines) - 3} complete inputs in 2 sessions replayed: all transitions match",
    ]


@pytest.mark.parametrize("garbage", [
    "garbage",
    '{"type": "input", "at": 0.1, "inp',
    "[1, 2]",
    '{"type": "input", "at": 0.1, "input": "no_such_input", "state": "connected"}',
    '{"type": "input", "at": 0.1, "input": "connect", "state": "no_such_state"}',
    '{"type": "input", "input": "connect", "state": "connecting"}',
    '{"type": "note", "text": "hello"}',
])
def test_a_bad_line_in_the_middle_is_an_error_naming_it(
    garbage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line that is not a journal record, other than a cut last line, is exit 2 naming it."""
    lines = WITH_WALL.splitlines()
    path = tmp_path / "conn.jsonl"
    path.write_text("\n".join([*lines[:2], garbage, *lines[2:]]) + "\n")
    assert cli.main(["replay", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"ibkr-connection replay: {path}: line 3: ")
    assert len(captured.err.splitlines()) == 1 and captured.out == ""


@pytest.mark.parametrize(("last", "why"), [
    ("garbage", "line 5: not JSON: 'garbage'"),
    ('{"type": "input", "at": 0.3, "input": "restored_data_kept", "state": "connected"}\n'
     '{"type": "input", "at": 0.4, "inp\n', "line 6: not JSON"),
])
def test_a_last_line_that_is_not_a_cut_record_is_an_error(
    last: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last line that is garbage, or a partial record that ends its line, is exit 2."""
    path = tmp_path / "conn.jsonl"
    path.write_text(WITH_WALL + last)
    assert cli.main(["replay", str(path)]) == 2
    assert why in capsys.readouterr().err


def test_an_input_before_any_header_is_an_error(tmp_path: Path) -> None:
    """Input lines with no header before them cannot be replayed, and the error says where."""
    with pytest.raises(journal.JournalError, match="line 1: an input before any header"):
        journal.replay(WITHOUT_WALL.splitlines()[1:])


@pytest.mark.parametrize("text", [WITHOUT_WALL, WITH_WALL], ids=["without-wall", "with-wall"])
def test_replay_accepts_journals_with_and_without_wall_clock_time(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Journals written before and after lines carried wall-clock time replay the same."""
    path = tmp_path / "conn.jsonl"
    path.write_text(text)
    assert cli.main(["replay", str(path)]) == 0
    assert capsys.readouterr().out == "3 inputs replayed: all transitions match\n"


def test_writer_stamps_each_input_with_its_wall_clock_time() -> None:
    """``wall`` is the UTC time of day of the input's monotonic ``at``, in milliseconds."""
    clock = ManualClock(start=100.0, wall_start=datetime(2026, 1, 6, 4, 50, tzinfo=timezone.utc))
    out = io.StringIO()
    writer = journal.JournalWriter(out, ConnectionConfig(port=4002, client_id=7), clock)
    clock.advance(2.25)  # flushed 2.25 s after the header, 0.75 s after the input came
    writer.write([JournalEntry(101.5, Input(InputKind.CONNECT, message="start() called"),
                               ConnectionState.CONNECTING)])
    header, line = (json.loads(text) for text in out.getvalue().splitlines())
    assert (header["at"], header["wall"]) == (100.0, "2026-01-06T04:50:00.000Z")
    assert line == {"type": "input", "at": 101.5, "wall": "2026-01-06T04:50:01.500Z",
                    "input": "connect", "message": "start() called", "state": "connecting"}


async def test_journal_of_a_real_session_carries_wall_clock_time(tmp_path: Path) -> None:
    """Every line a manager writes has a ``wall`` in UTC, within the session's own span."""
    path = tmp_path / "conn.jsonl"
    before = datetime.now(timezone.utc) - timedelta(milliseconds=1)
    async with FakeGateway() as gw:
        await _record_session(path, gw)
    after = datetime.now(timezone.utc) + timedelta(milliseconds=1)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in records][:2] == ["header", "input"]
    walls = [journal.parse_wall(r["wall"]) for r in records]
    assert all(r["wall"].endswith("Z") for r in records)
    assert all(before <= wall <= after for wall in walls)
    assert walls == sorted(walls)


def test_header_carries_the_controller_and_the_escalation_policy() -> None:
    """The header says whether a controller could restart, and the restart policy's fields."""
    out = io.StringIO()
    config = ConnectionConfig(port=4002, client_id=7,
                              policy=RecoveryPolicy(restart_after=5, restart_wait=60.0,
                                                    restart_cooldown=120.0,
                                                    farm_reconnect_after=30.0))
    journal.JournalWriter(out, config, ManualClock(), controller_configured=True)
    header = json.loads(out.getvalue())
    assert {k: header[k] for k in ("controller_configured", "restart_after", "restart_wait",
                                   "restart_cooldown", "farm_reconnect_after")} == {
        "controller_configured": True, "restart_after": 5, "restart_wait": 60.0,
        "restart_cooldown": 120.0, "farm_reconnect_after": 30.0}
    journal.JournalWriter(out := io.StringIO(), ConnectionConfig(), ManualClock())
    assert json.loads(out.getvalue())["controller_configured"] is False


async def test_a_real_session_journals_each_inputs_effects(tmp_path: Path) -> None:
    """Each input line names the effects its step asked for; the replay compares them too."""
    path = tmp_path / "conn.jsonl"
    async with FakeGateway() as gw:
        await _record_session(path, gw)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    inputs = [r for r in records if r["type"] == "input"]
    assert inputs[0]["input"] == "connect"
    assert inputs[0]["effects"] == [["start_attempt", 1, 9, gw.port]]
    succeeded = next(r for r in inputs if r["input"] == "attempt_succeeded")
    # The accounts the attempt reported and the one the table chose, masked.
    assert succeeded["accounts"] == ["DU***567"]
    assert succeeded["effects"] == [["select_account", "DU***567"],
                                    ["restore_subscriptions", True],
                                    ["start_heartbeat"], ["begin_session"]]
    assert "DU1234567" not in path.read_text()
    # stop(): the disconnect's step, then the close its tear-down caused, fed after
    # it, then the stop into the terminal state.
    assert [(r["input"], r["state"]) for r in inputs[-3:]] == [
        ("disconnect", "disconnected"), ("socket_closed", "disconnected"), ("stop", "stopped")]
    assert inputs[-3]["effects"] == [["cancel_retry"], ["cancel_restore_timer"],
                                     ["stop_heartbeat"], ["tear_down"], ["end_session"]]
    assert inputs[-2]["effects"] == inputs[-1]["effects"] == []
    assert journal.replay_file(path).mismatches == []


def test_replay_names_an_effect_that_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same state, other effects: a difference, named; a line without effects is not compared."""
    path = tmp_path / "conn.jsonl"
    path.write_text("\n".join([
        HEADER,
        '{"type": "input", "at": 0.0, "input": "connect", "state": "connecting", '
        '"effects": [["start_attempt", 1, 7, 4999]]}',
        '{"type": "input", "at": 0.1, "input": "attempt_succeeded", "state": "connected"}',
    ]) + "\n")
    assert cli.main(["replay", str(path)]) == 1
    assert capsys.readouterr().out == (
        "input 0: connect (line 2): journal says effects [['start_attempt', 1, 7, 4999]], "
        "the machine now asks for [['start_attempt', 1, 7, 4002]]\n"
        "2 inputs replayed: 1 differ\n")
