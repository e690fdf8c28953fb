"""The backoff schedule holds its cap through an outage of any length (the weekly login)."""

from __future__ import annotations

import random

import pytest

from ibkr_connection import BackoffPolicy


@pytest.mark.parametrize("failures", [1025, 5_000, 100_000])
def test_delay_after_thousands_of_refused_connects_stays_at_the_cap(failures: int) -> None:
    """A gateway down for hours (4 refused connects a second) still gets 0.225-0.25 s delays."""
    policy = BackoffPolicy()
    delay = policy.delay(failures, costly=False, rng=random.Random(0))
    assert 0.225 <= delay <= 0.25


def test_costly_delay_after_thousands_of_failures_stays_at_the_cap() -> None:
    """Thousands of costly failures in a row: 9-10 s, no overflow."""
    delay = BackoffPolicy().delay(3_000, costly=True, rng=random.Random(0))
    assert 9.0 <= delay <= 10.0
