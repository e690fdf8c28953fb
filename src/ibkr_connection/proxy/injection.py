"""Scenario timelines played on the relay: ``ibkr-connection proxy --scenario``.

The file is the simulator's (:mod:`ibkr_connection.wire.scenario`),
loaded with ``target="proxy"``: the actions a relay cannot play
(:data:`~ibkr_connection.wire.scenario.RELAY_ACTIONS`) are rejected
with their reason when it is loaded. :func:`apply_relay_step` maps each
remaining action onto :class:`~ibkr_connection.proxy.relay.ProxyServer`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ibkr_connection.proxy.relay import ProxyServer
from ibkr_connection.wire.scenario import (
    Scenario,
    ScenarioError,
    Step,
    resolve_scenario,
)

logger = logging.getLogger(__name__)

#: Actions that need the proxy to read every frame from the gateway.
INSPECTING_ACTIONS = frozenset({"hold_sync", "delay_sync", "nightly_reset"})


def load_relay_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario for the proxy: a file, or a shipped scenario by name.

    Raises:
        ScenarioError: The file is invalid, or uses an action a relay cannot
            play (the message names the step and gives the reason).
    """
    scenario = resolve_scenario(str(name_or_path), target="proxy")
    if scenario.gateway:
        logger.warning("%s: the [gateway] table is ignored by the proxy (the accounts are the "
                       "real gateway's)", scenario.source)
    return scenario


def needs_inspection(scenario: Scenario) -> bool:
    """True if a step needs the proxy to read every frame (see ``ProxyServer(inspect=)``)."""
    return any(step.action in INSPECTING_ACTIONS for step in scenario.steps)


async def apply_relay_step(proxy: ProxyServer, step: Step) -> None:
    """Play one step on the proxy.

    Args:
        proxy: The relay.
        step: A step of a scenario loaded for the proxy.

    Raises:
        ScenarioError: For an action the relay cannot play (a scenario loaded
            for the simulator and handed over as is).
    """
    a, prm = step.action, step.params
    # DEBUG: every relay action says itself once (ProxyServer.report_fault).
    logger.debug("scenario t=%.2f: %s %s", step.at, a, prm)
    if a == "error":
        await proxy.send_error(prm["code"], prm.get("client_id"), prm.get("message"),
                               prm.get("req_id", -1))
    elif a == "farm_broken":
        await proxy.farm_broken(prm["farm"], prm.get("client_id"), prm.get("code"))
    elif a == "farm_ok":
        await proxy.farm_ok(prm["farm"], prm.get("client_id"), prm.get("code"))
    elif a == "drop_clients":
        await proxy.drop_clients(prm.get("client_id"))
    elif a == "stop_listening":
        await proxy.stop_listening()
        proxy.report_fault("stop_listening", {}, 0)
    elif a == "start_listening":
        await proxy.start_listening()
        proxy.report_fault("start_listening", {}, 0)
    elif a == "restart":
        await proxy.restart(prm.get("outage", 1.0))
    elif a == "reset_port":
        await proxy.reset_port(prm.get("new_port", 0))
    elif a == "stall":
        proxy.stall()
    elif a == "unstall":
        proxy.unstall(bool(prm.get("discard", False)))
    elif a == "handshake_delay":
        proxy.set_handshake_delay(float(prm["seconds"]))
    elif a == "hold_sync":
        proxy.hold_sync(prm["request"])
    elif a == "release_sync":
        proxy.release_sync(prm.get("request"))
    elif a == "delay_sync":
        proxy.delay_sync(prm["request"], float(prm["seconds"]))
    elif a == "nightly_reset":
        await proxy.nightly_reset(prm.get("silence", 2.0), prm.get("restore_code", 1101),
                                  stall=prm.get("stall", False))
    else:
        raise ScenarioError(f"action {a!r} cannot apply to the proxy")


async def run_relay_scenario(
    proxy: ProxyServer, scenario: Scenario, *, origin: float | None = None
) -> None:
    """Play a scenario's steps at their times, counted from the proxy's start.

    Steps run one after the other; a step that takes time (``restart``,
    ``nightly_reset``) delays the steps whose time comes meanwhile.

    Args:
        proxy: The relay (started).
        scenario: A scenario loaded for the proxy.
        origin: the loop's time (``loop.time()``, ``time.monotonic()`` on a
            real loop) that ``at = 0`` stands for; the proxy's start if omitted.
    """
    # The loop's clock, as the sleeps below: on a loop with virtual time
    # (the tests') the steps keep their spacing.
    now = asyncio.get_running_loop().time
    start = origin if origin is not None else now() - proxy.elapsed()
    for step in scenario.steps:
        wait = start + step.at - now()
        if wait > 0:
            await asyncio.sleep(wait)
        await apply_relay_step(proxy, step)
    logger.info("scenario %s finished", scenario.source)
