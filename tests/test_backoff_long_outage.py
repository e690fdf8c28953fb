"""The backoff schedule through an outage of any length (the weekly login)."""

from __future__ import annotations

import logging
import random
import re

import pytest

from ibkr_connection import BackoffPolicy
from ibkr_connection.clock import ManualClock
from ibkr_connection.errors import ConfigError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects


@pytest.mark.parametrize("failures", [241, 1025, 5_000, 100_000])
def test_delay_after_a_minute_of_refused_connects_is_the_long_outage_cap(failures: int) -> None:
    """Refused for over a minute (240 failures): 1.8-2.0 s delays, no overflow."""
    policy = BackoffPolicy()
    delay = policy.delay(failures, costly=False, rng=random.Random(0))
    assert 1.8 < delay <= 2.0


@pytest.mark.parametrize("failures", [4, 100, 239, 240])
def test_delay_in_the_first_minute_of_refused_connects_stays_at_the_fast_cap(
        failures: int) -> None:
    """Up to the 240th refused connect the delay stays within the 250 ms cap."""
    delay = BackoffPolicy().delay(failures, costly=False, rng=random.Random(0))
    assert 0.225 <= delay <= 0.25


def test_costly_delay_after_thousands_of_failures_stays_at_the_cap() -> None:
    """Thousands of costly failures in a row: 9-10 s, no overflow, no long-outage cap."""
    delay = BackoffPolicy().delay(3_000, costly=True, rng=random.Random(0))
    assert 9.0 <= delay <= 10.0


def test_long_outage_cap_can_be_turned_off() -> None:
    """long_outage_after=None keeps the 250 ms cap for ever."""
    delay = BackoffPolicy(long_outage_after=None).delay(10_000, costly=False,
                                                        rng=random.Random(0))
    assert 0.225 <= delay <= 0.25


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"long_outage_after": 0}, "long_outage_after"),
        ({"long_outage_after": -5}, "long_outage_after"),
        ({"long_outage_after": 2.5}, "long_outage_after"),
        ({"long_outage_after": True}, "long_outage_after"),
        ({"long_outage_delay": 0.1}, "long_outage_delay"),
        ({"long_outage_delay": -1.0}, "long_outage_delay"),
        ({"long_outage_delay": float("inf")}, "long_outage_delay"),
        ({"long_outage_delay": float("nan")}, "long_outage_delay"),
        ({"long_outage_delay": "2"}, "long_outage_delay"),
        ({"max_delay": 3.0}, "long_outage_delay"),
    ],
)
def test_bad_long_outage_settings_are_refused(changes: dict[str, object], field: str) -> None:
    """A long-outage setting that is not a count >= 1 or a cap >= max_delay is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        BackoffPolicy(**changes)  # type: ignore[arg-type]
    assert caught.value.field == field


def _delays_through_refusals(machine: RecordedMachine, effects: RecordingEffects,
                             refusals: int) -> list[float]:
    """Fail ``refusals`` cheap attempts in a row; return the retry delays drawn."""
    before = len(effects.args_of("schedule_retry"))
    for _ in range(refusals):
        machine.handle(Input(InputKind.ATTEMPT_FAILED, message="refused"))
        assert machine.state is ConnectionState.BACKOFF
        machine.handle(Input(InputKind.RETRY_DUE))
    return [args[0] for args in effects.args_of("schedule_retry")[before:]]


def test_machine_slows_down_after_240_refusals_and_resets_after_a_session() -> None:
    """The 241st refused connect waits 1.8-2 s; after a session the schedule starts over."""
    effects = RecordingEffects()
    machine = RecordedMachine(effects, ManualClock(), port=4002, client_ids=[7],
                              policy=RecoveryPolicy())
    machine.handle(Input(InputKind.CONNECT))
    delays = _delays_through_refusals(machine, effects, 241)
    assert len(delays) == 241
    assert all(delay <= 0.25 for delay in delays[:240])
    assert 1.8 < delays[240] <= 2.0
    machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED))
    assert machine.state is ConnectionState.CONNECTED
    # The socket closing is the new series' first failure; 239 refusals follow.
    machine.handle(Input(InputKind.SOCKET_CLOSED))
    first = effects.args_of("schedule_retry")[-1][0]
    machine.handle(Input(InputKind.RETRY_DUE))
    after = _delays_through_refusals(machine, effects, 239)
    assert 0.045 <= first <= 0.05
    assert all(delay <= 0.25 for delay in after)


def test_a_refused_series_logs_its_first_failure_one_line_a_minute_and_the_recovery(
        caplog: pytest.LogCaptureFixture) -> None:
    """300 refused connects 1 s apart: INFO for failure 1, failures 61/121/181/241, the recovery."""
    clock = ManualClock()
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7],
                              policy=RecoveryPolicy())
    caplog.set_level(logging.DEBUG, logger="ibkr_connection.machine")
    machine.handle(Input(InputKind.CONNECT))
    for _ in range(300):
        machine.handle(Input(InputKind.ATTEMPT_FAILED, message="refused"))
        machine.handle(Input(InputKind.RETRY_DUE))
        clock.advance(1.0)
    machine.handle(Input(InputKind.ATTEMPT_SUCCEEDED))
    moves = [r for r in caplog.records
             if r.name == "ibkr_connection.machine" and r.getMessage().startswith("connection ")]
    info = [re.match(r"connection (\w+ -> \w+) on \w+.*?\(attempt (\d+)", r.getMessage())
            for r in moves if r.levelno == logging.INFO]
    assert [m.groups() if m else None for m in info] == [
        ("disconnected -> connecting", "1"),
        ("connecting -> backoff", "1"),
        ("backoff -> connecting", "2"),
        ("connecting -> backoff", "61"),
        ("connecting -> backoff", "121"),
        ("connecting -> backoff", "181"),
        ("connecting -> backoff", "241"),
        ("connecting -> connected", "301"),
    ]
    assert len(moves) == 1 + 600 + 1  # every move still logged, the rest at DEBUG
    assert len(machine.transcript) == 602


def test_refused_connects_of_a_long_outage_share_one_cause_string() -> None:
    """Thousands of identical refusals keep one copy of their text in the transcript."""
    from ibkr_connection.codes import classify_failure

    def refused() -> str:
        error = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 4002)")
        return classify_failure(error)[1].message

    first, second = refused(), refused()
    assert first == "connection refused: ConnectionRefusedError(111, \"Connect call failed " \
                    "('127.0.0.1', 4002)\")"
    assert first is second
