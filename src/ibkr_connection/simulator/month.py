"""A month of IB's schedule as data, and a loop whose time jumps: the month benchmark's parts.

:func:`generate` draws a seeded month (or any number of days) of what IB and
the gateway do to a bot: the nightly server reset, the gateway's daily
auto-restart and the weekly restart that needs a person to log in, data-farm
flaps, 1100 -> 1101/1102 episodes, dropped sockets, a hang and a wedge now and
then, a 1300, and the bot's orders through the trading day, some caught by an
order fault. The gateway's side is a list of scenario steps in the
simulator's own format (:meth:`Month.toml` writes a file ``ibkr-connection sim
--scenario`` plays; ``benchmarks/month.toml`` is the default month). Three
things are not scenario actions and stay on the Python side, played by the
benchmark: the orders (a bot places them, not the gateway), the order faults
(:meth:`~ibkr_connection.simulator.faults.FaultInjection.lose_next_order`,
``lose_next_order_ack`` and ``drop_after_next_order`` have no action) and the
weekly login (a ``restart`` whose outage is the time until the person logs in).

:class:`VirtualTimeLoop` is an asyncio loop whose clock jumps to the next
timer whenever nothing is ready: socket I/O stays real (loopback), and every
timer of the manager, the client library and the simulator runs on the jumped
clock. It does what ``looptime`` does, without the no-op turns looptime spends
before each jump (42 by default; at ``noop_cycles=0`` still one extra turn),
which the month pays about a million times; and it never jumps while loopback
I/O of its own is still in the kernel's hands (:mod:`.loopback`).

Rates: each :data:`RATES` entry says where it comes from; most are
assumptions, marked so.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import logging
import random
import select
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from time import sleep
from typing import Any
from zoneinfo import ZoneInfo

from ibkr_connection.simulator.loopback import Loopback, is_loopback, waits_to_write

logger = logging.getLogger(__name__)

ET = ZoneInfo("America/New_York")

#: Where the month starts: Monday 2 March 2026, 00:00 New York (05:00 UTC).
#: US daylight saving time begins on Sunday 8 March, so the month also shows
#: the reset window moving an hour in UTC.
MONTH_START = datetime(2026, 3, 2, 0, 0, tzinfo=ET).astimezone(timezone.utc)


@dataclass(frozen=True)
class Rate:
    """How often something happens, and for how long.

    Attributes:
        per_day: mean events per day (a Poisson rate), or 1 for a daily event.
        low: shortest duration in seconds.
        high: longest duration in seconds.
        source: where the figure comes from, or ``assumption: ...``.
    """

    per_day: float
    low: float
    high: float
    source: str


#: The month's rates. The reset window itself is the policy's
#: ``NIGHTLY_RESET_US`` (23:45-00:45 New York).
RATES: dict[str, Rate] = {
    "nightly_reset": Rate(1.0, 30.0, 300.0, (
        "IB: 'You are very likely to lose connectivity to our servers at least once a day due "
        "to our daily server maintenance' (interactivebrokers.github.io/tws-api/"
        "message_codes.html); the window is the policy's NIGHTLY_RESET_US; the silence "
        "(30-300 s) is an assumption")),
    "daily_restart": Rate(1.0, 60.0, 180.0, (
        "the gateway's Auto restart, once a day (ibkrguides.com/traderworkstation/"
        "auto-restart-considerations.htm), set inside the reset window here; 'only the 2-3 "
        "minutes of the scheduled daily restart' (emailtrader.app, a user report): 60-180 s")),
    "weekly_login": Rate(1.0 / 7.0, 1800.0, 6 * 3600.0, (
        "security tokens invalidated each Sunday at 1:00 am ET, the next start needs a manual "
        "login (ibkrguides.com auto-restart-considerations); the person logs in 0.5-6 h "
        "later: assumption")),
    "farm_flap": Rate(3.0, 5.0, 180.0, "assumption: 3 flaps a day over the three farms"),
    "link_loss": Rate(0.5, 10.0, 90.0, (
        "assumption: a 1100 outside the reset window every other day, restored by 1101 or "
        "1102 within 10-90 s")),
    "drop": Rate(1.0 / 3.0, 0.0, 0.0, "assumption: the API socket drops every third day"),
    "hang": Rate(1.0 / 7.0, 30.0, 120.0, (
        "assumption: a hang (nothing answered, heals by itself) once a week, 30-120 s")),
    "wedge": Rate(1.0 / 14.0, 0.0, 0.0, (
        "assumption: a wedge (only a restart helps; nautilus_trader #4796, "
        "ib-gateway-docker #336) every other week")),
    "port_reset": Rate(1.0 / 30.0, 0.0, 0.0, "assumption: one 1300 a month"),
    "orders": Rate(10.0, 0.0, 0.0, (
        "assumption: 10 market orders per weekday, 09:30-16:00 New York")),
    "order_fault": Rate(0.1, 0.0, 0.0, (
        "assumption: one order in ten caught by a dying socket (lost, its answer lost, or "
        "answered then dropped), far above real life, to exercise the in-flight tracking")),
}

#: The farms the flaps pick from (2103/2104, 2105/2106, 2157/2158).
FARMS = ("usfarm", "ushmds", "secdefil")

#: The order faults, by the FakeGateway method that arms them.
ORDER_FAULTS = ("lose_next_order", "lose_next_order_ack", "drop_after_next_order")


@dataclass(frozen=True)
class Fault:
    """One fault of the month, for the picture and the accounting.

    Attributes:
        at: seconds from the month's start.
        kind: the :data:`RATES` key (``nightly_reset``, ``drop``, ...).
        duration: seconds the gateway cannot serve because of it (0 for a
            drop or a wedge, whose cost is the contender's).
        detail: a few words (farm, restore code).
    """

    at: float
    kind: str
    duration: float
    detail: str = ""


@dataclass(frozen=True)
class PlannedOrder:
    """An order the bot places at ``at`` (seconds from the start), maybe into a fault."""

    at: float
    ref: str
    fault: str | None = None


@dataclass
class Month:
    """A generated month: the gateway's steps, its faults, the bot's orders.

    Attributes:
        start: the wall-clock time at second 0.
        days: how many days it covers.
        seed: the seed it was drawn from.
        steps: scenario steps (``{"at": ..., "action": ..., fields}``), by time.
        faults: the faults, by time.
        orders: the bot's orders, by time.
    """

    start: datetime
    days: int
    seed: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    orders: list[PlannedOrder] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The month's length in seconds."""
        return self.days * 86400.0

    def in_reset_window(self, at: float) -> bool:
        """Return True if second ``at`` falls inside the policy's reset windows."""
        from ibkr_connection.policy import RecoveryPolicy

        return RecoveryPolicy().in_reset_window(self.start + timedelta(seconds=at))

    def reset_windows(self) -> list[tuple[float, float]]:
        """The reset windows as (start, end) seconds, clipped to the month."""
        out: list[tuple[float, float]] = []
        local0 = self.start.astimezone(ET).date()
        for n in range(-1, self.days + 1):
            day = local0 + timedelta(days=n)
            begin = datetime.combine(day, time(23, 45), ET).astimezone(timezone.utc)
            end = datetime.combine(day + timedelta(days=1), time(0, 45), ET).astimezone(
                timezone.utc)
            a = (begin - self.start).total_seconds()
            b = (end - self.start).total_seconds()
            a, b = max(a, 0.0), min(b, self.seconds)
            if a < b:
                out.append((a, b))
        return out

    def cannot_serve(self) -> list[tuple[float, float, str]]:
        """When the gateway could not serve whoever asked: (start, end, why), merged by cause.

        Reset windows, restarts and logins (down), 1100 episodes (cut off from
        IB) and hangs. Drops and wedges are not here: recovering from them is
        the contender's own work.
        """
        spans = [(a, b, "reset window") for a, b in self.reset_windows()]
        for f in self.faults:
            if f.duration > 0 and f.kind in ("daily_restart", "weekly_login", "link_loss",
                                             "hang", "nightly_reset"):
                spans.append((f.at, min(f.at + f.duration, self.seconds), f.kind))
        return sorted(spans)

    def toml(self) -> str:
        """The gateway's side as a scenario file in the simulator's format."""
        lines = [
            f"# A month of IB's schedule: {self.days} days from "
            f"{self.start.isoformat()}, seed {self.seed}.",
            "# Generated by ibkr_connection.simulator.month.generate; rates and their sources",
            "# are in RATES there. Not in this file (no scenario action plays them): the",
            "# bot's orders and the order faults (lose_next_order, lose_next_order_ack,",
            "# drop_after_next_order), which benchmarks/month.py plays from Python.",
            "# Run with: ibkr-connection sim --scenario benchmarks/month.toml (not shipped",
            "# in the package's scenarios: it wedges the gateway, which the proxy refuses).",
            "",
            f'description = "{self.days} days of IB\'s schedule (seed {self.seed}): nightly '
            "resets, daily and weekly restarts, farm flaps, 1100s, drops, hangs, wedges, a "
            '1300"',
        ]
        for step in self.steps:
            lines += ["", "[[step]]"]
            for key, value in step.items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace('"', '\\"') + '"'


def _poisson_times(rng: random.Random, per_day: float, begin: float, end: float) -> list[float]:
    out: list[float] = []
    if per_day <= 0:
        return out
    t = begin
    while True:
        t += rng.expovariate(per_day / 86400.0)
        if t >= end:
            return out
        out.append(t)


def generate(seed: int = 0, days: int = 30, start: datetime = MONTH_START) -> Month:
    """Draw ``days`` days of IB's schedule from ``seed``.

    Args:
        seed: the random source's seed; the same seed gives the same month.
        days: the month's length.
        start: the wall-clock time of second 0 (a midnight in New York).

    Returns:
        The month: the gateway's steps, the faults, the bot's orders.
    """
    rng = random.Random(seed)
    month = Month(start=start, days=days, seed=seed)
    end = month.seconds
    events: list[tuple[float, int, list[dict[str, Any]], Fault | None]] = []
    seq = 0

    def add(at: float, steps: list[dict[str, Any]], fault: Fault | None) -> None:
        nonlocal seq
        seq += 1
        events.append((at, seq, steps, fault))

    #: The gateway's scheduled down time (its restarts, the weekly login's wait).
    offline: list[tuple[float, float]] = []

    def busy(at: float, margin: float = 600.0) -> bool:
        # Scheduled maintenance keeps its own hour, and a gateway that is down
        # (restarting, or waiting for its weekly login) cannot hang or wedge:
        # the process that comes up is a new one. Random faults go elsewhere.
        return any(a - margin <= at <= b + margin
                   for a, b in [*month.reset_windows(), *offline])

    for a, _b in month.reset_windows():
        if a <= 0:
            continue
        local = (start + timedelta(seconds=a)).astimezone(ET)
        # The weekly token invalidation (Sunday 01:00 New York) replaces that
        # night's auto-restart with a restart that waits for a person.
        sunday_night = local.weekday() == 5  # the window opening Saturday 23:45
        r = RATES["nightly_reset"]
        silence = round(rng.uniform(r.low, r.high), 3)
        reset_at = a + rng.uniform(60.0, 900.0)
        code = rng.choice((1101, 1102))
        add(reset_at, [{"action": "nightly_reset", "silence": silence, "restore_code": code}],
            Fault(reset_at, "nightly_reset", silence, str(code)))
        if sunday_night:
            r = RATES["weekly_login"]
            at = a + 3600.0 + 900.0  # 01:30 New York, after the tokens went at 01:00
            outage = round(rng.uniform(r.low, r.high), 3)
            add(at, [{"action": "restart", "outage": outage}, {"action": "unstall"}],
                Fault(at, "weekly_login", outage))
            offline.append((at, at + outage))
        else:
            r = RATES["daily_restart"]
            at = reset_at + silence + rng.uniform(60.0, 600.0)
            outage = round(rng.uniform(r.low, r.high), 3)
            add(at, [{"action": "restart", "outage": outage}, {"action": "unstall"}],
                Fault(at, "daily_restart", outage))
            offline.append((at, at + outage))

    for at in _poisson_times(rng, RATES["farm_flap"].per_day, 0.0, end):
        if busy(at):
            continue
        r = RATES["farm_flap"]
        farm = rng.choice(FARMS)
        down = round(rng.uniform(r.low, r.high), 3)
        add(at, [{"action": "farm_broken", "farm": farm}], Fault(at, "farm_flap", 0.0, farm))
        add(at + down, [{"action": "farm_ok", "farm": farm}], None)
    for at in _poisson_times(rng, RATES["link_loss"].per_day, 0.0, end):
        if busy(at):
            continue
        r = RATES["link_loss"]
        down = round(rng.uniform(r.low, r.high), 3)
        code = rng.choice((1101, 1102))
        add(at, [{"action": "error", "code": 1100}], Fault(at, "link_loss", down, str(code)))
        add(at + down, [{"action": "error", "code": code}], None)
    for at in _poisson_times(rng, RATES["drop"].per_day, 0.0, end):
        if not busy(at):
            add(at, [{"action": "drop_clients"}], Fault(at, "drop", 0.0))
    for at in _poisson_times(rng, RATES["hang"].per_day, 0.0, end):
        if busy(at):
            continue
        r = RATES["hang"]
        down = round(rng.uniform(r.low, r.high), 3)
        add(at, [{"action": "stall"}], Fault(at, "hang", down))
        add(at + down, [{"action": "unstall"}], None)
    for at in _poisson_times(rng, RATES["wedge"].per_day, 0.0, end):
        if not busy(at):
            add(at, [{"action": "wedge"}], Fault(at, "wedge", 0.0))
    for at in _poisson_times(rng, RATES["port_reset"].per_day, 0.0, end):
        if not busy(at):
            add(at, [{"action": "reset_port"}], Fault(at, "port_reset", 0.0))

    n = 0
    for day in range(days):
        local = (start + timedelta(days=day)).astimezone(ET)
        if local.weekday() >= 5:
            continue
        open_ = datetime.combine(local.date(), time(9, 30), ET).astimezone(timezone.utc)
        close = datetime.combine(local.date(), time(16, 0), ET).astimezone(timezone.utc)
        a, b = (open_ - start).total_seconds(), (close - start).total_seconds()
        for at in sorted(rng.uniform(a, b) for _ in range(int(RATES["orders"].per_day))):
            n += 1
            caught = rng.choice(ORDER_FAULTS) if rng.random() < RATES["order_fault"].per_day \
                else None
            month.orders.append(PlannedOrder(round(at, 3), f"month-{n}", caught))

    events.sort(key=lambda e: (e[0], e[1]))
    for at, _, steps, fault in events:
        for step in steps:
            month.steps.append({"at": round(at, 3), **step})
        if fault is not None:
            month.faults.append(fault)
    return month


def faults_from_steps(steps: list[dict[str, Any]]) -> list[Fault]:
    """The faults a list of scenario steps plays, for the accounting of an edited month.

    A ``restart`` whose outage is longer than 10 minutes counts as the weekly
    login, a shorter one as the daily restart; a 1100 lasts until the next
    1101/1102, a ``stall`` until the next ``unstall``.
    """
    faults: list[Fault] = []
    ordered = sorted(steps, key=lambda step: float(step["at"]))
    for index, step in enumerate(ordered):
        at, action = float(step["at"]), step["action"]

        def until(match: Any, _index: int = index, _at: float = at) -> float:
            later = (float(s["at"]) for s in ordered[_index + 1:] if match(s))
            return next(later, _at) - _at

        if action == "nightly_reset":
            faults.append(Fault(at, "nightly_reset", float(step.get("silence", 2.0)),
                                str(step.get("restore_code", 1101))))
        elif action == "restart":
            outage = float(step.get("outage", 1.0))
            faults.append(Fault(at, "weekly_login" if outage > 600 else "daily_restart", outage))
        elif action == "error" and step.get("code") == 1100:
            faults.append(Fault(at, "link_loss", until(
                lambda s: s["action"] == "error" and s.get("code") in (1101, 1102))))
        elif action == "stall":
            faults.append(Fault(at, "hang", until(lambda s: s["action"] == "unstall")))
        elif action in ("drop_clients", "wedge", "reset_port", "farm_broken"):
            kind = {"drop_clients": "drop", "reset_port": "port_reset",
                    "farm_broken": "farm_flap"}.get(action, action)
            faults.append(Fault(at, kind, 0.0, str(step.get("farm", ""))))
    return faults


#: Seconds of real time a jump waits for the loop's own loopback I/O before it gives
#: up (it never should: see VirtualTimeLoop), counted in polls, not read off a clock:
#: a machine paused while its kernel still owes the I/O (a VM's vCPU) must not spend it.
HOLD_LIMIT = 2.0
#: Seconds of real time the check mode waits before its look for I/O before a jump.
CHECK_LOOK = 0.0002
#: The longest single real wait while holding (a receiver whose reading is
#: paused is not in the selector, so its bytes' arrival wakes nothing).
_HOLD_POLL = 0.01
#: The polls that found nothing after which a hold gives up (HOLD_LIMIT's worth).
_HOLD_POLLS = round(HOLD_LIMIT / _HOLD_POLL)
#: asyncio's own thresholds for a turn (base_events: a heap of more than 100
#: timers, over half of them cancelled, is rebuilt; no wait is longer than a day).
_MANY_TIMERS = 100
_CANCELLED_SHARE = 0.5
_LONGEST_WAIT = 24 * 3600.0
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
#: An epoll event that is not only EPOLLIN (it wakes a writer), not only EPOLLOUT (a reader).
#: (Not used where there is no epoll: the loop takes asyncio's turn there.)
_NOT_IN = ~getattr(select, "EPOLLIN", 1)
_NOT_OUT = ~getattr(select, "EPOLLOUT", 4)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer when nothing is ready.

    Each turn first polls the sockets without waiting; only when nothing is
    ready and a timer is due later does the clock jump to it. It never jumps
    while loopback I/O it started is still in the kernel's hands: bytes
    written between two of its own sockets and not yet readable (a delivery
    the kernel defers, see :class:`.loopback.Loopback`), a connect to a loopback
    address (a refused one can take 8-35 ms when the gateway's own earlier
    close left a TIME_WAIT socket on its port), a full send buffer towards one
    of its own readers. It waits for them in real time instead, so the same
    inputs give the same virtual times however fast or loaded the machine is
    (issue 21: the month's "same seed, same transcript"). After
    :data:`HOLD_LIMIT` of real time spent polling for it (a pause of the
    machine spends none of it) it logs a warning, counts the jump in
    :attr:`forced` and jumps anyway.
    Answers from peers outside the loop are not waited for: nothing says they
    are coming, and a jump can overtake them (a connect to another host, or
    a send to a peer outside, gets 50 ms of real time). With no timer at all
    it waits for real I/O.

    Args:
        start: the loop's time at creation.
        check: a diagnostic mode: before every jump, look for I/O again after
            :data:`CHECK_LOOK`; what turns up is counted and handled instead.

    Attributes:
        jumps: how many times the clock jumped.
        holds: how many times a jump waited for loopback I/O (a few per
            simulated week of the month: its refused connects).
        forced: jumps taken though its loopback I/O was still under way after
            :data:`HOLD_LIMIT` (each may land an outcome at a virtual time that
            depends on the machine's speed).
        outside: jumps taken after the 50 ms wait for a socket waiting to be
            writable towards a peer outside: the same risk, unaccounted.
        late: with ``check``, jumps the look found I/O for (a plain loop
            would have jumped past it); ``late_what`` says what, for the first 20.
        threaded: with ``check``, jumps taken while another thread was alive.
    """

    def __init__(self, start: float = 0.0, *, check: bool = False) -> None:
        super().__init__()
        self._now = start
        self.jumps = 0
        self.holds = 0
        self.forced = 0
        self.outside = 0
        self.late = 0
        self.late_what: list[str] = []
        self.threaded = 0
        self.check = check
        selector = self._selector  # type: ignore[attr-defined]
        self._real_select = selector.select
        self._loopback = Loopback(selector)
        #: Polls a hold has made in a row that found nothing (see HOLD_LIMIT).
        self._held_polls = 0
        # The turn below polls epoll itself (see _run_once); another selector, or
        # a loop in debug mode, takes asyncio's own turn through this wrapper.
        epoll = getattr(selector, "_selector", None)
        self._epoll: Any = epoll if isinstance(selector, selectors.EpollSelector) else None
        self._fd_to_key: dict[int, selectors.SelectorKey] = getattr(selector, "_fd_to_key", {})

        def select(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            ready: list[tuple[selectors.SelectorKey, int]] = self._real_select(0)
            if ready or timeout == 0:
                self._held_polls = 0
                return ready
            return self._wait(timeout)

        selector.select = select

    def _wait(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        """Nothing is ready and the next timer is ``timeout`` away: wait, or jump to it."""
        if timeout is None:
            # Nothing scheduled: wait for real I/O.
            waited: list[tuple[selectors.SelectorKey, int]] = self._real_select(1.0)
            return waited
        loopback = self._loopback
        writing = waits_to_write(self._selector)  # type: ignore[attr-defined]
        if (loopback.pipes and loopback.in_flight()) or (writing and loopback.writing()):
            # Loopback I/O in the kernel's hands (bytes on their way between
            # two of the loop's sockets, a connect to a loopback address, a
            # send to a reader of the loop): wait for it, without moving the
            # clock. A jump now would land its outcome at a virtual time that
            # depends on the machine's load (issue 21).
            self.holds += 1
            if self._held_polls < _HOLD_POLLS:
                # A full poll: the clock stands still, the next timer's distance is moot.
                waited = self._real_select(_HOLD_POLL)
                self._held_polls = 0 if waited else self._held_polls + 1
                return waited
            logger.warning("loopback I/O of the loop not done after %d polls of %g s: "
                           "the clock jumps on (%s)", _HOLD_POLLS, _HOLD_POLL,
                           loopback.settle())
            self._held_polls = 0
            self.forced += 1
        elif writing:
            # A connect to another host (or a full send buffer to a peer
            # outside the loop): give the real I/O a moment, then jump.
            waited = self._real_select(min(timeout, 0.05))
            if waited:
                return waited
            self.outside += 1
        if self.check:
            waited = self._look_late()
            if waited:
                return waited
            if threading.active_count() > 1:
                self.threaded += 1
        self._now += timeout
        self.jumps += 1
        return []

    def _look_late(self) -> list[tuple[selectors.SelectorKey, int]]:
        """The check mode's look before a jump: I/O that a slower machine would have seen."""
        # A sleep, then a poll: epoll's own timeout counts whole milliseconds.
        sleep(CHECK_LOOK)
        waited: list[tuple[selectors.SelectorKey, int]] = self._real_select(0)
        if waited:
            self.late += 1
            found = ", ".join(f"fd {key.fd} events {mask}" for key, mask in waited)
            if len(self.late_what) < 20:
                self.late_what.append(f"at {self._now:.6f}: {found}")
            logger.warning("I/O turned up after a poll found nothing, at %.6f: %s", self._now,
                           found)
        return waited

    def _run_once(self) -> None:
        """One turn of the loop: asyncio's turn, with the poll and the jump inline.

        The same steps in the same order as ``BaseEventLoop._run_once`` (drop
        cancelled timers, poll, queue the ready callbacks, then the timers due,
        run what was queued before the turn began), so the same inputs run the
        same callbacks at the same virtual times; what goes is the calls
        between them (the selector's wrapper, its ``select``, ``_process_events``,
        the clock read through ``time()``): a probe cycle of the month is three
        turns, ~2.5 million turns a month (issue 21). A loop in debug mode, or
        on a selector other than epoll, takes asyncio's own turn.
        """
        # asyncio's private fields (the heap, the ready queue, the handles'
        # _when, _cancelled and _run) are read through ``base``, typed loosely.
        base: Any = self
        epoll = self._epoll
        if epoll is None or base._debug:
            super()._run_once()  # type: ignore[misc]
            return
        scheduled: list[Any] = base._scheduled
        ready_queue: collections.deque[Any] = base._ready
        count = len(scheduled)
        if count > _MANY_TIMERS and base._timer_cancelled_count / count > _CANCELLED_SHARE:
            # Many cancelled timers: rebuild the heap without them, as asyncio does.
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            scheduled[:] = kept
            base._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                base._timer_cancelled_count -= 1
                handle = heapq.heappop(scheduled)
                handle._scheduled = False

        fd_to_key = self._fd_to_key
        try:
            polled = epoll.poll(0, len(fd_to_key) or 1)
        except InterruptedError:
            polled = []
        if polled:
            self._held_polls = 0  # progress: a hold starts its count again
            for fd, event in polled:
                key = fd_to_key.get(fd)
                if key is None:
                    continue
                reader, writer = key.data
                # EPOLLIN alone is a read, EPOLLOUT alone a write; anything
                # else (an error, a hang-up) wakes both, as the selector says.
                if event & _NOT_OUT and reader is not None and key.events & _READ:
                    if reader._cancelled:
                        base._remove_reader(key.fileobj)
                    else:
                        ready_queue.append(reader)
                if event & _NOT_IN and writer is not None and key.events & _WRITE:
                    if writer._cancelled:
                        base._remove_writer(key.fileobj)
                    else:
                        ready_queue.append(writer)
        elif not ready_queue and not base._stopping:
            timeout: float | None = None
            if scheduled:
                timeout = min(max(0.0, scheduled[0]._when - self._now), _LONGEST_WAIT)
            if timeout != 0:
                base._process_events(self._wait(timeout))
            else:
                self._held_polls = 0
        else:
            self._held_polls = 0

        end = self._now + base._clock_resolution
        while scheduled:
            handle = scheduled[0]
            if handle._when >= end:
                break
            heapq.heappop(scheduled)
            handle._scheduled = False
            ready_queue.append(handle)

        # Only what was queued before this point runs in this turn; what it
        # queues runs in the next, after another poll (asyncio's rule).
        for _ in range(len(ready_queue)):
            handle = ready_queue.popleft()
            if not handle._cancelled:
                handle._run()

    def call_later(  # type: ignore[override]  # typeshed types it with a TypeVarTuple
        self, delay: float, callback: Callable[..., object], *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule ``callback`` ``delay`` seconds of virtual time from now.

        asyncio's ``call_later`` with its ``call_at`` and clock read folded in
        (two timers per idle probe cycle, ~1.7 million a month: issue 21); a
        loop in debug mode takes asyncio's own, with its checks.
        """
        base: Any = self
        if base._debug or delay is None:
            return super().call_later(delay, callback, *args, context=context)
        if base._closed:
            raise RuntimeError("Event loop is closed")
        timer = asyncio.TimerHandle(self._now + delay, callback, args, self, context)
        heapq.heappush(base._scheduled, timer)
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def time(self) -> float:
        """Return the virtual time."""
        return self._now

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect ``sock``; a connect to a loopback address is waited for, never jumped past."""
        fd = sock.fileno()
        local = is_loopback(address)
        if local:
            self._loopback.connecting.add(fd)
        try:
            await super().sock_connect(sock, address)
        finally:
            if local:
                self._loopback.connecting.discard(fd)

    def _make_socket_transport(self, sock: Any, protocol: Any, waiter: Any = None, *,
                               extra: Any = None, server: Any = None) -> Any:
        self._loopback.track(sock)
        return super()._make_socket_transport(  # type: ignore[misc]
            sock, protocol, waiter, extra=extra, server=server)

    def _start_serving(self, protocol_factory: Any, sock: Any, *args: Any,
                       **kwargs: Any) -> None:
        self._loopback.listen(sock)
        super()._start_serving(protocol_factory, sock, *args, **kwargs)  # type: ignore[misc]

    def _stop_serving(self, sock: Any) -> None:
        self._loopback.unlisten(sock)
        super()._stop_serving(sock)  # type: ignore[misc]


__all__ = ["CHECK_LOOK", "FARMS", "HOLD_LIMIT", "MONTH_START", "ORDER_FAULTS", "RATES", "Fault",
           "Month", "PlannedOrder", "Rate", "VirtualTimeLoop", "faults_from_steps", "generate"]
