"""Scripted fault timelines loaded from TOML.

A scenario file is a list of ``[[step]]`` tables, each with ``at`` (seconds
after the scenario starts) and ``action`` plus the action's parameters::

    [gateway]                 # optional defaults for the CLI
    accounts = ["DU1234567"]

    [[step]]
    at = 1.0
    action = "error"
    code = 1100

Actions and their parameters (``*`` = required):

* ``error``: ``code``\\*, ``message``, ``client_id``, ``req_id``
* ``farm_broken`` / ``farm_ok``: ``farm``\\*, ``client_id``, ``code``
* ``drop_clients``: ``client_id``
* ``stop_listening`` / ``start_listening`` / ``stall`` / ``unstall``: none
* ``restart``: ``outage``
* ``reset_port``: ``new_port``
* ``handshake_delay``: ``seconds``\\*
* ``hold_sync`` / ``release_sync``: ``request`` (required for hold_sync)
* ``delay_sync``: ``request``\\*, ``seconds``\\*
* ``nightly_reset``: ``silence``, ``restore_code``, ``stall``
* ``fill_order``: ``order_id``\\*, ``quantity``, ``price``
* ``push_tick``: ``symbol``\\*, ``price``\\*
* ``set_next_valid_id``: ``value``\\*
* ``fill_mode``: ``mode``\\* (``immediate``, ``manual`` or ``parts``), ``parts``
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibkr_connection.simulator.gateway import SYNC_REQUESTS, FakeGateway

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]

logger = logging.getLogger(__name__)

#: action -> (required parameters, optional parameters) with their types.
ACTIONS: dict[str, tuple[dict[str, tuple[type, ...]], dict[str, tuple[type, ...]]]] = {
    "error": ({"code": (int,)}, {"message": (str,), "client_id": (int,), "req_id": (int,)}),
    "farm_broken": ({"farm": (str,)}, {"client_id": (int,), "code": (int,)}),
    "farm_ok": ({"farm": (str,)}, {"client_id": (int,), "code": (int,)}),
    "drop_clients": ({}, {"client_id": (int,)}),
    "stop_listening": ({}, {}),
    "start_listening": ({}, {}),
    "restart": ({}, {"outage": (int, float)}),
    "reset_port": ({}, {"new_port": (int,)}),
    "stall": ({}, {}),
    "unstall": ({}, {}),
    "handshake_delay": ({"seconds": (int, float)}, {}),
    "hold_sync": ({"request": (str,)}, {}),
    "release_sync": ({}, {"request": (str,)}),
    "delay_sync": ({"request": (str,), "seconds": (int, float)}, {}),
    "nightly_reset": ({}, {"silence": (int, float), "restore_code": (int,), "stall": (bool,)}),
    "fill_order": ({"order_id": (int,)}, {"quantity": (int, float), "price": (int, float)}),
    "push_tick": ({"symbol": (str, int), "price": (int, float)}, {}),
    "set_next_valid_id": ({"value": (int,)}, {}),
    "fill_mode": ({"mode": (str,)}, {"parts": (int,)}),
}


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and step."""


@dataclass(frozen=True)
class Step:
    """One timed action.

    Attributes:
        at: Seconds after the scenario start.
        action: Action name (a key of :data:`ACTIONS`).
        params: The action's parameters.
    """

    at: float
    action: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A validated timeline.

    Attributes:
        steps: Steps sorted by ``at``.
        gateway: Optional ``[gateway]`` table (e.g. ``accounts``).
        source: File the scenario came from, if any.
    """

    steps: list[Step]
    gateway: dict[str, Any] = field(default_factory=dict)
    source: str = "<string>"


def _check_type(where: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        expected = " or ".join(t.__name__ for t in types)
        raise ScenarioError(f"{where}: {name!r} must be {expected}, got {value!r}")


def parse_scenario(data: dict[str, Any], source: str = "<string>") -> Scenario:
    """Validate a decoded TOML document.

    Args:
        data: The TOML document as a dict.
        source: Name used in error messages.

    Returns:
        The scenario.

    Raises:
        ScenarioError: For unknown actions, missing or mistyped fields.
    """
    unknown_top = set(data) - {"step", "gateway"}
    if unknown_top:
        raise ScenarioError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}")
    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list):
        raise ScenarioError(f"{source}: 'step' must be an array of tables ([[step]])")
    gateway = data.get("gateway", {})
    if not isinstance(gateway, dict):
        raise ScenarioError(f"{source}: [gateway] must be a table")
    steps: list[Step] = []
    for index, raw in enumerate(raw_steps, start=1):
        where = f"{source}: step {index}"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: must be a table")
        if "at" not in raw:
            raise ScenarioError(f"{where}: missing field 'at'")
        if "action" not in raw:
            raise ScenarioError(f"{where}: missing field 'action'")
        at, action = raw["at"], raw["action"]
        _check_type(where, "at", at, (int, float))
        if at < 0:
            raise ScenarioError(f"{where}: 'at' must be >= 0")
        if action not in ACTIONS:
            raise ScenarioError(
                f"{where}: unknown action {action!r}; known: {', '.join(sorted(ACTIONS))}"
            )
        required, optional = ACTIONS[action]
        params = {k: v for k, v in raw.items() if k not in ("at", "action")}
        for name, types in required.items():
            if name not in params:
                raise ScenarioError(f"{where} ({action}): missing field {name!r}")
            _check_type(f"{where} ({action})", name, params[name], types)
        for name, value in params.items():
            if name in required:
                continue
            if name not in optional:
                raise ScenarioError(f"{where} ({action}): unknown field {name!r}")
            _check_type(f"{where} ({action})", name, value, optional[name])
        if action in ("hold_sync", "delay_sync") and params["request"] not in SYNC_REQUESTS:
            raise ScenarioError(f"{where} ({action}): unknown request {params['request']!r}")
        if action == "fill_mode" and params["mode"] not in ("immediate", "manual", "parts"):
            raise ScenarioError(f"{where} (fill_mode): mode must be immediate, manual or parts")
        steps.append(Step(float(at), action, params))
    steps.sort(key=lambda s: s.at)
    return Scenario(steps, gateway, source)


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate a TOML scenario file.

    Args:
        path: The file.

    Returns:
        The scenario.

    Raises:
        ScenarioError: If the file is missing, is not TOML, or is invalid.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from exc
    return parse_scenario(data, str(path))


async def apply_step(gw: FakeGateway, step: Step) -> None:
    """Perform one step on the gateway.

    Args:
        gw: The gateway.
        step: The step.
    """
    a, prm = step.action, step.params
    logger.info("scenario t=%.2f: %s %s", step.at, a, prm)
    if a == "error":
        await gw.send_error(
            prm["code"], prm.get("client_id"), prm.get("message"), prm.get("req_id", -1)
        )
    elif a == "farm_broken":
        await gw.farm_broken(prm["farm"], prm.get("client_id"), prm.get("code"))
    elif a == "farm_ok":
        await gw.farm_ok(prm["farm"], prm.get("client_id"), prm.get("code"))
    elif a == "drop_clients":
        await gw.drop_clients(prm.get("client_id"))
    elif a == "stop_listening":
        await gw.stop_listening()
    elif a == "start_listening":
        await gw.start_listening()
    elif a == "restart":
        await gw.restart(prm.get("outage", 1.0))
    elif a == "reset_port":
        await gw.reset_port(prm.get("new_port", 0))
    elif a == "stall":
        gw.stall()
    elif a == "unstall":
        gw.unstall()
    elif a == "handshake_delay":
        gw.handshake_delay = float(prm["seconds"])
    elif a == "hold_sync":
        gw.hold_sync(prm["request"])
    elif a == "release_sync":
        gw.release_sync(prm.get("request"))
    elif a == "delay_sync":
        gw.delay_sync(prm["request"], float(prm["seconds"]))
    elif a == "nightly_reset":
        await gw.nightly_reset(
            prm.get("silence", 2.0), prm.get("restore_code", 1101), stall=prm.get("stall", False)
        )
    elif a == "fill_order":
        try:
            gw.fill_order(prm["order_id"], prm.get("quantity"), prm.get("price"))
        except (KeyError, ValueError) as exc:
            logger.warning("scenario: fill_order %s failed: %s", prm["order_id"], exc)
    elif a == "push_tick":
        gw.push_tick(prm["symbol"], float(prm["price"]))
    elif a == "set_next_valid_id":
        gw.set_next_valid_id(prm["value"])
    elif a == "fill_mode":
        mode = prm["mode"]
        gw.fill_mode = ("parts", int(prm.get("parts", 2))) if mode == "parts" else mode
    else:  # pragma: no cover - parse_scenario rejects these
        raise ScenarioError(f"unknown action {a!r}")


async def run_scenario(gw: FakeGateway, scenario: Scenario) -> None:
    """Play a scenario's steps at their times (relative to the call).

    Steps run one after the other; a step taking long (``restart``) delays
    the following steps whose time has already come.

    Args:
        gw: The gateway to act on.
        scenario: The timeline.
    """
    start = time.monotonic()
    for step in scenario.steps:
        wait = start + step.at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await apply_step(gw, step)
    logger.info("scenario %s finished", scenario.source)
