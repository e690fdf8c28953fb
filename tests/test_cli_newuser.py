"""A new user's first hour with the CLI: what the README promises and what a bare machine lacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ibkr_connection.cli", *args],
                          capture_output=True, text=True, timeout=60, check=False, env=env)


def test_diagram_without_graphviz_is_one_line_naming_no_svg(tmp_path: Path) -> None:
    """No `dot` on PATH: one line naming Graphviz and --no-svg, exit 2, no traceback."""
    bare = tmp_path / "bin"  # a PATH with no Graphviz on it
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    done = _cli("diagram", "--out", str(tmp_path / "diagrams"), env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "ibkr-connection diagram: Graphviz 'dot' is not installed (apt-get install graphviz): "
        "install it, or pass --no-svg to write everything but the SVG"]
    again = _cli("diagram", "--no-svg", "--out", str(tmp_path / "diagrams"), env=env)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "diagrams" / "connection.mmd").is_file()
    assert not (tmp_path / "diagrams" / "connection.svg").exists()
