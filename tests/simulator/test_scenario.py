"""Scenario file loading, running, and the ``sim`` CLI parser."""

from __future__ import annotations

import argparse
import asyncio
from importlib import resources
from pathlib import Path

import pytest
from ib_insync import IB

from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator import cli as sim_cli
from ibkr_connection.simulator.scenario import (
    ScenarioError,
    load_scenario,
    parse_scenario,
    run_scenario,
)

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
        ('[[step]]\nat = 1\naction = "explode"\n', "unknown action 'explode'"),
        ('[[step]]\nat = 1\naction = "error"\n', "missing field 'code'"),
        ('[[step]]\naction = "stall"\n', "missing field 'at'"),
        ("[[step]]\nat = 1\n", "missing field 'action'"),
        ('[[step]]\nat = 1\naction = "error"\ncode = "x"\n', "'code' must be int"),
        ('[[step]]\nat = 1\naction = "stall"\nfoo = 1\n', "unknown field 'foo'"),
        ('[[step]]\nat = 1\naction = "hold_sync"\nrequest = "reqNope"\n', "unknown request"),
        ("[[step]\nat = 1\n", "invalid TOML"),
        ("bogus = 1\n", "unknown top-level key"),
    ],
)
def test_bad_files_rejected(tmp_path: Path, text: str, fragment: str) -> None:
    """Bad files raise ScenarioError naming the problem."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=fragment.replace("(", r"\(")):
        load_scenario(path)


def test_missing_file_rejected(tmp_path: Path) -> None:
    """A missing file is a ScenarioError, not an OSError."""
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")


def test_shipped_example_is_valid() -> None:
    """The packaged nightly_reset.toml example loads."""
    ref = resources.files("ibkr_connection.simulator") / "scenarios" / "nightly_reset.toml"
    sc = load_scenario(str(ref))
    assert {s.action for s in sc.steps} >= {"error", "farm_broken", "farm_ok"}


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
        await asyncio.sleep(0.05)
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
