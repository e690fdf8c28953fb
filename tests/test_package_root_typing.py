"""The package root as a user's type checker and IDE see it (its names load lazily)."""

from __future__ import annotations

from pathlib import Path

from mypy import api as mypy_api

USER_FILE = '''\
from ibkr_connection import Config, ConnectionConfig, ConnectionManager, IBKRIBInsyncApi
from ibkr_connection import ConectionManager


def build(ib: object) -> ConnectionManager:
    config: ConnectionConfig = ConnectionConfig(port=4002)
    wrong: int = IBKRIBInsyncApi(Config())
    return ConnectionManager(ib, config)
'''


def test_mypy_flags_a_misspelled_import_from_the_root(tmp_path: Path) -> None:
    """A typo in a name imported from the root is a mypy error, the lazy names stay typed."""
    user = tmp_path / "user.py"
    user.write_text(USER_FILE, encoding="utf-8")
    out, err, status = mypy_api.run([
        "--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
        "--follow-imports", "silent", str(user)])
    # mypy's own "; maybe ..." suggestions are cut off: they list near names, whichever.
    lines = sorted(line.split(": error: ", 1)[1].split(";")[0] for line in out.splitlines()
                   if ": error: " in line)
    assert lines == [
        'Incompatible types in assignment (expression has type "IBKRIBInsyncApi", '
        'variable has type "int")  [assignment]',
        'Module "ibkr_connection" has no attribute "ConectionManager"',
    ], (out, err)
    assert status == 1
