"""The committed diagrams and tables match the code."""

from __future__ import annotations

from pathlib import Path

from ibkr_connection import diagram
from ibkr_connection.inputs import InputKind
from ibkr_connection.machine import ConnectionState

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"
DOCS = DIAGRAMS.parent / "docs"


def test_no_drift() -> None:
    """diagrams/, the README's diagram and docs/scenarios.md are what `diagram` would write."""
    assert diagram.drift(DIAGRAMS, docs=DOCS) == [], "run: uv run ibkr-connection diagram"


def test_mermaid_names_every_state_and_move() -> None:
    """The Mermaid diagram shows every state and every input that moves the machine."""
    text = (DIAGRAMS / "connection.mmd").read_text()
    for state in ConnectionState:
        assert f'state "{state.value}"' in text
    for kind in InputKind:
        assert kind.value in text


def test_svg_is_rendered() -> None:
    """The committed SVG is a rendering that names every state."""
    text = (DIAGRAMS / "connection.svg").read_text()
    assert "<svg" in text
    for state in ConnectionState:
        assert f">{state.value}" in text


def test_drift_detected(tmp_path: Path) -> None:
    """A stale file is reported by name."""
    diagram.write_all(tmp_path, with_svg=False)
    (tmp_path / "codes.md").write_text("stale\n")
    assert diagram.drift(tmp_path) == ["codes.md", "connection.svg"]


def test_readme_shows_the_generated_diagram(tmp_path: Path) -> None:
    """The README's Mermaid block is the generated one, and an edit to it is drift."""
    readme = (DIAGRAMS.parent / "README.md").read_text()
    assert f"```mermaid\n{diagram.mermaid()}```" in readme
    out = tmp_path / "diagrams"
    diagram.write_all(out, with_svg=False)
    edited = readme.replace("connecting --> connected: attempt_succeeded",
                            "connecting --> connected: edited", 1)
    assert edited != readme
    (tmp_path / "README.md").write_text(edited)
    assert "README.md" in diagram.drift(out)


def test_scenario_reference_drift_detected(tmp_path: Path) -> None:
    """An edit to the generated scenario reference is drift, reported with its path."""
    diagram.write_all(tmp_path / "diagrams", with_svg=False, docs=tmp_path / "docs")
    page = tmp_path / "docs" / "scenarios.md"
    assert "### `nightly_reset`" in page.read_text()
    page.write_text(page.read_text().replace("`outage`", "`pause`"))
    assert page in diagram.stale_paths(tmp_path / "diagrams", tmp_path / "docs")
    assert diagram.drift(tmp_path / "diagrams", tmp_path / "docs") == [
        "connection.svg", "scenarios.md"]
