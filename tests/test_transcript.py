"""The transcript: a compact sequence of transitions that reads like a list."""

from __future__ import annotations

import pytest

from ibkr_connection.inputs import InputKind
from ibkr_connection.outputs import Transcript, Transition
from ibkr_connection.table import ConnectionState as S


def _refused(at: float, attempt: int) -> list[Transition]:
    return [
        Transition(S.BACKOFF, S.CONNECTING, InputKind.RETRY_DUE, at, "retry due", None, attempt),
        Transition(S.CONNECTING, S.BACKOFF, InputKind.ATTEMPT_FAILED, at + 0.001,
                   "connect refused: ConnectionRefusedError(111)", None, attempt, 2.0),
    ]


def test_a_transcript_reads_like_the_list_of_its_transitions() -> None:
    """Length, indexing from either end, slices, iteration and equality match the list's."""
    made = [Transition(S.DISCONNECTED, S.CONNECTING, InputKind.CONNECT, 0.0, "start()")]
    for n in range(1, 4):
        made += _refused(float(n), n)
    made.append(Transition(S.CONNECTED, S.LOST, InputKind.CONNECTIVITY_LOST, 9.5,
                           "Connectivity between IB and TWS has been lost.", 1100, 4))
    transcript = Transcript(made)

    assert len(transcript) == 8
    assert transcript[0] == made[0]
    assert transcript[-1] == made[-1]
    assert transcript[-1].code == 1100
    assert transcript[2].delay == 2.0
    assert transcript[1].delay is None
    assert transcript[2:5] == made[2:5]
    assert transcript[::-2] == made[::-2]
    assert list(transcript) == made
    assert transcript == made
    assert transcript == Transcript(made)
    assert transcript != made[:-1]
    assert str(transcript[-1]) == "connected -> lost (connectivity_lost, 1100)"


def test_reading_past_either_end_raises_index_error() -> None:
    """As a list does: index len and -(len + 1) are out of range."""
    transcript = Transcript(_refused(1.0, 1))

    with pytest.raises(IndexError):
        transcript[2]
    with pytest.raises(IndexError):
        transcript[-3]
    assert not Transcript()
    assert Transcript() == []


def test_keep_last_forgets_the_oldest_and_keeps_the_order() -> None:
    """After keep_last(3) of ten, the three most recent remain, oldest first."""
    made: list[Transition] = []
    for n in range(5):
        made += _refused(float(n), n)
    transcript = Transcript(made)

    transcript.keep_last(3)
    transcript.append(made[0])

    assert transcript == [*made[-3:], made[0]]
    transcript.keep_last(0)
    assert len(transcript) == 0
