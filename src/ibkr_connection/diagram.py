"""Diagrams and docs derived from the transition table, for review.

``ibkr-connection diagram`` writes, into ``diagrams/``:

* ``connection.mmd``: the machine as a Mermaid state diagram (transitions'
  mermaid engine; needs no binary),
* ``connection.dot`` and ``connection.svg``: the same through Graphviz (the SVG
  needs the ``dot`` binary; it carries the SHA-256 of the DOT source it was
  rendered from, so a drift check needs no binary),
* ``transitions.md``: every row of the table, ignores included,
* ``codes.md``: the IB code table,

and, into ``docs/``, ``scenarios.md``: the simulator's scenario reference,
generated from :data:`ibkr_connection.wire.scenario.ACTIONS`, and the
data-flow drawing of ``architecture.md`` (between its generated markers),
from the code and failure tables, :data:`~ibkr_connection.table.ACTIONS`,
:data:`~ibkr_connection.table.TABLE` and the
:class:`~ibkr_connection.outputs.Effects` port.

The diagrams show every move and every stay that acts, labelled
``input / actions [guard]``; rows that only ignore an input are listed in
``transitions.md``, with every action and guard explained.
"""

from __future__ import annotations

import hashlib
import inspect
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from transitions.extensions import GraphMachine

from ibkr_connection import codes
from ibkr_connection.errors import UsageError
from ibkr_connection.inputs import InputKind
from ibkr_connection.outputs import Effects
from ibkr_connection.table import (
    ACTIONS,
    ENTRY,
    EXIT,
    GUARDS,
    TABLE,
    ConnectionState,
    Phase,
    Row,
    guard_terms,
)

TITLE = "ibkr-connection: connection state machine"
_SVG_STAMP = "<!-- dot-source-sha256: {} -->"


def _shown(row: Row) -> bool:
    return not row.ignored


def _graph_rows() -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for row in TABLE:
        if not _shown(row):
            continue
        spec: dict[str, Any] = {
            "trigger": row.input.value,
            "source": row.source.value,
            "dest": (row.dest or row.source).value,
        }
        terms = guard_terms(row.guard)
        if terms:
            spec["conditions"] = [name for name, wanted in terms if wanted]
            spec["unless"] = [name for name, wanted in terms if not wanted]
        if row.actions:
            # transitions labels an edge with its trigger: add what the row does.
            spec["trigger"] = f"{row.input.value} / {'+'.join(row.actions)}"
        specs.append(spec)
    return specs


class _Model:
    """A bare model for the diagram machine (never triggered)."""


def _graph(engine: Literal["graphviz", "mermaid"]) -> Any:
    model = _Model()
    # Each state box lists its entry and exit actions (table.ENTRY, table.EXIT),
    # a guarded one with its guard in brackets; the bare model never runs them.
    states = [{"name": state.value,
               "on_enter": [str(step) for step in ENTRY.get(state, ())],
               "on_exit": [str(step) for step in EXIT.get(state, ())]}
              for state in ConnectionState]
    machine = GraphMachine(
        model=model,
        states=states,
        transitions=_graph_rows(),
        initial=ConnectionState.DISCONNECTED.value,
        auto_transitions=False,
        graph_engine=engine,
        show_conditions=True,
        show_state_attributes=True,
        title=TITLE,
    )
    # Top to bottom reads better than transitions' default left to right for
    # seven states with many edges.
    machine.machine_attributes = {**machine.machine_attributes, "rankdir": "TB"}
    return model.get_graph()  # type: ignore[attr-defined]


def mermaid() -> str:
    """Return the Mermaid source of the machine."""
    return str(_graph("mermaid").draw(None)).rstrip() + "\n"


def dot() -> str:
    """Return the Graphviz DOT source of the machine.

    transitions joins the labels of the rows that share an edge with ``" | "``;
    here each goes on a line of its own, so the rendering stays readable.
    """
    return str(_graph("graphviz").source).rstrip().replace(" | ", "\\n") + "\n"


def svg(dot_source: str) -> str:
    """Render DOT to SVG with the ``dot`` binary, stamped with the source's hash.

    Raises:
        UsageError: if Graphviz's ``dot`` is not installed.
    """
    binary = shutil.which("dot")
    if binary is None:
        raise UsageError("Graphviz 'dot' is not installed (apt-get install graphviz)")
    rendered = subprocess.run(
        [binary, "-Tsvg"], input=dot_source, capture_output=True, text=True, check=True
    ).stdout
    return _SVG_STAMP.format(source_hash(dot_source)) + "\n" + rendered


def source_hash(dot_source: str) -> str:
    """Return the SHA-256 of a DOT source, as stamped into the SVG."""
    return hashlib.sha256(dot_source.encode()).hexdigest()


def svg_stamp(svg_text: str) -> str | None:
    """Return the source hash stamped into an SVG written by :func:`svg`."""
    first = svg_text.split("\n", 1)[0]
    prefix, _, rest = first.partition("dot-source-sha256: ")
    return rest.removesuffix(" -->").strip() if prefix == "<!-- " and rest else None


def transitions_markdown() -> str:
    """Return the full transition table as Markdown."""
    lines = [
        "# Transition table",
        "",
        "Generated from `ibkr_connection.table` (`TABLE`, `ACTIONS`, `GUARDS`, the states) "
        "by `ibkr-connection diagram`; "
        "do not edit by hand.",
        "Rows of the same state and input are tried in order; the first whose guard "
        "holds is taken. `stay` runs no exit or entry action.",
        "",
        "| state | input | guard | next | actions | why |",
        "|---|---|---|---|---|---|",
    ]
    for row in TABLE:
        nxt = row.dest.value if row.dest is not None else ("ignore" if row.ignored else "stay")
        lines.append(
            f"| {row.source.value} | {row.input.value} | {row.guard or ''} | {nxt} | "
            f"{', '.join(row.actions)} | {row.note} |"
        )
    lines += [
        "",
        "## Actions",
        "",
        "A row's actions run in its order, phase by phase: `note` actions before the "
        "row's guard is tried (the same on every row of a state and input), `before` "
        "actions once the guard held and before the move and the transcript entry, "
        "`after` actions after the move and the new state's entry actions; `state` "
        "actions are the states' entry and exit actions (below).",
        "",
        "| action | phase | what it does |",
        "|---|---|---|",
    ]
    for action in ACTIONS.values():
        lines.append(f"| {action.name} | {action.phase.value} | {action.doc} |")
    lines += [
        "",
        "## Entry and exit actions",
        "",
        "Declared in `ENTRY` and `EXIT`: run on every move into (out of) the state, in "
        "this order, the exit actions of the state left before the entry actions of the "
        "state entered; a stay runs none. An action with a guard in brackets runs only "
        "when the guard holds.",
        "",
        "| state | on entry | on exit |",
        "|---|---|---|",
    ]
    for state in ConnectionState:
        lines.append(
            f"| {state.value} | {', '.join(str(a) for a in ENTRY.get(state, ())) or '-'} | "
            f"{', '.join(str(a) for a in EXIT.get(state, ())) or '-'} |")
    lines += ["", "## Guards", "", "| guard | holds when |", "|---|---|"]
    for name, doc in GUARDS.items():
        lines.append(f"| {name} | {doc} |")
    lines += ["", "## States", ""]
    docs = state_docs()
    for state in ConnectionState:
        lines.append(f"- **{state.value}**: {docs.get(state, '')}".rstrip())
    return "\n".join(lines) + "\n"


def state_docs() -> dict[ConnectionState, str]:
    """Return each state's ``#:`` documentation comment from ``table.py``."""
    docs: dict[ConnectionState, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(ConnectionState).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif "=" in text and pending:
            name = text.split("=", 1)[0].strip()
            docs[ConnectionState[name]] = " ".join(pending)
            pending = []
    return docs


def texts() -> dict[str, str]:
    """Return every generated text file, by file name (the SVG excluded)."""
    return {
        "connection.mmd": mermaid(),
        "connection.dot": dot(),
        "transitions.md": transitions_markdown(),
        "codes.md": codes.markdown_table(),
    }


README_BEGIN = "<!-- BEGIN generated: diagrams/connection.mmd -->"
README_END = "<!-- END generated -->"
ARCHITECTURE_BEGIN = "<!-- BEGIN generated: data flow -->"


def _with_block(text: str, begin_marker: str, block: str, what: str) -> str:
    head, begin, rest = text.partition(begin_marker)
    _, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise UsageError(f"{what} needs the markers {begin_marker!r} and {README_END!r}")
    return f"{head}{begin_marker}\n```mermaid\n{block}```\n{README_END}{tail}"


def readme_with_diagram(readme: str) -> str:
    """Return ``readme`` with the Mermaid diagram between the generated markers.

    Raises:
        UsageError: if the README lacks the markers.
    """
    return _with_block(readme, README_BEGIN, mermaid(), "README")


#: Inputs that no classification table produces, by the node that produces them.
_PRODUCED_BY = {
    InputKind.CONNECT: "bot",
    InputKind.DISCONNECT: "bot",
    InputKind.SUBSCRIBED: "bot",
    InputKind.STOP: "bot",
    InputKind.ATTEMPT_SUCCEEDED: "attempt",
    InputKind.SOCKET_CLOSED: "ib",
    InputKind.RETRY_DUE: "timers",
    InputKind.RESTORE_TIMEOUT: "timers",
    InputKind.HEARTBEAT_MISSED: "timers",
    InputKind.RESTART_TIMEOUT: "timers",
    InputKind.FARM_RECONNECT_DUE: "timers",
    InputKind.RESTART_SENT: "controller",
    InputKind.RESTART_FAILED: "controller",
    InputKind.GATEWAY_BACK: "probe",
}


def _br(items: list[str], per_line: int = 3) -> str:
    """Join ``items`` into lines of ``per_line``, for a node's label."""
    rows = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "<br/>".join(rows)


def architecture_mermaid() -> str:
    """Return the data-flow drawing of ``docs/architecture.md`` as Mermaid.

    Every input kind appears on an arrow from where it comes from: the code
    table and the failure table for what they classify, the driver's other
    sources for the rest.

    Raises:
        UsageError: an input kind that no table or source produces.
    """
    by_code: dict[InputKind, list[str]] = {}
    for info in codes.CODES:
        if info.input is not None:
            by_code.setdefault(info.input, []).append(str(info.code))
    failure_inputs = []
    for failure in codes.FAILURES:
        names = "/".join(sorted({e.__name__ for e in failure.exceptions}))
        if failure.input is InputKind.FATAL_ERROR:
            failure_inputs.append(f"{names}: {failure.input.value}")
        else:
            cost = "costly" if failure.costly else "cheap"
            failure_inputs.append(f"{names}: {failure.input.value}, {cost}")
    from_failures = {failure.input for failure in codes.FAILURES}
    missing = [k.value for k in InputKind
               if k not in by_code and k not in from_failures and k not in _PRODUCED_BY]
    if missing:
        raise UsageError(f"the data-flow drawing does not say where {missing} come from")
    code_inputs = [f"{k.value} ({'/'.join(v)})" for k, v in by_code.items()]

    def produced(node: str) -> str:
        return ", ".join(k.value for k, n in _PRODUCED_BY.items() if n == node)

    def actions(phase: Phase) -> str:
        return _br([a.name for a in ACTIONS.values() if a.phase is phase])

    effects = sorted(name for name in vars(Effects) if not name.startswith("_"))
    lines = [
        "flowchart TB",
        '  bot["the bot<br/>start() / stop(), connect() / disconnect()"]',
        '  ib["IB object (ib_insync / ib_async)<br/>errorEvent, disconnectedEvent"]',
        '  attempt["attempt task<br/>IB.connectAsync, startup sync, account check"]',
        '  timers["timers on the injected clock<br/>retry, restore, heartbeat probe, '
        'restart wait, farm patience"]',
        '  controller["controller task<br/>Controller.restart() (IBC RESTART), '
        'reconnect_data()<br/>ControllerError: restart_failed"]',
        '  probe["gateway probe<br/>TCP connect and API handshake, while restarting"]',
        f'  code_table["codes.CODES<br/>{_br(code_inputs, 2)}"]',
        f'  failure_table["codes.FAILURES<br/>{_br(failure_inputs, 1)}"]',
        '  feed["ConnectionManager._feed<br/>one input at a time: one that arises during a '
        'step is queued<br/>journal line per input, with its effects"]',
        f'  machine["ConnectionMachine.handle: transitions runs table.TABLE<br/>'
        f'{len(TABLE)} rows: (state, input, guard) to next state, actions"]',
        f'  notes["note, before the guard<br/>{actions(Phase.NOTE)}"]',
        f'  before_move["before the move<br/>{actions(Phase.BEFORE)}"]',
        f'  state_actions["exit and entry: table.EXIT, table.ENTRY<br/>'
        f'{actions(Phase.STATE)}"]',
        f'  after_move["after the move<br/>{actions(Phase.AFTER)}"]',
        f'  effects["outputs.Step: the transition and the effects, as data<br/>'
        f'commands of outputs.Effects: {_br(effects)}"]',
        '  driver["driver.Driver.perform, after the step<br/>owns every task and timer"]',
        '  records["transcript; after the effects: stateChangeEvent, wait_for()"]',
        f'  bot -- "{produced("bot")}" --> feed',
        '  ib -- "errorEvent" --> code_table',
        '  code_table -- "an input, or log only" --> feed',
        f'  ib -- "disconnectedEvent: {produced("ib")}" --> feed',
        f'  attempt -- "{produced("attempt")}" --> feed',
        '  attempt -- "raised" --> failure_table',
        '  failure_table --> feed',
        f'  timers -- "{produced("timers")}" --> feed',
        f'  controller -- "{produced("controller")}" --> feed',
        f'  probe -- "{produced("probe")}" --> feed',
        "  feed --> machine",
        "  machine --> notes",
        "  machine --> before_move",
        "  machine --> state_actions",
        "  machine --> after_move",
        "  state_actions --> effects",
        "  after_move --> effects",
        "  effects --> driver",
        "  effects --> records",
        "  driver --> attempt",
        "  driver --> timers",
        "  driver --> controller",
        "  driver --> probe",
        '  driver -- "disconnect, requests" --> ib',
    ]
    return "\n".join(lines) + "\n"


ARCHITECTURE_DOC = "architecture.md"


def architecture_with_drawing(page: str) -> str:
    """Return ``page`` with the data-flow drawing between its generated markers.

    Raises:
        UsageError: if the page lacks the markers.
    """
    return _with_block(page, ARCHITECTURE_BEGIN, architecture_mermaid(), ARCHITECTURE_DOC)


SCENARIOS_DOC = "scenarios.md"


def docs_texts() -> dict[str, str]:
    """Return every generated page of ``docs/``, by file name."""
    from ibkr_connection.simulator.scenario import reference_markdown

    return {SCENARIOS_DOC: reference_markdown()}


def write_all(directory: Path, *, with_svg: bool = True,
              docs: Path | None = None) -> list[Path]:
    """Write every diagram and table into ``directory``; return the paths written.

    Args:
        directory: the diagrams folder; the README next to it (in its
            parent) gets the Mermaid diagram if it has the markers.
        with_svg: also render the SVG (needs Graphviz).
        docs: the docs folder for the generated pages; None writes none.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    generated = texts()
    for name, text in generated.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    if with_svg:
        path = directory / "connection.svg"
        path.write_text(svg(generated["connection.dot"]))
        written.append(path)
    readme = directory.parent / "README.md"
    if readme.exists() and README_BEGIN in readme.read_text():
        readme.write_text(readme_with_diagram(readme.read_text()))
        written.append(readme)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        for name, text in docs_texts().items():
            path = docs / name
            path.write_text(text)
            written.append(path)
        page = docs / ARCHITECTURE_DOC
        if page.exists() and ARCHITECTURE_BEGIN in page.read_text():
            page.write_text(architecture_with_drawing(page.read_text()))
            written.append(page)
    return written


def stale_paths(directory: Path, docs: Path | None = None) -> list[Path]:
    """Return the generated files that differ from the code, as paths.

    Args:
        directory: the diagrams folder (and the README in its parent).
        docs: the docs folder to check too; None checks no page there.
    """
    stale = []
    generated = texts()
    for name, text in generated.items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(path)
    svg_path = directory / "connection.svg"
    if not svg_path.exists() or svg_stamp(svg_path.read_text()) != source_hash(
        generated["connection.dot"]
    ):
        stale.append(svg_path)
    readme = directory.parent / "README.md"
    if readme.exists() and README_BEGIN in readme.read_text():
        text = readme.read_text()
        if readme_with_diagram(text) != text:
            stale.append(readme)
    if docs is not None:
        for name, text in docs_texts().items():
            path = docs / name
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        page = docs / ARCHITECTURE_DOC
        text = page.read_text() if page.exists() else ""
        if ARCHITECTURE_BEGIN in text and architecture_with_drawing(text) != text:
            stale.append(page)
    return stale


def drift(directory: Path, docs: Path | None = None) -> list[str]:
    """Return the names of the generated files that differ from the code.

    Args:
        directory: the diagrams folder (and the README in its parent).
        docs: the docs folder to check too; None checks no page there.
    """
    return [path.name for path in stale_paths(directory, docs)]
