"""IB's nightly reset as a client sees it: played by the simulator and by the proxy.

Each plays it on itself (``FakeGateway.nightly_reset``,
``ProxyServer.nightly_reset``): one sequence, so the two cannot drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


class ResetTarget(Protocol):
    """What a nightly reset acts on: the simulator, or the proxy's sessions."""

    async def send_error(self, code: int) -> object: ...
    async def farm_broken(self, farm: str) -> object: ...
    async def farm_ok(self, farm: str) -> object: ...
    def stall(self) -> object: ...
    def unstall(self) -> object: ...


async def play_nightly_reset(target: ResetTarget, farms: Sequence[str], silence: float,
                             restore_code: int, stall: bool) -> None:
    """IB's nightly reset as the client sees it, played on ``target``.

    1100, every farm broken, optionally a hang, ``silence`` seconds, then the
    restore code (1101 or 1102) and every farm OK again.
    """
    await target.send_error(1100)
    for farm in farms:
        await target.farm_broken(farm)
    if stall:
        target.stall()
    await asyncio.sleep(silence)
    if stall:
        target.unstall()
    await target.send_error(restore_code)
    for farm in farms:
        await target.farm_ok(farm)


__all__ = ["ResetTarget", "play_nightly_reset"]
