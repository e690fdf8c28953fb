"""The timeline picture: states as bands, faults as marks; from a journal through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ibkr_connection.timeline import Band, Lane, Mark, render_svg, timeline_from_journal

JOURNAL = (
    '{"type": "header", "port": 4002, "client_ids": [7], "seed": 0, "backoff": '
    '{"initial_delay": 0.05, "factor": 2.0, "max_delay": 0.25, "costly_delay": 1.0, '
    '"max_costly_delay": 10.0, "jitter": 0.1, "max_attempts": null}, '
    '"restore_timeout": 120.0, "maintenance_restore_timeout": 900.0, '
    '"same_client_id_retries": 1}\n'
    '{"type": "input", "at": 10.0, "input": "connect", "state": "connecting"}\n'
    '{"type": "input", "at": 10.1, "input": "attempt_succeeded", "state": "connected"}\n'
    '{"type": "input", "at": 70.0, "input": "connectivity_lost", "code": 1100, '
    '"state": "lost"}\n'
    '{"type": "input", "at": 100.0, "input": "restored_data_kept", "code": 1102, '
    '"state": "connected"}\n'
)


def test_render_draws_a_band_per_state_and_a_mark_per_fault() -> None:
    """Two lanes, three bands, two marks: each shows up with its colour and its title."""
    lanes = [Lane("manager", [Band(0, 50, "connected"), Band(50, 60, "lost")]),
             Lane("naive", [Band(0, 100, "disconnected")])]
    svg = render_svg(lanes, [Mark(50, "link_loss", "1101"), Mark(80, "drop")], end=100.0,
                     windows=[(90.0, 100.0)], title="a test")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert ">manager</text>" in svg and ">naive</text>" in svg
    assert "<title>lost 50-60s</title>" in svg
    assert "<title>link_loss 1101 at 50s</title>" in svg
    assert "<title>drop  at 80s</title>" in svg
    assert 'fill="#d9534f"><title>lost' in svg  # lost is red


def test_journal_becomes_bands_from_the_first_input() -> None:
    """The states after each input, merged while unchanged; the 1100 marked at 60 s."""
    lane, marks, end = timeline_from_journal(JOURNAL.splitlines(), "j")
    assert [(b.start, b.end, b.label) for b in lane.bands] == [
        (0.0, 0.09999999999999964, "connecting"), (0.09999999999999964, 60.0, "connected"),
        (60.0, 90.0, "lost"), (90.0, 90.0, "connected")]
    assert [(m.at, m.kind) for m in marks] == [(60.0, "link_loss")]
    assert end == 90.0


def test_replay_cli_writes_the_timeline(tmp_path: Path) -> None:
    """`ibkr-connection replay --timeline FILE.svg JOURNAL` replays and writes the picture."""
    journal = tmp_path / "j.jsonl"
    journal.write_text(JOURNAL, encoding="utf-8")
    out = tmp_path / "t.svg"
    done = subprocess.run(
        [sys.executable, "-m", "ibkr_connection.cli", "replay", "--timeline", str(out),
         str(journal)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"timeline written: {out}" in done.stdout
    assert "4 inputs replayed: all transitions match" in done.stdout
    svg = out.read_text(encoding="utf-8")
    assert "<title>lost 60-90s</title>" in svg
