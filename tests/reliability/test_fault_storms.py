"""Fault storms: seeded random faults at random times, on the simulator and the pure machine.

The storms against a real client run on virtual time (``VIRTUAL_TIME``, see
tests/conftest.py): the gaps between faults, the outages, the heartbeat deadlines and
the backoffs cost no wall clock, and the sockets are the real loopback ones.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

import pytest
from ib_insync import IB, LimitOrder, Stock

from ibkr_connection import ConnectionManager, ConnectionState, IBKRIBInsyncApi
from ibkr_connection.clock import LoopClock, ManualClock, TimerHandle
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.simulator import FakeGateway, storm

from .conftest import TracebackCatcher, fast_config, handler_counts
from conftest import round_trip

S = ConnectionState
Make = Callable[..., ConnectionManager]

#: Every async test here runs on a VirtualTimeLoop, its managers on its clock.
VIRTUAL_TIME = True


async def _storm(gw: FakeGateway, rng: random.Random, faults: int) -> dict[str, int]:
    """Inject ``faults`` random faults with random gaps; return how many of each kind."""
    done = dict.fromkeys(storm.KINDS, 0)
    for _ in range(faults):
        label = await storm.random_fault(gw, rng)
        done[label.split()[0]] += 1
        await asyncio.sleep(rng.uniform(0.0, 0.03))
    return done


#: Attempts the manager may start from the heal on until it is connected: one may
#: still meet the gateway before the heal is complete (a retry falling due while
#: it heals) and fail; the next one meets the healed gateway. The time this
#: takes, against a bound built from the same worst case (two attempts, two of
#: the longest backoffs), is measured by benchmarks/fault_storm.py.
ATTEMPTS_AFTER_HEAL = 2


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_storm_against_real_client_recovers(
    seed: int, gw: FakeGateway, tracebacks: TracebackCatcher,
) -> None:
    """120 random faults with orders among them, a heal: reconnected, every order settled.

    After the heal the manager reconnects in two attempts with its delays
    capped; no order is left Uncertain, none reached the gateway twice, and
    every fill the gateway made is booked once on its order.
    """
    gw.fill_mode = "manual"  # orders work until the storm fills or cancels them
    api = IBKRIBInsyncApi(fast_config(gw.port), IB(), clock=LoopClock())
    manager = api.manager
    bot = storm.StormBot(api, Stock("AAPL", "SMART", "USD"),
                         lambda ref: LimitOrder("BUY", 1, 150.0, orderRef=ref),
                         random.Random(seed))
    try:
        await manager.start(timeout=3)
        counts = handler_counts(manager.ib)
        trading = asyncio.ensure_future(bot.run(interval=0.003))
        done = await _storm(gw, random.Random(seed), faults=120)
        trading.cancel()
        assert sum(done.values()) == 120
        since = len(manager.transcript)
        await storm.heal(gw)
        await manager.wait_for(S.CONNECTED, timeout=30)  # a hang guard, inside the test timeout
        after_heal = manager.transcript[since:]
        assert sum(t.dest is S.CONNECTING for t in after_heal) <= ATTEMPTS_AFTER_HEAL, after_heal
        backoff = manager.config.policy.backoff
        cap = max(backoff.max_delay, backoff.max_costly_delay)
        assert all(t.delay <= cap for t in manager.transcript if t.delay is not None)
        await round_trip(manager.ib)  # nothing the gateway sent moves it on
        assert manager.state is S.CONNECTED
        assert handler_counts(manager.ib) == counts
        assert sum(t.dest is S.BACKOFF for t in manager.transcript) >= 5, "the storm did no harm"
        for before, after in itertools.pairwise(manager.transcript):
            assert before.dest is after.source
        assert tracebacks.escaped() == []
        audit = storm.audit_orders(gw, api.orders, client_id=7)
        assert audit.clean, audit.line()
        assert manager.in_flight.uncertain == []
        # How many orders the bot places depends on how long the sessions between
        # faults last, which a loaded machine shortens (2..4 seen where 5 was asked):
        # the audit needs orders that the storm caught, not a count.
        assert bot.placed >= 1 and sum(bot.outcomes.values()) >= 1, (
            f"the storm must place orders and catch some: {audit.line()}, {bot.outcomes}")
    finally:
        await manager.stop()


# -- the pure machine ---------------------------------------------------------------------------


class TimerEffects:
    """Effects that record every call and run the machine's timers on a ManualClock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.machine: ConnectionMachine | None = None
        self.calls: list[str] = []
        self._retry: TimerHandle | None = None
        self._restore: TimerHandle | None = None
        self._restart: TimerHandle | None = None

    def _feed(self, kind: InputKind) -> None:
        self.run(Input(kind))

    def run(self, inp: Input) -> None:
        """Feed ``inp`` and carry out its step's effects, as the driver does."""
        assert self.machine is not None
        for effect in self.machine.handle(inp).effects:
            getattr(self, effect.name)(*effect.args)

    def start_attempt(self, attempt: int, client_id: int, port: int) -> None:
        self.calls.append(f"start_attempt {attempt} {client_id} {port}")

    def schedule_retry(self, delay: float) -> None:
        self.calls.append(f"schedule_retry {delay:.6f}")
        self._retry = self.clock.call_later(delay, lambda: self._feed(InputKind.RETRY_DUE))

    def cancel_retry(self) -> None:
        self.calls.append("cancel_retry")
        if self._retry is not None:
            self._retry.cancel()

    def start_restore_timer(self, timeout: float) -> None:
        self.calls.append(f"start_restore_timer {timeout}")
        self._restore = self.clock.call_later(
            timeout, lambda: self._feed(InputKind.RESTORE_TIMEOUT))

    def cancel_restore_timer(self) -> None:
        self.calls.append("cancel_restore_timer")
        if self._restore is not None:
            self._restore.cancel()

    def select_account(self, account: str) -> None:
        self.calls.append("select_account")

    def refuse_account(self, message: str) -> None:
        self.calls.append("refuse_account")

    def restore_subscriptions(self, fresh_session: bool) -> None:
        self.calls.append(f"restore_subscriptions {fresh_session}")

    def issue_new_subscriptions(self) -> None:
        self.calls.append("issue_new_subscriptions")

    def begin_session(self) -> None:
        self.calls.append("begin_session")

    def end_session(self) -> None:
        self.calls.append("end_session")

    def start_heartbeat(self) -> None:
        self.calls.append("start_heartbeat")

    def stop_heartbeat(self) -> None:
        self.calls.append("stop_heartbeat")

    def tear_down(self) -> None:
        self.calls.append("tear_down")

    def send_restart(self) -> None:
        self.calls.append("send_restart")

    def start_restart_timer(self, timeout: float) -> None:
        self.calls.append(f"start_restart_timer {timeout}")
        self._restart = self.clock.call_later(
            timeout, lambda: self._feed(InputKind.RESTART_TIMEOUT))

    def cancel_restart_timer(self) -> None:
        self.calls.append("cancel_restart_timer")
        if self._restart is not None:
            self._restart.cancel()

    def probe_gateway(self, port: int, interval: float) -> None:
        self.calls.append(f"probe_gateway {port} {interval}")

    def cancel_probe(self) -> None:
        self.calls.append("cancel_probe")

    def send_reconnect_data(self) -> None:
        self.calls.append("send_reconnect_data")

    def start_farm_timer(self, timeout: float) -> None:
        self.calls.append(f"start_farm_timer {timeout}")

    def cancel_farm_timer(self) -> None:
        self.calls.append("cancel_farm_timer")


#: Inputs a pure storm draws from, with the payloads the real codes would carry.
_FARMS = ("usfarm", "ushmds", "secdefil", "eufarm")


#: Every input but stop: the manager's end, after which a storm moves nothing (and
#: the seeded streams stay those of the storms written before it existed).
_STORM_KINDS = [kind for kind in InputKind if kind is not InputKind.STOP]


def _random_input(rng: random.Random) -> Input:
    kind = rng.choice(_STORM_KINDS)
    farm = rng.choice(_FARMS) if kind in (InputKind.FARM_BROKEN, InputKind.FARM_OK) else None
    port = rng.choice((None, 4002, 4003)) if kind is InputKind.PORT_RESET else None
    return Input(kind, code=rng.choice((None, 1100, 2103, 9999)), farm=farm, port=port,
                 costly=rng.random() < 0.5, message=f"storm {kind.value}")


def _machine_storm(seed: int, inputs: int, controller: bool = True,
                   ) -> tuple[list[dict[str, object]], list[str]]:
    """Run ``inputs`` random inputs at random times; return (transcript JSON, effect calls)."""
    rng = random.Random(seed)
    clock = ManualClock()
    effects = TimerEffects(clock)
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=rng.choice((None, 50))),
                            restore_timeout=30.0, restart_wait=20.0, restart_cooldown=60.0,
                            seed=seed)
    machine = ConnectionMachine(clock, port=4002, client_ids=[7, 8], policy=policy,
                                controller_configured=controller)
    effects.machine = machine
    for _ in range(inputs):
        clock.advance(rng.expovariate(2.0))
        effects.run(_random_input(rng))
    return [t.to_json() for t in machine.transcript], effects.calls


def test_same_seed_same_transcript_other_seed_differs() -> None:
    """Thousands of random inputs: one seed gives one transcript; another seed another.

    How fast the machine handles an input is measured by benchmarks/connect_phases.py.
    """
    first, first_calls = _machine_storm(seed=11, inputs=4000)
    again, again_calls = _machine_storm(seed=11, inputs=4000)
    other, _ = _machine_storm(seed=12, inputs=4000)
    assert len(first) > 500, "the storm must actually move the machine"
    assert first == again and first_calls == again_calls
    assert first != other


def test_machine_storm_keeps_its_invariants() -> None:
    """Each transition starts where the last one ended; backoff delays stay under the caps."""
    transcript, calls = _machine_storm(seed=5, inputs=3000)
    for before, after in itertools.pairwise(transcript):
        assert before["dest"] == after["source"]
        assert float(str(before["at"])) <= float(str(after["at"]))
    cap = max(BackoffPolicy().max_delay, BackoffPolicy().max_costly_delay)
    delays = [t["delay"] for t in transcript if t["dest"] == "backoff"]
    assert delays and all(d is not None and 0.0 <= float(str(d)) <= cap for d in delays)
    assert any(c.startswith("start_restore_timer") for c in calls)
    # Restarts: one command per entry into restarting, never two within the cooldown (60 s).
    entries = [float(str(t["at"])) for t in transcript if t["dest"] == "restarting"]
    assert entries and calls.count("send_restart") == len(entries)
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(entries))


def test_machine_storm_without_a_controller_never_restarts() -> None:
    """No controller: thousands of random inputs, wedge signs among them, never a restart."""
    transcript, calls = _machine_storm(seed=5, inputs=4000, controller=False)
    assert len(transcript) > 500
    assert "send_restart" not in calls and "send_reconnect_data" not in calls
    assert all(t["dest"] != "restarting" for t in transcript)
