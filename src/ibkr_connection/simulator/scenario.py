"""Scripted fault timelines loaded from TOML.

A scenario file is an optional ``description``, an optional ``[gateway]``
table and a list of ``[[step]]`` tables, each with ``at`` (seconds from the
simulator's start) and ``action`` plus the action's fields::

    description = "TWS loses IB for a second"

    [gateway]                 # optional defaults for the CLI
    accounts = ["DU1234567"]

    [[step]]
    at = 1.0
    action = "error"
    code = 1100

Every action and its fields are in :data:`ACTIONS` and :data:`ACTION_DOCS`,
from which ``docs/scenarios.md`` is generated (``ibkr-connection diagram``).
Example scenarios ship inside the package (``scenarios/*.toml``); the ``sim``
command takes one by name (:func:`resolve_scenario`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from importlib import resources
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
    "wedge": ({}, {}),
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

#: Fields every step has, before the action's own.
STEP_FIELDS = ("at", "action")

#: The keys a scenario file may have at its top level.
TOP_LEVEL_KEYS = ("description", "gateway", "step")

#: The keys of the ``[gateway]`` table (read by ``ibkr-connection sim``).
GATEWAY_KEYS = ("accounts",)

_CLIENT = "only the client with this id; every connected client if omitted"
_SYNC = ", ".join(f"`{name}`" for name in SYNC_REQUESTS)

#: action -> (what it does, {field: what it means}), for ``docs/scenarios.md``.
#: Every action and field of :data:`ACTIONS` needs its line here (a test checks).
ACTION_DOCS: dict[str, tuple[str, dict[str, str]]] = {
    "error": (
        "Send an IB error or system message (also while the gateway is stalled).",
        {"code": "the IB message code, e.g. 1100, 1101, 1102, 2110, 326",
         "message": "the text; IB's own wording for the code if omitted",
         "client_id": _CLIENT,
         "req_id": "the request id the message refers to; -1 (a system message) if omitted"},
    ),
    "farm_broken": (
        "Mark a data farm broken and send its code: 2103 (market data), 2105 (historical "
        "data) or 2157 (security definitions), chosen by the farm's name.",
        {"farm": "the farm's name, e.g. `usfarm`, `ushmds`, `secdefil`",
         "client_id": _CLIENT,
         "code": "send this code instead of the one chosen by the farm's name"},
    ),
    "farm_ok": (
        "Mark a data farm OK and send its code: 2104, 2106 or 2158, chosen by the farm's name.",
        {"farm": "the farm's name",
         "client_id": _CLIENT,
         "code": "send this code instead of the one chosen by the farm's name"},
    ),
    "drop_clients": (
        "Abort client sockets abruptly, with no goodbye (as when a gateway crashes).",
        {"client_id": "only the connection of this client; every connection if omitted"},
    ),
    "stop_listening": (
        "Stop accepting connections (new ones are refused); open ones stay.", {},
    ),
    "start_listening": ("Accept connections again on the same port.", {}),
    "restart": (
        "Restart the gateway: stop listening, drop every client, refuse connections for "
        "`outage` seconds, listen again. Later steps wait until it is done.",
        {"outage": "seconds during which connections are refused; 1.0 if omitted"},
    ),
    "reset_port": (
        "Move the API to a new port: send 1300 naming it, drop every client, listen on the "
        "new port only.",
        {"new_port": "the port to move to; any free port if omitted or 0"},
    ),
    "stall": (
        "Hang: sockets stay open but requests and handshakes get no answer (messages sent "
        "by `error` still go out). What is received meanwhile is answered on `unstall`.",
        {},
    ),
    "unstall": ("Resume after `stall`, answering everything received meanwhile.", {}),
    "wedge": (
        "Wedge: accept sockets and answer nothing, new handshakes included, until a restart "
        "(a `RESTART` on the IBC command server of `sim --ibc-port`, or `unstall`): what "
        "reconnecting cannot fix.",
        {},
    ),
    "handshake_delay": (
        "Answer each new API handshake only after a delay (a slow gateway).",
        {"seconds": "the delay; 0 removes it"},
    ),
    "hold_sync": (
        "Withhold the end message of one startup request (e.g. `execDetailsEnd` of "
        "`reqExecutions`) from now on, so that the client's startup sync never completes.",
        {"request": f"the request, one of {_SYNC}"},
    ),
    "release_sync": (
        "Stop withholding, and deliver the end messages withheld so far.",
        {"request": "the request to release; every held request if omitted"},
    ),
    "delay_sync": (
        "Answer one request type only after a delay (a slow startup sync).",
        {"request": f"the request, one of {_SYNC}",
         "seconds": "the delay; 0 removes it"},
    ),
    "nightly_reset": (
        "Play IB's nightly server reset: 1100, every data farm broken, `silence` seconds of "
        "quiet, then `restore_code` and every farm OK. Later steps wait until it is done.",
        {"silence": "seconds between the loss and the restore; 2.0 if omitted",
         "restore_code": "1101 (restored, data lost) or 1102 (data kept); 1101 if omitted",
         "stall": "also hang requests during the silence; false if omitted"},
    ),
    "fill_order": (
        "Fill (part of) a working order. An unknown or finished order is logged and skipped.",
        {"order_id": "the order's id",
         "quantity": "how much to fill; the remaining quantity if omitted",
         "price": "the fill price; the limit price of a limit order, else the last price, "
                  "if omitted"},
    ),
    "push_tick": (
        "Set an instrument's last price and stream it to subscribed clients.",
        {"symbol": "the symbol (e.g. `AAPL`) or the contract id",
         "price": "the new last price"},
    ),
    "set_next_valid_id": (
        "Set the order id the gateway announces next (`nextValidId`).",
        {"value": "the next valid order id"},
    ),
    "fill_mode": (
        "Choose how new orders are filled.",
        {"mode": "`immediate` (in full once submitted), `manual` (only by `fill_order`) or "
                 "`parts` (in `parts` executions)",
         "parts": "the number of executions in `parts` mode; 2 if omitted"},
    ),
}


#: Where each action applies in ``ibkr-connection proxy --scenario``, a relay in
#: front of a real TWS / IB Gateway: action -> (applies, how it is played there,
#: or why it is rejected when the file is loaded). ``docs/scenarios.md`` shows it;
#: a test checks that every action of :data:`ACTIONS` has its row.
RELAY_ACTIONS: dict[str, tuple[bool, str]] = {
    "error": (True, "framed in the session's negotiated version and written into the bot's "
                    "stream at a message boundary; a 1300 names the proxy's port"),
    "farm_broken": (True, "the farm's notice injected into the open sessions; the real "
                          "gateway's farms are untouched, and a session opened later hears "
                          "what the gateway says"),
    "farm_ok": (True, "as `farm_broken`"),
    "drop_clients": (True, "both sides of each session aborted, the bot's and the gateway's"),
    "stop_listening": (True, "the proxy's port refuses connections; open sessions stay"),
    "start_listening": (True, "the proxy's port accepts connections again"),
    "restart": (True, "the proxy's port closed, every session dropped, `outage` seconds of "
                      "refusals; the real gateway keeps running"),
    "reset_port": (True, "a 1300 naming the proxy's new port, every session dropped, the "
                         "proxy listening on the new port only"),
    "stall": (True, "the gateway's bytes held (the bot's still reach the gateway); injected "
                    "messages still go out"),
    "unstall": (True, "the held bytes delivered, or thrown away with `discard = true`"),
    "wedge": (False, "a wedge lasts until the gateway restarts, and the proxy cannot restart "
                     "the real gateway; play `stall` with `handshake_delay` instead"),
    "handshake_delay": (True, "the gateway's handshake answer held in sessions opened later"),
    "hold_sync": (True, "the request's end message (e.g. `execDetailsEnd`) held back; the rest "
                        "of its answer goes through"),
    "release_sync": (True, "the held end messages delivered"),
    "delay_sync": (True, "the request's end message delivered `seconds` late (the rest of its "
                         "answer on time, unlike the simulator, which delays the whole answer)"),
    "nightly_reset": (True, "1100, the farms the gateway named broken, `silence`, the restore "
                            "code and the farms OK, injected; with `stall`, the gateway's bytes "
                            "held meanwhile"),
    "fill_order": (False, "the proxy has no order book: fills come from the real gateway (on "
                          "a paper account, send a marketable order), and a made-up execution "
                          "would put the bot's book out of step with the account"),
    "push_tick": (False, "the proxy does not invent market data: a bot trading on a paper "
                         "account would act on prices that never traded"),
    "set_next_valid_id": (False, "order ids belong to the real gateway: a rewritten "
                                 "`nextValidId` makes it reject the bot's orders as duplicates"),
    "fill_mode": (False, "fills are the real gateway's to decide"),
}

#: Fields an action takes only in the proxy: action -> {field: types}.
RELAY_ONLY_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "unstall": {"discard": (bool,)},
}

#: What each proxy-only field means, for ``docs/scenarios.md``.
RELAY_ONLY_FIELD_DOCS: dict[str, dict[str, str]] = {
    "unstall": {"discard": "proxy only: throw the held bytes away instead of delivering "
                           "them (the bot never gets the answers); false if omitted"},
}

#: Where a scenario is played: ``sim`` (the simulator) or ``proxy`` (the relay).
TARGETS = ("sim", "proxy")


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
        description: The file's one-line ``description``, if any.
    """

    steps: list[Step]
    gateway: dict[str, Any] = field(default_factory=dict)
    source: str = "<string>"
    description: str = ""


def _check_type(where: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        expected = " or ".join(t.__name__ for t in types)
        raise ScenarioError(f"{where}: {name!r} must be {expected}, got {value!r}")


def parse_scenario(
    data: dict[str, Any], source: str = "<string>", *, target: str = "sim"
) -> Scenario:
    """Validate a decoded TOML document.

    Args:
        data: The TOML document as a dict.
        source: Name used in error messages.
        target: ``sim`` or ``proxy``: for the proxy, an action of
            :data:`RELAY_ACTIONS` that cannot apply to a relay is rejected
            with the reason, and the proxy-only fields are accepted.

    Returns:
        The scenario.

    Raises:
        ScenarioError: For unknown actions, missing or mistyped fields.
    """
    unknown_top = set(data) - set(TOP_LEVEL_KEYS)
    if unknown_top:
        raise ScenarioError(f"{source}: unknown top-level key(s) {sorted(unknown_top)}; "
                            f"valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ScenarioError(f"{source}: 'description' must be a string")
    raw_steps = data.get("step", [])
    if not isinstance(raw_steps, list):
        raise ScenarioError(f"{source}: 'step' must be an array of tables ([[step]])")
    gateway = data.get("gateway", {})
    if not isinstance(gateway, dict):
        raise ScenarioError(f"{source}: [gateway] must be a table")
    unknown_gateway = set(gateway) - set(GATEWAY_KEYS)
    if unknown_gateway:
        raise ScenarioError(f"{source}: unknown [gateway] key(s) {sorted(unknown_gateway)}; "
                            f"valid keys: {', '.join(GATEWAY_KEYS)}")
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
        if target == "proxy":
            applies, why = RELAY_ACTIONS.get(action, (False, "not reviewed for the proxy yet"))
            if not applies:
                raise ScenarioError(f"{where}: action {action!r} cannot apply to the proxy: "
                                    f"{why}")
        required, optional = ACTIONS[action]
        relay_only = RELAY_ONLY_FIELDS.get(action, {})
        if target == "proxy":
            optional = {**optional, **relay_only}
        params = {k: v for k, v in raw.items() if k not in ("at", "action")}
        for name in params:
            if target != "proxy" and name in relay_only:
                raise ScenarioError(f"{where} ({action}): field {name!r} applies to the proxy "
                                    "only (ibkr-connection proxy --scenario)")
        for name, types in required.items():
            if name not in params:
                raise ScenarioError(f"{where} ({action}): missing field {name!r}")
            _check_type(f"{where} ({action})", name, params[name], types)
        for name, value in params.items():
            if name in required:
                continue
            if name not in optional:
                valid = ", ".join([*STEP_FIELDS, *required, *optional])
                raise ScenarioError(
                    f"{where} ({action}): unknown field {name!r}; valid fields: {valid}")
            _check_type(f"{where} ({action})", name, value, optional[name])
        if action in ("hold_sync", "delay_sync") and params["request"] not in SYNC_REQUESTS:
            raise ScenarioError(f"{where} ({action}): unknown request {params['request']!r}")
        if action == "fill_mode" and params["mode"] not in ("immediate", "manual", "parts"):
            raise ScenarioError(f"{where} (fill_mode): mode must be immediate, manual or parts")
        steps.append(Step(float(at), action, params))
    steps.sort(key=lambda s: s.at)
    return Scenario(steps, gateway, source, description.strip())


def _parse_toml(text: str, source: str, target: str = "sim") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: invalid TOML: {exc}") from exc
    return parse_scenario(data, source, target=target)


def load_scenario(path: str | Path, *, target: str = "sim") -> Scenario:
    """Load and validate a TOML scenario file.

    Args:
        path: The file.
        target: ``sim`` or ``proxy`` (see :func:`parse_scenario`).

    Returns:
        The scenario.

    Raises:
        ScenarioError: If the file is missing, is not TOML, or is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from exc
    return _parse_toml(text, str(path), target)


def _shipped_dir() -> Any:
    # A Traversable: files on disk from a wheel or a checkout, but it could be
    # a zip, so it is read through importlib.resources, never as a Path.
    return resources.files("ibkr_connection.simulator").joinpath("scenarios")


def shipped_scenarios(*, target: str = "sim") -> dict[str, Scenario]:
    """Return the scenarios shipped in the package, by name, sorted by name.

    Args:
        target: ``sim`` or ``proxy`` (see :func:`parse_scenario`).

    Raises:
        ScenarioError: A shipped file is invalid (a packaging bug), or, for
            the proxy, uses an action a relay cannot play.
    """
    found = {}
    for entry in _shipped_dir().iterdir():
        name = str(entry.name)
        if name.endswith(".toml"):
            found[name.removesuffix(".toml")] = entry
    return {name: _parse_toml(found[name].read_text(encoding="utf-8"), f"{name} (shipped)",
                              target)
            for name in sorted(found)}


def resolve_scenario(name_or_path: str, *, target: str = "sim") -> Scenario:
    """Load a scenario from a file, or a shipped one by name (``nightly_reset``).

    A file that exists wins over a shipped scenario of the same name.

    Args:
        name_or_path: A path to a TOML file, or a shipped scenario's name
            (with or without ``.toml``).
        target: ``sim`` or ``proxy`` (see :func:`parse_scenario`).

    Returns:
        The scenario.

    Raises:
        ScenarioError: Neither a readable file nor a shipped scenario (the
            message lists the shipped ones), or the file is invalid.
    """
    if Path(name_or_path).is_file():
        return load_scenario(name_or_path, target=target)
    shipped = shipped_scenarios(target=target)
    name = name_or_path.removesuffix(".toml")
    if name in shipped:
        return shipped[name]
    raise ScenarioError(f"{name_or_path}: no such file, and no shipped scenario of that name "
                        f"(shipped: {', '.join(shipped)})")


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
        "Generated from `ibkr_connection.simulator.scenario.ACTIONS` and `ACTION_DOCS` by "
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
