"""Scenario file loading, running, and the ``sim`` CLI parser."""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path

import pytest
from ib_insync import IB

from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator import cli as sim_cli
from ibkr_connection.simulator.scenario import run_scenario
from ibkr_connection.wire.scenario import (
    ACTION_DOCS,
    ACTIONS,
    ScenarioError,
    load_scenario,
    parse_scenario,
    resolve_scenario,
    shipped_scenarios,
)

from conftest import round_trip

DOCS = Path(__file__).resolve().parents[2] / "docs"

GOOD = """
[gateway]
accounts = ["DU1", "DU2"]

[[step]]
at = 0.05
action = "farm_broken"
farm = "usfarm"

[[step]]
at = 0.0
action = "error"
code = 1100

[[step]]
at = 0.1
action = "error"
code = 1102
"""


def test_good_file_loads(tmp_path: Path) -> None:
    """A valid file loads with steps sorted by time and the gateway table kept."""
    path = tmp_path / "s.toml"
    path.write_text(GOOD)
    sc = load_scenario(path)
    assert [s.action for s in sc.steps] == ["error", "farm_broken", "error"]
    assert sc.steps[0].params == {"code": 1100}
    assert sc.gateway["accounts"] == ["DU1", "DU2"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[step]]\nat = 1\naction = "explode"\n',
         "step 1: unknown action 'explode'; known: delay_sync, drop_clients, error, farm_broken, "
         "farm_ok, fill_mode, fill_order, handshake_delay, hold_sync, nightly_reset, push_tick, "
         "release_sync, reset_port, restart, set_next_valid_id, stall, start_listening, "
         "stop_listening, unstall"),
        ('[[step]]\nat = 1\naction = "error"\n', "missing field 'code'"),
        ('[[step]]\naction = "stall"\n', "missing field 'at'"),
        ("[[step]]\nat = 1\n", "missing field 'action'"),
        ('[[step]]\nat = 1\naction = "error"\ncode = "x"\n', "'code' must be int"),
        ('[[step]]\nat = 1\naction = "stall"\nfoo = 1\n',
         "step 1 (stall): unknown field 'foo'; valid fields: at, action"),
        ('[[step]]\nat = 1\naction = "error"\ncode = 1100\nfarm = "usfarm"\n',
         "step 1 (error): unknown field 'farm'; valid fields: at, action, code, message, "
         "client_id, req_id"),
        ('[[step]]\nat = 1\naction = "restart"\n[[step]]\nat = 2\naction = "restart"\n'
         'outgae = 3\n',
         "step 2 (restart): unknown field 'outgae'; valid fields: at, action, outage"),
        ('[[step]]\nat = 1\naction = "hold_sync"\nrequest = "reqNope"\n', "unknown request"),
        ("[[step]\nat = 1\n", "invalid TOML"),
        ("bogus = 1\n",
         "unknown top-level key(s) ['bogus']; valid keys: description, gateway, step"),
        ('[gateway]\nacounts = ["DU1"]\n',
         "unknown [gateway] key(s) ['acounts']; valid keys: accounts"),
        ("description = 3\n", "'description' must be a string"),
    ],
)
def test_bad_files_rejected(tmp_path: Path, text: str, fragment: str) -> None:
    """Bad files raise ScenarioError naming the problem and listing what is valid."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=re.escape(fragment)):
        load_scenario(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    """A missing file is a ScenarioError, not an OSError."""
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")


#: The scenarios the package ships, by name.
SHIPPED = ["gateway_restart", "hung_gateway", "nightly_reset"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_is_package_data_and_valid(name: str) -> None:
    """Each shipped scenario is a package resource that loads and says what it does."""
    ref = resources.files("ibkr_connection.wire").joinpath("scenarios", f"{name}.toml")
    assert ref.is_file()
    sc = load_scenario(str(ref))
    assert sc.steps and sc.description


def test_shipped_scenarios_are_all_listed() -> None:
    """shipped_scenarios() finds exactly the shipped files, sorted by name."""
    assert list(shipped_scenarios()) == SHIPPED


def test_shipped_example_is_valid() -> None:
    """The packaged nightly_reset.toml example loses and restores the link."""
    ref = resources.files("ibkr_connection.wire") / "scenarios" / "nightly_reset.toml"
    sc = load_scenario(str(ref))
    assert {s.action for s in sc.steps} >= {"error", "farm_broken", "farm_ok"}


def test_scenario_by_name_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name picks a shipped scenario; an existing file wins over a name, with or without .toml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightly_reset.toml").write_text(GOOD)
    assert resolve_scenario("nightly_reset").source == "nightly_reset (shipped)"
    assert len(resolve_scenario("nightly_reset.toml").steps) == 3  # the local file
    assert resolve_scenario("hung_gateway.toml").source == "hung_gateway (shipped)"
    with pytest.raises(ScenarioError, match=re.escape(
            "nope: no such file, and no shipped scenario of that name "
            "(shipped: gateway_restart, hung_gateway, nightly_reset)")):
        resolve_scenario("nope")


def test_action_docs_cover_the_action_table() -> None:
    """Every action and every field of ACTIONS has a description, and no other is described."""
    assert set(ACTION_DOCS) == set(ACTIONS)
    for action, (required, optional) in ACTIONS.items():
        what, fields = ACTION_DOCS[action]
        assert what, action
        assert set(fields) == set(required) | set(optional), action
        assert all(fields.values()), action


async def test_run_scenario_delivers_steps() -> None:
    """Running a scenario delivers its faults to a connected client in order."""
    sc = parse_scenario(
        {
            "step": [
                {"at": 0.0, "action": "error", "code": 1100},
                {"at": 0.02, "action": "farm_broken", "farm": "ushmds"},
                {"at": 0.04, "action": "nightly_reset", "silence": 0.01, "restore_code": 1101},
                {"at": 0.05, "action": "fill_mode", "mode": "parts", "parts": 3},
                {"at": 0.05, "action": "fill_order", "order_id": 999},
            ]
        }
    )
    async with FakeGateway(farms=["usfarm"]) as gw:
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=2)
        seen: list[int] = []
        ib.errorEvent += lambda r, code, m, c: seen.append(code)
        await run_scenario(gw, sc)
        await round_trip(ib)  # every code the scenario sent is heard
        ib.disconnect()
    assert seen == [1100, 2105, 1100, 2103, 2105, 1101, 2104, 2106]
    assert gw.fill_mode == ("parts", 3)


def test_cli_parser() -> None:
    """add_parser adds ``sim`` with its options and a func default."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sim_cli.add_parser(sub)
    args = parser.parse_args(["sim", "--port", "0", "--accounts", "DU1,DU2", "--scenario", "x"])
    assert args.port == 0 and args.accounts == "DU1,DU2" and args.scenario == "x"
    assert args.host == "127.0.0.1" and args.func is sim_cli.run
    assert parser.parse_args(["sim"]).port == 4002


def test_cli_runs_and_exits(tmp_path: Path) -> None:
    """The sim command runs a scenario for --duration seconds and exits 0."""
    path = tmp_path / "s.toml"
    path.write_text(GOOD)
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", "--port", "0", "--scenario", str(path), "--duration", "0.2"])
    assert args.func(args) == 0


def test_cli_bad_scenario_exit_code(tmp_path: Path) -> None:
    """A bad scenario file makes the sim command exit with status 2."""
    path = tmp_path / "bad.toml"
    path.write_text('[[step]]\nat = 1\naction = "explode"\n')
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", "--port", "0", "--scenario", str(path)])
    assert args.func(args) == 2


def test_main_cli_has_sim() -> None:
    """The project's top-level CLI exposes the sim sub-command."""
    from ibkr_connection.cli import build_parser

    args = build_parser().parse_args(["sim", "--port", "0"])
    assert args.func is sim_cli.run


def _sim(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["sim", *argv])


@pytest.mark.parametrize("name", SHIPPED)
def test_cli_runs_a_shipped_scenario_by_name(name: str) -> None:
    """``sim --scenario NAME`` runs the shipped scenario and exits 0."""
    args = _sim("--port", "0", "--scenario", name, "--duration", "0.1")
    assert args.func(args) == 0


def test_cli_unknown_scenario_name_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown scenario name exits 2 and lists the shipped ones."""
    args = _sim("--port", "0", "--scenario", "nightly_rest")
    assert args.func(args) == 2
    assert "shipped: gateway_restart, hung_gateway, nightly_reset" in capsys.readouterr().err


def test_cli_lists_shipped_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    """``sim --list-scenarios`` prints one line per shipped scenario, with what it does."""
    args = _sim("--list-scenarios")
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    assert all(len(line.split()) > 3 for line in lines)
    assert any("1100" in line and "1101" in line for line in lines)


def test_reference_page_says_what_at_counts() -> None:
    """docs/scenarios.md says that ``at`` counts seconds from the simulator's start."""
    page = (DOCS / "scenarios.md").read_text()
    assert "in seconds from the simulator's start" in page


@pytest.mark.parametrize("action", [
    "error", "farm_broken", "farm_ok", "drop_clients", "stop_listening", "start_listening",
    "restart", "reset_port", "stall", "unstall", "handshake_delay", "hold_sync",
    "release_sync", "delay_sync", "nightly_reset", "fill_order", "push_tick",
    "set_next_valid_id", "fill_mode",
])
def test_reference_page_documents_action(action: str) -> None:
    """docs/scenarios.md has a section for each action."""
    assert f"\n### `{action}`\n" in (DOCS / "scenarios.md").read_text()
