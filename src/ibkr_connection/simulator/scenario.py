"""Scenarios played on the simulator: each step's action on a :class:`FakeGateway`.

The file format, its validation and the shipped scenarios are
:mod:`ibkr_connection.wire.scenario` (the proxy plays the same files);
this module plays a scenario's steps on the simulator
(:func:`apply_step`, :func:`run_scenario`) and writes its reference page,
``docs/scenarios.md`` (:func:`reference_markdown`, ``ibkr-connection diagram``).
"""

from __future__ import annotations

import asyncio
import logging

from ibkr_connection.simulator.brokerage import DEFAULT_INSTRUMENTS
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.wire.scenario import (
    ACTION_DOCS,
    ACTIONS,
    RELAY_ACTIONS,
    RELAY_ONLY_FIELD_DOCS,
    RELAY_ONLY_FIELDS,
    Scenario,
    ScenarioError,
    Step,
    shipped_scenarios,
)

logger = logging.getLogger(__name__)


#: Actions whose gateway method logs nothing itself: the scenario says them.
_UNLOGGED_ACTIONS = frozenset({"handshake_delay", "delay_sync", "push_tick",
                               "set_next_valid_id", "fill_mode"})


async def apply_step(gw: FakeGateway, step: Step) -> None:
    """Perform one step on the gateway.

    Args:
        gw: The gateway.
        step: The step.
    """
    a, prm = step.action, step.params
    # One line per step: the gateway's own line where its method logs one.
    level = logging.INFO if a in _UNLOGGED_ACTIONS else logging.DEBUG
    logger.log(level, "scenario t=%.2f: %s %s", step.at, a, prm)
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
    elif a == "wedge":
        gw.wedge()
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
    # The loop's clock, which its sleeps run on (also when that time is virtual).
    loop = asyncio.get_running_loop()
    start = loop.time()
    for step in scenario.steps:
        wait = start + step.at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await apply_step(gw, step)
    logger.info("scenario %s finished", scenario.source)


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _type_name(types: tuple[type, ...]) -> str:
    if set(types) == {int, float}:
        return "number"
    return " or ".join(_TYPE_NAMES[t] for t in types)


def reference_markdown() -> str:
    """Return ``docs/scenarios.md``: every action and field, and the shipped scenarios.

    Raises:
        KeyError: An action or field of :data:`ACTIONS` has no line in
            :data:`ACTION_DOCS` (so the page cannot silently miss one).
    """
    lines = [
        "# Simulator scenarios",
        "",
        "Generated from `ibkr_connection.wire.scenario.ACTIONS` and `ACTION_DOCS` by "
        "`ibkr-connection diagram`; do not edit by hand.",
        "",
        "A scenario is a TOML file that tells the gateway simulator which faults to inject "
        "and when. Run one with `ibkr-connection sim --scenario FILE` (a path) or "
        "`--scenario NAME` (a shipped scenario); `ibkr-connection sim --list-scenarios` "
        "lists the shipped ones.",
        "",
        "```toml",
        'description = "TWS loses IB for ten seconds"   # optional, one line',
        "",
        "[gateway]                  # optional",
        'accounts = ["DU1234567"]   # the managed accounts (--accounts overrides them)',
        "",
        "[[gateway.instruments]]    # optional, repeated: a contract the simulator knows",
        'symbol = "TSLA"            # required; price (100), con_id, sec_type ("STK"),',
        "price = 250.0              # currency (\"USD\"), exchange (\"SMART\") and",
        "                           # primary_exchange (\"NASDAQ\") are optional",
        "",
        "[[step]]",
        "at = 5.0",
        'action = "error"',
        "code = 1100",
        "",
        "[[step]]",
        "at = 15.0",
        'action = "error"',
        "code = 1101",
        "```",
        "",
        "Every step has two fields, then the fields of its action:",
        "",
        "- `at` (number, required): when the step runs, in seconds from the simulator's "
        "start (the moment it begins listening), not from the previous step. Steps run "
        "in order of `at`; a step that takes time (`restart`, `nightly_reset`) delays the "
        "steps whose time comes meanwhile.",
        "- `action` (string, required): one of the actions below.",
        "",
        "A field the action does not have, an unknown action or a missing required field "
        "is an error that names the step and lists what is valid.",
        "",
        "## Instruments",
        "",
        "The simulator knows a short list of contracts, US stocks in USD at price 100 "
        "(IB's own conIds): "
        + ", ".join(f"{symbol} (conId {con_id}, {primary})"
                    for symbol, con_id, primary in DEFAULT_INSTRUMENTS)
        + ". A scenario adds more with `[[gateway.instruments]]` (above), a program with "
        "`FakeGateway.add_instrument(symbol, price, con_id=..., sec_type=..., "
        "currency=...)` or `FakeGateway(prices={symbol: price})`; `push_tick` adds the "
        "symbol it names. A request naming any other contract is answered as TWS answers "
        "it: `reqContractDetails` (so `qualifyContracts`), `reqMktData` and `placeOrder` "
        "get error 200, \"No security definition has been found for the request\", and "
        "nothing else (no `contractDetailsEnd`, no ticks, no order).",
        "",
        "## Shipped scenarios",
        "",
        "| name | what happens |",
        "|---|---|",
    ]
    for name, scenario in shipped_scenarios().items():
        lines.append(f"| `{name}` | {scenario.description} |")
    lines += [
        "",
        "## In the proxy",
        "",
        "`ibkr-connection proxy --scenario FILE` plays the same timeline on a relay in front "
        "of a real TWS / IB Gateway, `at` counting from the moment the proxy listens. An "
        "action a relay cannot play is rejected when the file is loaded, with the reason; a "
        "`[gateway]` table is ignored (the accounts are the real gateway's).",
        "",
        "| action | in the proxy | how, or why not |",
        "|---|---|---|",
    ]
    for action in ACTIONS:
        applies, how = RELAY_ACTIONS.get(action, (False, "not reviewed for the proxy yet"))
        lines.append(f"| `{action}` | {'yes' if applies else 'rejected'} | {how} |")
    lines += ["", "## Actions", ""]
    for action, (required, optional) in ACTIONS.items():
        what, fields = ACTION_DOCS[action]
        applies, how = RELAY_ACTIONS.get(action, (False, "not reviewed for the proxy yet"))
        relay = f"In the proxy: {how}." if applies else f"Rejected by the proxy: {how}."
        lines += [f"### `{action}`", "", what, "", relay, ""]
        relay_only = RELAY_ONLY_FIELDS.get(action, {})
        if not required and not optional and not relay_only:
            lines += ["No fields besides `at` and `action`.", ""]
            continue
        lines += ["| field | type | required | meaning |", "|---|---|---|---|"]
        for name, types in required.items():
            lines.append(f"| `{name}` | {_type_name(types)} | yes | {fields[name]} |")
        for name, types in optional.items():
            lines.append(f"| `{name}` | {_type_name(types)} | no | {fields[name]} |")
        for name, types in relay_only.items():
            meaning = RELAY_ONLY_FIELD_DOCS[action][name]
            lines.append(f"| `{name}` | {_type_name(types)} | no | {meaning} |")
        lines.append("")
    return "\n".join(lines)
