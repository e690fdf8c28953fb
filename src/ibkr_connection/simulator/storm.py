"""Seeded random faults for rehearsing a bot against the simulator.

:func:`random_fault` injects one fault drawn from :data:`KINDS` (weighted) with
a seeded ``random.Random``, so the same seed gives the same fault sequence;
:func:`heal` undoes every persistent fault. :class:`TracebackCatcher` tells
exceptions caught late in ibkr_connection apart from other libraries' ones.
:class:`StormBot` places and cancels orders through a storm (re-placing only
what IB never received) and :func:`audit_orders` checks the gateway's record
against the bot's book: nothing left uncertain, nothing sent twice, no fill
lost or doubled. Used by the reliability tests and ``benchmarks/fault_storm.py``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ibkr_connection.errors import OrderRejectedError
from ibkr_connection.simulator.gateway import FakeGateway

#: Codes a storm sends: the code table's connection codes, a log-only one, an unknown one.
CODES = (1100, 1101, 1102, 2103, 2104, 2105, 2106, 2157, 2158, 2110, 1300,
         326, 502, 504, 10182, 9999)
#: Startup requests whose end a storm may withhold.
HELD = ("reqPositions", "reqExecutions", "reqOpenOrders", "reqAccountUpdates")
#: Fault kinds and their weights. The order faults catch the bot's next order
#: request (lost on its way in, its answer lost, a drop right after it); the
#: gateway fills or cancels a working order whether or not the bot is there.
KINDS = {"code": 8, "drop": 2, "listening": 1, "restart": 1, "stall": 1,
         "handshake_delay": 1, "held_sync": 1, "order_lost": 1, "order_ack_lost": 1,
         "order_drop_after": 1, "fill_working": 1, "cancel_working": 1}


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
    elif kind.startswith("order_"):
        request = "cancelOrder" if rng.random() < 0.25 else "placeOrder"
        arm = {"order_lost": gw.lose_next_order, "order_ack_lost": gw.lose_next_order_ack,
               "order_drop_after": gw.drop_after_next_order}[kind]
        arm(request)
    elif kind in ("fill_working", "cancel_working"):
        working = sorted(o.order_id for o in gw.orders.values() if not o.is_done)
        if working:
            order_id = rng.choice(working)
            if kind == "fill_working":
                gw.fill_order(order_id)
            else:
                gw.cancel_order(order_id)
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
    gw.clear_order_faults()
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


class StormBot:
    """A bot trading through a storm: it places and cancels, and re-places only what IB never got.

    It acts only while the session is usable, never retries a refused or
    uncertain request by itself, and re-places an order (same orderRef, a
    new order id) only once its resolution says ``NotReceived``.

    Args:
        api: an :class:`~ibkr_connection.broker.IBKRIBInsyncApi` (or anything
            with its ``connected``, ``orders``, ``place_order``, ``cancel_order``
            and ``orderResolvedEvent``).
        contract: the contract traded.
        new_order: makes a new order carrying the given orderRef.
        rng: the bot's own seeded random source.
    """

    def __init__(self, api: Any, contract: Any, new_order: Callable[[str], Any],
                 rng: random.Random) -> None:
        self.api = api
        self.contract = contract
        self.new_order = new_order
        self.rng = rng
        self.placed = 0
        self.cancels = 0
        self.refused = 0
        self.replaced = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._to_place_again: list[str] = []
        self._serial = 0
        api.orderResolvedEvent += self._on_resolved

    def _on_resolved(self, entry: Mapping[str, Any], outcome: Any) -> None:
        self.outcomes[outcome.status] += 1
        if not outcome.received and outcome.request == "place":
            self._to_place_again.append(entry["order_ref"])

    async def run(self, interval: float = 0.02) -> None:
        """Act every ``interval`` seconds until cancelled."""
        while True:
            self.act()
            await asyncio.sleep(interval)

    def act(self) -> None:
        """Do one thing, if the session is usable: place again, cancel, or place."""
        api = self.api
        if not api.connected:
            return
        working = [e["order_id"] for e in api.orders.values()
                   if e["status"] in ("Submitted", "PreSubmitted") and e["order_ref"]]
        try:
            if self._to_place_again:
                ref = self._to_place_again[0]
                api.place_order(self.contract, self.new_order(ref))
                self._to_place_again.pop(0)
                self.replaced += 1
            elif working and self.rng.random() < 0.3:
                api.cancel_order(self.rng.choice(working))
                self.cancels += 1
            else:
                self._serial += 1
                api.place_order(self.contract, self.new_order(f"storm-{self._serial}"))
                self.placed += 1
        except OrderRejectedError:
            self.refused += 1


@dataclass(frozen=True)
class OrderAudit:
    """The gateway's record of a bot's orders against the bot's book.

    Attributes:
        orders: orders the gateway booked for the bot.
        uncertain: book entries still ``Uncertain``.
        not_received: book entries ``NotReceived`` (the gateway never had them).
        sent_twice: order ids the gateway received more than once, plus
            orderRefs it booked more than once (the bot never modifies).
        fills_lost: the gateway's executions missing from the order's entry.
        fills_doubled: executions booked more than once, or booked without
            being the gateway's.
    """

    orders: int
    uncertain: int
    not_received: int
    sent_twice: int
    fills_lost: int
    fills_doubled: int

    @property
    def clean(self) -> bool:
        """True if nothing is uncertain, sent twice, lost or doubled."""
        return not (self.uncertain or self.sent_twice or self.fills_lost or self.fills_doubled)

    def line(self) -> str:
        """The audit in one line."""
        return (f"{self.orders} orders at the gateway, {self.uncertain} Uncertain, "
                f"{self.not_received} NotReceived, {self.sent_twice} sent twice, "
                f"{self.fills_lost} fills lost, {self.fills_doubled} fills doubled")


def audit_orders(gw: FakeGateway, orders: Mapping[str, Mapping[str, Any]],
                 client_id: int) -> OrderAudit:
    """Check a bot's book (``api.orders``) against the gateway's record of its orders.

    Args:
        gw: the gateway.
        orders: the bot's book entries.
        client_id: the bot's client id.
    """
    ids = collections.Counter(int(r.fields[1])
                              for r in gw.requests_named("placeOrder", client_id))
    mine = [o for o in gw.orders.values() if o.client_id == client_id]
    refs = collections.Counter(o.order_ref for o in mine if o.order_ref)
    sent_twice = sum(n - 1 for n in ids.values() if n > 1) + sum(
        n - 1 for n in refs.values() if n > 1)
    at_gateway = {ex.exec_id: ex.order.perm_id for ex in gw.executions
                  if ex.order.client_id == client_id}
    booked: collections.Counter[tuple[str, int]] = collections.Counter(
        (execution["execution_id"], entry["perm_id"])
        for entry in orders.values() for execution in entry["executions"])
    right = {exec_id for exec_id, perm in at_gateway.items() if booked[(exec_id, perm)]}
    return OrderAudit(
        orders=len(mine),
        uncertain=sum(1 for e in orders.values() if e["status"] == "Uncertain"),
        not_received=sum(1 for e in orders.values() if e["status"] == "NotReceived"),
        sent_twice=sent_twice,
        fills_lost=len(at_gateway) - len(right),
        fills_doubled=sum(booked.values()) - len(right),
    )
