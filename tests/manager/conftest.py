"""ConnectionManager tests: each runs once per client library (fixtures: tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from conftest import ACCOUNT, FAST_POLICY, loop_factories

#: The names this directory's modules import.
FAST = FAST_POLICY
__all__ = ["ACCOUNT", "FAST"]

#: (client library, the simulator's highest server version): one wire per client
#: library, each at the highest version it offers against a current gateway
#: (ib_insync 0.9.86 speaks 176 to a 178 gateway, ib_async 178). No decision of the
#: manager depends on the server version: the layouts have their own suite
#: (tests/simulator/test_versions.py, test_message_layouts.py).
LIBRARIES = [("ib_insync", 178), ("ib_async", 178)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the suite's tests once per client library."""
    if "wire" in metafunc.fixturenames:
        metafunc.parametrize("wire", LIBRARIES, ids=[lib for lib, _ in LIBRARIES],
                             indirect=True)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """A module that sets ``VIRTUAL_TIME = True`` runs on virtual time (tests/conftest.py)."""
    return loop_factories(item)
