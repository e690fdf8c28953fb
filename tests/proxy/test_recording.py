"""Recordings: the format on disk, flushed per line, account masking, and bad files."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from ibkr_connection.proxy import (
    FORMAT_VERSION,
    ProxyServer,
    RecordingError,
    RecordingWriter,
    load_recording,
)
from ibkr_connection.simulator import FakeGateway

from .conftest import RawClient, frame, wait_until


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("offered", "version"),
                         [((157, 176), 176), ((157, 178), 178), ((157, 157), 157)])
async def test_recording_holds_the_handshake_and_every_message_each_way(
    tmp_path: Path, gw: FakeGateway, offered: tuple[int, int], version: int
) -> None:
    """Header, open, both hellos, each message with direction and times, close with byte counts."""
    path = tmp_path / "rec.jsonl"
    recorder = RecordingWriter(path, upstream=f"127.0.0.1:{gw.port}")
    hello = f"v{offered[0]}..{offered[1]}"
    async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
        client = await RawClient.connect(proxy.port)
        assert await client.handshake(client_id=7, versions=hello) == version
        await client.read_until("9")
        client.writer.write(frame(49, 1))
        await client.read_until("49")
        # Flushed per line: all of it is on disk while the proxy still runs.
        lines = _lines(path)
        assert lines[0] == {"type": "header", "recording": "ibkr-connection",
                            "format": FORMAT_VERSION, "created": lines[0]["created"],
                            "upstream": f"127.0.0.1:{gw.port}", "masked": False}
        assert [(x["dir"], x["fields"]) for x in lines if x["type"] == "msg"][-2:] == [
            ("c2s", ["49", "1"]), ("s2c", ["49", "1", lines[-1]["fields"][2]])]
        session = next(iter(proxy.sessions.values()))
        await client.close()
        await wait_until(lambda: proxy.closed_sessions == 1, what="closed")
    recorder.close()
    lines = _lines(path)
    kinds = [(x["type"], x.get("dir")) for x in lines]
    assert kinds[:5] == [("header", None), ("open", None), ("hello", "c2s"), ("hello", "s2c"),
                         ("msg", "c2s")]
    assert kinds[-1] == ("close", None)
    hello_c2s, hello_s2c, start_api = lines[2], lines[3], lines[4]
    assert base64.b64decode(hello_c2s["raw"]) == b"API\0\0\0\0\t" + hello.encode()
    assert hello_c2s["versions"] == list(offered)
    assert hello_s2c["version"] == version
    assert base64.b64decode(hello_s2c["raw"])[4:8] == f"{version}\0".encode()
    assert load_recording(path).sessions[0].version == version
    assert start_api["fields"] == ["71", "2", "7", ""]
    assert ["15", "1", "DU1234567"] in [x["fields"] for x in lines if x["type"] == "msg"]
    times = [x["t"] for x in lines[1:]]
    assert times == sorted(times)
    assert all(x["wall"].endswith("Z") and x["session"] == 1 for x in lines[1:])
    assert lines[-1] | {"t": 0, "wall": ""} == {
        "type": "close", "session": 1, "client_id": 7, "c2s_bytes": session.c2s_bytes,
        "s2c_bytes": session.s2c_bytes, "reason": "client closed", "t": 0, "wall": ""}


LOST = "Connectivity between IB and Trader Workstation has been lost."


@pytest.mark.parametrize(
    ("offered", "injected_fields"),
    [
        ("v157..157", ["4", "2", "-1", "1100", LOST]),
        ("v157..176", ["4", "2", "-1", "1100", LOST, ""]),
        ("v157..178", ["4", "2", "-1", "1100", LOST, ""]),
    ],
)
async def test_injected_held_and_discarded_frames_are_marked(
    tmp_path: Path, gw: FakeGateway, offered: str, injected_fields: list[str]
) -> None:
    """Injected errors are marked, in the session's layout; frames unstall threw away too."""
    path = tmp_path / "rec.jsonl"
    recorder = RecordingWriter(path)
    async with ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.handshake(client_id=7, versions=offered)
        await client.read_until("9")
        await proxy.send_error(1100)
        await client.read_error(1100)
        proxy.stall()
        client.writer.write(frame(49, 1))
        await wait_until(lambda: next(iter(proxy.sessions.values())).held_bytes > 0, what="held")
        proxy.unstall(discard=True)
        await client.close()
    recorder.close()
    lines = _lines(path)
    injected = [x for x in lines if x.get("injected")]
    discarded = [x for x in lines if x.get("discarded")]
    assert [x["fields"] for x in injected] == [injected_fields]
    assert [x["fields"][0] for x in discarded] == ["49"]
    faults = [(x["action"], x["sessions"]) for x in lines if x["type"] == "fault"]
    assert faults == [("error", 1), ("stall", 1), ("unstall", 1)]
    recording = load_recording(path)
    assert all(m.msg_id != 49 or m.direction == "c2s"
               for m in recording.sessions[0].messages)  # discarded: not replayed


async def test_mask_accounts_masks_every_account_the_same_way_everywhere(tmp_path: Path) -> None:
    """Accounts from managedAccounts become MASKED1, MASKED2 ... in every message and session."""
    path = tmp_path / "rec.jsonl"
    recorder = RecordingWriter(path, mask_accounts=True)
    async with FakeGateway(accounts=["DU111", "DU222"]) as gw, \
            ProxyServer("127.0.0.1", gw.port, recorder=recorder) as proxy:
        for client_id in (1, 2):
            client = await RawClient.connect(proxy.port)
            await client.handshake(client_id=client_id)
            await client.read_until("9")
            client.writer.write(frame(6, 2, 1, "DU222"))  # reqAccountUpdates for DU222
            await client.read_until("54")
            await client.close()
        await wait_until(lambda: proxy.closed_sessions == 2, what="both closed")
    recorder.close()
    text = path.read_text()
    assert "DU111" not in text and "DU222" not in text
    lines = _lines(path)
    header = lines[0]
    assert header["masked"] is True
    msgs = [(x["session"], x["dir"], x["fields"]) for x in lines if x["type"] == "msg"]
    for session in (1, 2):
        assert (session, "s2c", ["15", "1", "MASKED1,MASKED2"]) in msgs
        assert (session, "c2s", ["6", "2", "1", "MASKED2"]) in msgs
        assert (session, "s2c", ["54", "1", "MASKED2"]) in msgs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file, not a recording"),
        ('{"type": "msg"}\n', "line 1: not a recording header"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 9}\n',
         "line 1: format 9 is newer than this reader (format 1)"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
         '{"type": "open", "session": 1, "t": 0}\nthis is not json\n{"type": "open"}\n',
         "line 3: not JSON"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n[1, 2]\n',
         "line 2: not a JSON object"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
         '{"type": "bogus", "t": 0}\n', "line 2: unknown line type 'bogus'"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
         '{"type": "msg", "session": 4, "dir": "c2s", "t": 0, "fields": ["49", "1"]}\n',
         "line 2: session 4 has no 'open' line before it"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
         '{"type": "open", "session": 1, "t": 0}\n'
         '{"type": "msg", "session": 1, "dir": "up", "t": 0, "fields": ["49"]}\n',
         "line 3: 'dir' must be c2s or s2c"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
         '{"type": "open", "session": 1, "t": 0}\n'
         '{"type": "msg", "session": 1, "dir": "s2c", "t": 0, "raw": "@@@"}\n',
         "line 3: 'raw' is not base64"),
        ('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
         '{"type": "open", "session": 1, "t": "soon"}\n',
         "line 2: open line needs 't' (int or float), got 'soon'"),
    ],
)
def test_a_garbage_recording_is_one_error_naming_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    """Each kind of bad file gives one line naming the file, the line and what is wrong."""
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(RecordingError) as caught:
        load_recording(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_last_line_cut_by_a_crash_is_skipped_and_named(tmp_path: Path) -> None:
    """Lines before a cut last line are kept; the cut one is reported by number."""
    path = tmp_path / "cut.jsonl"
    path.write_text('{"type": "header", "recording": "ibkr-connection", "format": 1}\n'
                    '{"type": "open", "session": 1, "t": 0}\n'
                    '{"type": "msg", "session": 1, "dir": "c2s", "t": 0.1, "fields": ["4')
    recording = load_recording(path)
    assert recording.cut_line == 3
    assert [s.session for s in recording.sessions] == [1]
    assert recording.sessions[0].messages == []
