"""The month's transcript does not depend on the order of callbacks at one virtual instant."""

from __future__ import annotations

import asyncio
import importlib.util
import random
from pathlib import Path
from typing import Any

from ibkr_connection.simulator.month import VirtualTimeLoop

#: The suite's simulated day of faults (a drop, 1100, a farm, a hang, a wedge, a
#: restart with its refused connects, a 1300, order faults).
_DAY_FILE = Path(__file__).resolve().parents[1] / "test_month_day.py"


def _day_module() -> Any:
    spec = importlib.util.spec_from_file_location("_month_day_for_determinism", _DAY_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _LateEpoll:
    """The loop's epoll, reporting some ready sockets a few turns late (seeded)."""

    def __init__(self, real: Any, rng: random.Random) -> None:
        self.real, self.rng = real, rng
        #: fd -> turns it stays hidden.
        self.hidden: dict[int, int] = {}
        #: How many readiness events were hidden.
        self.count = 0

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        shown = []
        for fd, event in self.real.poll(timeout, maxevents):
            left = self.hidden.get(fd)
            if left is None and self.rng.random() < 0.05:
                left = self.rng.randint(1, 6)
                self.count += 1
            if left:
                self.hidden[fd] = left - 1
                continue
            self.hidden.pop(fd, None)
            shown.append((fd, event))
        return shown

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Shuffled(VirtualTimeLoop):
    """What a loaded machine does to one instant, with the loop holding its jumps.

    Some readiness (bytes, a connect's outcome, an accept) is seen a few turns
    late, and some refused connects fail a few turns late: after other ready
    work, as a delivery the kernel defers or a refusal a TIME_WAIT socket slows
    does. Nothing hidden is ever jumped past: a would-be jump shows it first,
    as the loop's hold does.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.late = _LateEpoll(self._epoll, self.rng)
        self._epoll = self.late

    def _wait(self, timeout: float | None) -> Any:
        if self.late.hidden:
            self.late.hidden.clear()
            return self._real_select(0)
        return super()._wait(timeout)

    async def sock_connect(self, sock: Any, address: Any) -> None:
        try:
            await super().sock_connect(sock, address)
        except ConnectionRefusedError:
            for _ in range(self.rng.randint(0, 8)):
                await asyncio.sleep(0)
            raise


def _transcript(loop: VirtualTimeLoop, day: Any) -> list[Any]:
    asyncio.set_event_loop(loop)
    try:
        return list(loop.run_until_complete(day._day("ib_insync"))["transcript"])
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_the_day_s_transcript_survives_a_shuffle_of_each_instant() -> None:
    """Readiness and refusals seen some turns late (never jumped past): the same transcript."""
    day = _day_module()
    plain = _transcript(VirtualTimeLoop(), day)
    shuffled = _Shuffled(seed=1)
    assert _transcript(shuffled, day) == plain
    assert shuffled.late.count > 0
