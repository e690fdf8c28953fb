"""The simulator package keeps the project's module rule: one job each, under 700 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ibkr_connection.simulator

PACKAGE = Path(ibkr_connection.simulator.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_LINES = 700


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_short_and_says_its_job(path: Path) -> None:
    """Every simulator module is under 700 lines and opens with a docstring."""
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    assert ast.get_docstring(ast.parse(text))
