"""A smoke run of the fault matrix at server version 157: a few cells, on ib_insync.

The matrix runs at 176 (ib_insync) and 178 (ib_async) in test_fault_matrix; here
ib_insync is held at 157, the layouts before every field 158..178 added, for a
drop, a gateway restart and the codes that end and restore a session: the cells
where a session is re-made and fills must arrive. The layouts themselves have
their own suite (tests/simulator/test_versions.py, test_message_layouts.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ibkr_connection import ConnectionManager
from ibkr_connection.simulator import FakeGateway

from .conftest import TracebackCatcher
from .test_fault_matrix import test_fault_in_state as fault_in_state

Make = Callable[..., ConnectionManager]

SMOKE = [("connected", "drop_clients"), ("degraded", "restart"), ("connected", "code_1100"),
         ("lost", "code_1101"), ("connected", "code_2103")]


@pytest.mark.parametrize("wire", [("ib_insync", 157)], ids=["ib_insync-v157"], indirect=True)
@pytest.mark.parametrize(("state", "fault"), SMOKE, ids=[f"{s}-{f}" for s, f in SMOKE])
async def test_fault_in_state_at_157(
    state: str, fault: str, make_manager: Make, gw: FakeGateway,
    tracebacks: TracebackCatcher, wire: tuple[str, int],
) -> None:
    """At 157 the fault leaves the manager in its declared state, with every fill known."""
    assert gw.server_version == 157
    await fault_in_state(state, fault, make_manager, gw, tracebacks)
    assert [c.version for c in gw.clients] in ([], [157])
