"""The README is a test: every Python block runs against the simulator, on both backends.

Each ```python block of README.md runs as written, as its own program in a
fresh interpreter, against a simulator listening on 127.0.0.1: the literal
gateway port ``4002`` becomes the simulator's port (also in ``IBKR_PORT`` for
blocks that read the environment), and IBC's command server port ``7462`` the
port of the simulator's IBC command server. On ib_async the block runs with
``ib_insync`` replaced by ``ib_async``, which is what a user of that backend
writes. A block must exit 0, print no traceback, and print what the table
below says it prints.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ibkr_connection.simulator import FakeGateway

README = Path(__file__).resolve().parent.parent / "README.md"

#: section heading -> what the block must print (written out here, not read from the README).
EXPECTED_OUTPUT = {
    "Quick start": [
        "disconnected -> connecting (connect)",
        "connecting -> connected (attempt_succeeded)",
        "AAPL last 150.0 - state connected",
        "connected -> disconnected (disconnect)",
        "disconnected -> stopped (stop)",
    ],
    "Health checks and metrics from the bot itself": ["ok connected", "ibkr_connection_state"],
    "Sync bots: `IBKRIBInsyncApi`": ["Filled"],
    "Orders and disconnects": ["Filled - still uncertain: 0"],
    "Restarting a wedged gateway (IBC)": [
        "restart: RESTART in progress",
        "connected -> backoff (socket_closed)",
        "connecting -> connected (attempt_succeeded)",
        "restarts the manager decided: 0",
    ],
}


def _blocks() -> list[tuple[str, str]]:
    """Return (section heading, code) for every ```python block of the README."""
    heading = ""
    blocks: list[tuple[str, str]] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            end = lines.index("```", i + 1)
            blocks.append((heading, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


BLOCKS = _blocks()


def test_every_block_has_its_expected_output() -> None:
    """Each Python block of the README is listed in EXPECTED_OUTPUT, and nothing else is."""
    assert sorted(heading for heading, _ in BLOCKS) == sorted(EXPECTED_OUTPUT)


@pytest.fixture(scope="module")
def gateway_port() -> Iterator[tuple[int, int]]:
    """A simulator (and its IBC command server) on its own thread and loop, so the
    blocks' programs can reach it: (API port, IBC port)."""
    loop = asyncio.new_event_loop()
    gateway = FakeGateway(accounts=["DU1234567"], next_order_id=100, prices={"AAPL": 150.0},
                          ibc_port=0, ibc_restart_outage=0.1)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(gateway.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    assert gateway.ibc is not None
    yield gateway.port, gateway.ibc.port
    asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.mark.parametrize("backend", ["ib_insync", "ib_async"])
@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[h for h, _ in BLOCKS])
def test_readme_block_runs(heading: str, code: str, backend: str,
                           gateway_port: tuple[int, int], tmp_path: Path) -> None:
    """The block runs as written against the simulator and prints what it promises."""
    api_port, ibc_port = gateway_port
    program = re.sub(r"\b4002\b", str(api_port), code)
    program = re.sub(r"\b7462\b", str(ibc_port), program)
    if backend == "ib_async":
        program = program.replace("ib_insync", "ib_async")
    script = tmp_path / "block.py"
    script.write_text(program, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IBKR_")}
    env.update(IBKR_HOST="127.0.0.1", IBKR_PORT=str(api_port), IBKR_CLIENT_ID="31")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for expected in EXPECTED_OUTPUT[heading]:
        assert expected in done.stdout, (expected, done.stdout, done.stderr[-2000:])
