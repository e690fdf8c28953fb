"""The committed diagrams and tables match the code."""

from __future__ import annotations

from pathlib import Path

from ibkr_connection import diagram
from ibkr_connection.inputs import InputKind
from ibkr_connection.table import ConnectionState

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"
DOCS = DIAGRAMS.parent / "docs"


def test_no_drift() -> None:
    """diagrams/, the README's diagram and docs/scenarios.md are what `diagram` would write."""
    assert diagram.drift(DIAGRAMS, docs=DOCS) == [], "run: uv run ibkr-connection diagram"


def test_mermaid_names_every_state_and_move() -> None:
    """The Mermaid diagram shows every state and every input that moves the machine."""
    text = (DIAGRAMS / "connection.mmd").read_text()
    for state in ConnectionState:
        assert f'state "{state.value}' in text
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


def test_diagram_labels_each_row_with_its_actions() -> None:
    """Moves and stays that act carry their actions: notes, counting and delays included."""
    text = diagram.mermaid()
    for line in (
        "disconnected --> connecting: connect / first_attempt",
        "backoff --> connecting: retry_due / count_attempt",
        "backoff --> backoff: port_reset / note_port",
        "connected --> lost: connectivity_lost",
        "lost --> backoff: socket_closed / draw_delay+end_session"
        " | heartbeat_missed / note_wedge_sign+draw_costly_delay+end_session"
        " | restore_timeout / draw_costly_delay+end_session"
        " | port_reset / note_port+retry_at_once+end_session"
        " | not_connected / draw_delay+end_session",
        "lost --> restarting: heartbeat_missed / note_wedge_sign+end_session [wedged]"
        " | restore_timeout / end_session [link_stuck]",
        "restarting --> restarting: port_reset / note_port"
        " | restart_sent / forget_endpoint+probe_gateway",
        "connecting --> backoff: attempt_failed / note_gateway_down+draw_delay"
        " [retries_left & !costly] | attempt_failed / note_wedge_sign+warn_not_an_api_port"
        "+draw_costly_delay [silent_unproven] | attempt_failed / note_wedge_sign"
        "+draw_costly_delay | port_reset / note_port+retry_at_once"
        " | client_id_in_use / draw_costly_delay+retry_same_client_id [same_client_id_again]"
        " | client_id_in_use / draw_costly_delay"
        "+next_client_id [fallback_client_id] | client_id_in_use / draw_costly_delay"
        "+keep_client_id [retries_left] | not_connected / draw_delay [retries_left]",
        "restarting --> backoff: restart_failed / draw_costly_delay"
        " | restart_timeout / draw_costly_delay",
        "restarting --> connecting: gateway_back / count_attempt",
        "connecting --> restarting: attempt_failed / note_wedge_sign [costly & wedged]",
    ):
        assert f"  {line}\n" in text, line
    assert "farm_ok / note_farm_ok" in text
    assert "note_fact" not in text


def test_transitions_page_lists_actions_and_guards() -> None:
    """transitions.md shows each row's actions, and what each action and guard does."""
    text = diagram.transitions_markdown()
    assert "| connecting | farm_ok |  | stay | note_farm_ok | farm remembered as OK |" in text
    assert "| connecting | socket_closed |  | ignore |  | the attempt reports the close" in text
    for line in ("| note_farm_ok | note |", "| draw_costly_delay | before |",
                 "| start_heartbeat | after |", "| link_lost | a 1100 was noted"):
        assert line in text, line


def test_architecture_page_shows_the_generated_drawing(tmp_path: Path) -> None:
    """docs/architecture.md carries the data-flow drawing; an edit to it is drift."""
    page = (DOCS / "architecture.md").read_text()
    assert f"```mermaid\n{diagram.architecture_mermaid()}```" in page
    docs = tmp_path / "docs"
    diagram.write_all(tmp_path / "diagrams", with_svg=False, docs=docs)
    (docs / "architecture.md").write_text(page.replace("codes.FAILURES", "codes.ERRORS", 1))
    assert docs / "architecture.md" in diagram.stale_paths(tmp_path / "diagrams", docs)
    diagram.write_all(tmp_path / "diagrams", with_svg=False, docs=docs)
    assert (docs / "architecture.md").read_text() == page


def test_drawing_says_where_every_input_comes_from() -> None:
    """Every input kind is on an arrow or in a classification table of the drawing."""
    text = diagram.architecture_mermaid()
    for kind in InputKind:
        assert kind.value in text, kind
    for name in ("codes.CODES", "codes.FAILURES", "outputs.Effects", "driver.Driver",
                 "table.TABLE", "port_reset (1300)",
                 "ConnectionRefusedError: attempt_failed, cheap"):
        assert name in text, name


def test_state_boxes_show_entry_and_exit_actions() -> None:
    """Each state's box lists its entry and exit actions, guards in brackets."""
    text = (DIAGRAMS / "connection.mmd").read_text()
    for line in (
        'state "lost\\n- enter:\\n  + start_maintenance_restore_timer [in_reset_window]'
        '\\n  + start_restore_timer [!in_reset_window]\\n- exit:\\n  + cancel_restore_timer"',
        'state "degraded\\n- enter:\\n  + start_farm_timer [controller_configured]'
        '\\n- exit:\\n  + cancel_farm_timer [controller_configured]"',
        'state "connecting\\n- enter:\\n  + forget_session\\n  + start_attempt"',
    ):
        assert line in text, line
    table = (DIAGRAMS / "transitions.md").read_text()
    assert ("| backoff | stop_heartbeat, tear_down, schedule_retry | cancel_retry |"
            in table)
