"""``ibkr-connection sim`` as an operator runs it: a real child process."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from conftest import reap, run_cli, start_sim


def test_sim_ibc_port_taken_names_the_ibc_port(taken_port: int) -> None:
    """--ibc-port taken: one line naming that port (not the gateway's), exit 2."""
    done = run_cli("sim", "--port", "0", "--ibc-port", str(taken_port), "--duration", "5")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"ibkr-connection sim: cannot listen on 127.0.0.1:{taken_port} (IBC command server): "
        "Address already in use")
    assert "ERROR" not in done.stderr


def test_sim_port_taken_is_one_line_and_status_2(taken_port: int) -> None:
    """--port taken: one line in the commands' style naming the port, exit 2."""
    done = run_cli("sim", "--port", str(taken_port), "--duration", "5")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"ibkr-connection sim: cannot listen on 127.0.0.1:{taken_port}: Address already in use"]


def test_sim_bad_scenario_is_one_line_and_status_2(tmp_path: Path) -> None:
    """An invalid scenario: one line in the commands' style, no log timestamp, exit 2."""
    path = tmp_path / "s.toml"
    path.write_text("[[step]\nat = 1\n")
    done = run_cli("sim", "--port", "0", "--scenario", str(path), "--duration", "5")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"ibkr-connection sim: {path}: invalid TOML"), line


async def _sim_session(scenario: Path) -> list[str]:
    """Run ``sim`` with IBC and ``scenario``, connect a client once, stop it; its stderr lines."""
    from ib_insync import IB

    child, port, seen = await start_sim("--ibc-port", "0", "--scenario", str(scenario),
                                        "--duration", "60")
    try:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=5, timeout=10)
        # The scenario's last step drops the client: its disconnect is the cue to stop.
        await asyncio.wait_for(ib.disconnectedEvent, 30)
        child.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        await reap(child)
    assert child.returncode == 0
    return seen + err.decode().splitlines()


async def test_sim_says_each_event_once(tmp_path: Path) -> None:
    """In a terminal, sim gives each event one line: start, IBC, a connect, a fault, a restart."""
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[step]]\nat = 1.0\naction = "farm_broken"\nfarm = "usfarm"\n'
                        '[[step]]\nat = 1.5\naction = "restart"\noutage = 0.1\n')
    lines = await _sim_session(scenario)

    def count(pattern: str) -> int:
        return sum(1 for line in lines if re.search(pattern, line))

    assert count(r"IBC command server on") == 1, lines
    assert count(r"ready on|gateway listening on") == 1, lines
    assert count(r"client 5 connected|connection 1 ") == 1, lines
    assert count(r"farm_broken|2103") == 1, lines
    assert count(r"gateway restart|dropped") == 1, lines
    assert count(r"stopped listening") == 0, lines


async def test_sim_fill_mode_parts_fills_in_that_many_executions() -> None:
    """``sim --fill-mode parts --fill-parts 3``: a 30-share order fills in three executions."""
    from ib_insync import IB, MarketOrder, Stock

    child, port, _ = await start_sim("--fill-mode", "parts", "--fill-parts", "3",
                                     "--duration", "60")
    try:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=5, timeout=10)
        trade = ib.placeOrder(Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 30))
        deadline = asyncio.get_running_loop().time() + 30
        while not trade.isDone():
            assert asyncio.get_running_loop().time() < deadline, trade
            await asyncio.sleep(0.01)
        ib.disconnect()
    finally:
        child.send_signal(signal.SIGINT)
        await asyncio.wait_for(child.communicate(), 60)
    assert trade.orderStatus.status == "Filled"
    assert [fill.execution.shares for fill in trade.fills] == [10.0, 10.0, 10.0]
