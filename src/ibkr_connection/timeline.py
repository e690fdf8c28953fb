"""A timeline picture (SVG text) of connection states over time, with faults marked.

Pure: bands and marks in, SVG text out; no clock, no I/O, no dependency. The
month benchmark draws a lane per contender; :func:`lanes_from_transcript`
turns a manager's transcript (or a replayed journal's) into a lane.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

#: Band colours by state (the manager's states, and the plain labels of the others).
COLOURS: dict[str, str] = {
    "connected": "#2e9e44",
    "degraded": "#9bd36a",
    "connecting": "#f2c14e",
    "backoff": "#f28c28",
    "retrying": "#f28c28",
    "lost": "#d9534f",
    "restarting": "#8e44ad",
    "failed": "#111111",
    "disconnected": "#b0b0b0",
    "hung": "#5b2c06",
}

#: Fault marks by kind: (colour, row under the lanes).
MARK_STYLES: dict[str, tuple[str, int]] = {
    "nightly_reset": ("#555555", 0),
    "daily_restart": ("#1f77b4", 1),
    "weekly_login": ("#000000", 1),
    "farm_flap": ("#9aa0a6", 2),
    "link_loss": ("#d9534f", 3),
    "drop": ("#f28c28", 3),
    "hang": ("#5b2c06", 4),
    "wedge": ("#8e44ad", 4),
    "port_reset": ("#e377c2", 4),
}


@dataclass(frozen=True)
class Band:
    """A stretch of time in one state: ``start`` and ``end`` in seconds."""

    start: float
    end: float
    label: str


@dataclass(frozen=True)
class Lane:
    """One row of the picture: a name and its bands (later bands paint over earlier ones)."""

    name: str
    bands: Sequence[Band]


@dataclass(frozen=True)
class Mark:
    """A fault at ``at`` seconds, drawn as a tick under the lanes."""

    at: float
    kind: str
    detail: str = ""


def lane_from_transcript(name: str, transcript: Iterable[object], end: float,
                         start: float | None = None) -> Lane:
    """A lane from ``Transition`` records (``at``, ``dest``), from ``start`` to ``end``."""
    rows = [(float(getattr(t, "at")), str(getattr(getattr(t, "dest"), "value",  # noqa: B009
                                                   getattr(t, "dest"))))  # noqa: B009
            for t in transcript]
    if not rows:
        return Lane(name, [])
    origin = rows[0][0] if start is None else start
    bands = [Band(a - origin, b - origin, label)
             for (a, label), (b, _) in zip(rows, [*rows[1:], (end, "")], strict=True)]
    return Lane(name, bands)


#: Journal inputs drawn as marks under the lane, by the mark kind they show as.
_JOURNAL_MARKS = {
    "connectivity_lost": "link_loss", "socket_closed": "drop", "heartbeat_missed": "hang",
    "port_reset": "port_reset", "restart_sent": "daily_restart", "farm_broken": "farm_flap",
}


def timeline_from_journal(lines: Iterable[str], name: str = "journal") -> tuple[Lane, list[Mark],
                                                                              float]:
    """A lane and marks from a manager's journal (JSON Lines): the state after each input.

    Sessions follow one another on the journal's own clock (``at``); the lane
    starts at the first input. Lines that are not input records are skipped.

    Returns:
        (lane, marks, end), times in seconds from the first input.
    """
    import json

    rows: list[tuple[float, str, str]] = []
    for text in lines:
        try:
            record = json.loads(text)
        except ValueError:
            continue  # a line cut mid-write
        if isinstance(record, dict) and record.get("type") == "input":
            rows.append((float(record["at"]), str(record["state"]), str(record["input"])))
    if not rows:
        return Lane(name, []), [], 0.0
    origin = rows[0][0]
    end = max(at for at, _, _ in rows) - origin
    end = end if end > 0 else 1.0
    bands: list[Band] = []
    for (at, state, _), (nxt, _, _) in zip(rows, [*rows[1:], (origin + end, "", "")],
                                          strict=True):
        if bands and bands[-1].label == state:
            bands[-1] = Band(bands[-1].start, nxt - origin, state)
        else:
            bands.append(Band(at - origin, nxt - origin, state))
    marks = [Mark(at - origin, _JOURNAL_MARKS[kind], kind) for at, _, kind in rows
             if kind in _JOURNAL_MARKS]
    return Lane(name, bands), marks, end


def render_svg(lanes: Sequence[Lane], marks: Sequence[Mark], *, end: float,
               windows: Sequence[tuple[float, float]] = (), title: str = "",
               width: int = 1400) -> str:
    """Draw the lanes over ``[0, end]`` seconds with day gridlines and the faults underneath.

    Args:
        lanes: a row each.
        marks: faults, a tick each under the lanes.
        end: the last second shown.
        windows: maintenance windows shaded behind every lane.
        title: a line above the picture.
        width: the picture's width in pixels.

    Returns:
        The SVG document as text.
    """
    left, right, top, lane_h, gap = 110, 20, 40, 26, 8
    rows_h = 5 * 9
    plot_w = width - left - right
    lanes_h = len(lanes) * (lane_h + gap)
    legend_y = top + lanes_h + rows_h + 40
    height = legend_y + 30
    scale = plot_w / end if end > 0 else 0.0

    def x(t: float) -> float:
        return left + max(0.0, min(end, t)) * scale

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>']
    for a, b in windows:
        out.append(f'<rect x="{x(a):.2f}" y="{top - 4}" width="{max(0.5, x(b) - x(a)):.2f}" '
                   f'height="{lanes_h + rows_h + 8}" fill="#e8e8f4"/>')
    day = 86400.0
    n = 0
    while n * day <= end:
        out.append(f'<line x1="{x(n * day):.2f}" y1="{top - 6}" x2="{x(n * day):.2f}" '
                   f'y2="{top + lanes_h + rows_h}" stroke="#cccccc" stroke-width="0.5"/>')
        if n % max(1, int(end / day / 15) or 1) == 0:
            out.append(f'<text x="{x(n * day) + 2:.2f}" y="{top - 8}" fill="#666">d{n}</text>')
        n += 1
    for i, lane in enumerate(lanes):
        y = top + i * (lane_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + lane_h / 2 + 4:.1f}" '
                   f'text-anchor="end">{escape(lane.name)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{plot_w}" height="{lane_h}" '
                   f'fill="{COLOURS["disconnected"]}"/>')
        for band in lane.bands:
            if band.end <= band.start:
                continue
            colour = COLOURS.get(band.label, "#777777")
            w = max(0.3, x(band.end) - x(band.start))
            out.append(f'<rect x="{x(band.start):.2f}" y="{y}" width="{w:.2f}" '
                       f'height="{lane_h}" fill="{colour}"><title>{escape(band.label)} '
                       f'{band.start:.0f}-{band.end:.0f}s</title></rect>')
    base = top + lanes_h + 4
    for mark in marks:
        colour, row = MARK_STYLES.get(mark.kind, ("#777777", 4))
        y = base + row * 9
        out.append(f'<rect x="{x(mark.at) - 0.6:.2f}" y="{y}" width="1.8" height="7" '
                   f'fill="{colour}"><title>{escape(mark.kind)} {escape(mark.detail)} '
                   f'at {mark.at:.0f}s</title></rect>')
    for row, names in enumerate(("nightly reset", "daily restart / weekly login", "farm flap",
                                 "1100 / drop", "hang / wedge / 1300")):
        out.append(f'<text x="{left - 8}" y="{base + row * 9 + 7}" text-anchor="end" '
                   f'font-size="8" fill="#666">{names}</text>')
    lx = left
    for label, colour in COLOURS.items():
        out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 16}" y="{legend_y + 10}">{label}</text>')
        lx += 30 + 7 * len(label)
    out.append(f'<rect x="{lx}" y="{legend_y}" width="12" height="12" fill="#e8e8f4"/>')
    out.append(f'<text x="{lx + 16}" y="{legend_y + 10}">reset window</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


__all__ = ["COLOURS", "MARK_STYLES", "Band", "Lane", "Mark", "lane_from_transcript",
           "render_svg", "timeline_from_journal"]
