"""Seeded random faults for rehearsing a bot against the simulator.

:func:`random_fault` injects one fault drawn from :data:`KINDS` (weighted) with
a seeded ``random.Random``, so the same seed gives the same fault sequence;
:func:`heal` undoes every persistent fault. :class:`TracebackCatcher` tells
exceptions caught late in ibkr_connection apart from other libraries' ones.
Used by the reliability tests and ``benchmarks/fault_storm.py``.
"""

from __future__ import annotations

import logging
import random

from ibkr_connection.simulator.gateway import FakeGateway

#: Codes a storm sends: the code table's connection codes, a log-only one, an unknown one.
CODES = (1100, 1101, 1102, 2103, 2104, 2105, 2106, 2157, 2158, 2110, 1300,
         326, 502, 504, 10182, 9999)
#: Startup requests whose end a storm may withhold.
HELD = ("reqPositions", "reqExecutions", "reqOpenOrders", "reqAccountUpdates")
#: Fault kinds and their weights.
KINDS = {"code": 8, "drop": 2, "listening": 1, "restart": 1, "stall": 1,
         "handshake_delay": 1, "held_sync": 1}


async def random_fault(gw: FakeGateway, rng: random.Random) -> str:
    """Inject one random fault; return its label (the kind, or ``"code N"``)."""
    kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
    if kind == "code":
        code = rng.choice(CODES)
        await gw.send_error(code)
        return f"code {code}"
    if kind == "drop":
        await gw.drop_clients()
    elif kind == "listening":
        await (gw.stop_listening() if gw.listening else gw.start_listening())
    elif kind == "restart":
        await gw.restart(outage=rng.uniform(0.0, 0.08))
    elif kind == "stall":
        if gw.stalled:
            gw.unstall()
        else:
            gw.stall()
    elif kind == "handshake_delay":
        gw.handshake_delay = rng.choice((0.0, 0.05, 0.2, 1.0))
    else:
        name = rng.choice(HELD)
        if rng.random() < 0.5:
            gw.hold_sync(name)
        else:
            gw.release_sync(name)
    return kind


async def heal(gw: FakeGateway) -> None:
    """Undo every persistent fault: listening, answering, syncing, farms OK, 1102."""
    gw.unstall()
    gw.release_sync()
    gw.handshake_delay = 0.0
    await gw.start_listening()
    await gw.send_error(1102)
    for farm in list(gw.farms):
        await gw.farm_ok(farm)


def from_ibkr_connection(record: logging.LogRecord) -> bool:
    """True if the record is ibkr_connection's, or its traceback passes through its code."""
    if record.name.startswith("ibkr_connection"):
        return True
    exc = record.exc_info[1] if record.exc_info else None
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None:
        if "/ibkr_connection/" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class TracebackCatcher(logging.Handler):
    """Collects log records that carry a traceback (an exception caught late).

    ``records`` holds ibkr_connection's (its loggers, or a traceback through its
    code); ``foreign`` the rest, e.g. ib_insync's own fire-and-forget request
    after a 1102 whose future fails when the socket drops.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.foreign: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Sort a record with a traceback into ``records`` or ``foreign``."""
        if record.exc_info:
            (self.records if from_ibkr_connection(record) else self.foreign).append(record)

    def escaped(self) -> list[str]:
        """Return ibkr_connection's captured records as text."""
        return [f"{r.name}: {r.getMessage()}" for r in self.records]
