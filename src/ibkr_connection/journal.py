"""The manager's journal of inputs, and its replay for incident review.

A journal is a JSON Lines file: one header line per session (a manager
opening the journal), then one line per input the machine handled, with the
state it led to. ``ibkr-connection replay`` re-feeds the inputs into a fresh
machine per session and checks that it still makes the same decisions.

Lines (the full format is in ``docs/journal.md``)::

    {"type": "header", "at": 5120.25, "wall": "2026-01-06T04:49:58.120Z", "port": 4002,
     "client_ids": [7], "seed": 0, "backoff": {...}, "restore_timeout": 120.0, ...}
    {"type": "input", "at": 5120.3, "wall": "2026-01-06T04:49:58.170Z",
     "input": "connect", "message": "start() called", "state": "connecting"}

``at`` is the manager's monotonic clock, ``wall`` the UTC time of day
(ISO 8601, milliseconds), to match lines against TWS's own logs. Journals
written before ``wall`` existed replay the same way.

A bot that crashes while writing leaves its last line cut. A replay reports
such a line and checks the complete ones; the next manager to open the file
starts its header on a new line, so the cut stays on a line of its own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from ibkr_connection.clock import Clock, ManualClock
from ibkr_connection.config import ConnectionConfig, mask_account
from ibkr_connection.errors import JournalError
from ibkr_connection.inputs import Input
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.outputs import JournalEntry
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.table import ConnectionState

logger = logging.getLogger(__name__)


def wall_text(when: datetime) -> str:
    """Return ``when`` as the journal writes it: ISO 8601, UTC, milliseconds, ``Z``."""
    text = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_wall(text: str) -> datetime:
    """Parse a ``wall`` value written by :func:`wall_text` (Python 3.10 lacks ``Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ends_mid_line(path: Path) -> bool:
    """True if ``path`` exists and its last byte is not a newline."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return False
            fh.seek(end - 1)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


class JournalWriter:
    """Writes a manager's journal: a header at open, then its inputs as they come.

    Args:
        target: a path (opened for appending, closed by :meth:`close`) or an
            open text file (left open).
        config: the manager's settings, recorded in the header so that a
            replay rebuilds the same machine.
        clock: the manager's clock: ``at`` is its monotonic reading, ``wall``
            its time of day.
        controller_configured: the manager has a controller (IBC, a command)
            that can restart the gateway; the machine's ``restarting`` moves
            depend on it.
    """

    def __init__(self, target: str | Path | IO[str], config: ConnectionConfig,
                 clock: Clock, *, controller_configured: bool = False) -> None:
        self._clock = clock
        self._owned = isinstance(target, (str, Path))
        self._file: IO[str] | None
        if isinstance(target, (str, Path)):
            path = Path(target)
            cut = _ends_mid_line(path)
            self._file = path.open("a", encoding="utf-8")
            if cut:
                # The last writer died mid-line: end that line, so that the
                # cut stays on a line of its own and this header on the next.
                logger.warning("journal %s ended mid-line (a writer stopped mid-write); "
                               "starting a new line", path)
                self._file.write("\n")
        else:
            self._file = target
        policy = config.policy
        backoff = policy.backoff
        #: Account ids are written masked, as the logs show them (a replay
        #: checks masked against masked: the same decisions).
        self._mask = mask_account if config.mask_accounts else None
        header = {
            "type": "header",
            "at": round(clock.monotonic(), 6),
            "wall": wall_text(clock.wall()),
            "port": config.port,
            "client_ids": list(config.client_ids),
            "seed": policy.seed,
            "backoff": {
                "initial_delay": backoff.initial_delay, "factor": backoff.factor,
                "max_delay": backoff.max_delay, "costly_delay": backoff.costly_delay,
                "max_costly_delay": backoff.max_costly_delay, "jitter": backoff.jitter,
                "max_attempts": backoff.max_attempts,
                "long_outage_after": backoff.long_outage_after,
                "long_outage_delay": backoff.long_outage_delay,
            },
            "restore_timeout": policy.restore_timeout,
            "maintenance_restore_timeout": policy.maintenance_restore_timeout,
            "same_client_id_retries": policy.same_client_id_retries,
            "controller_configured": controller_configured,
            "restart_after": policy.restart_after,
            "restart_wait": policy.restart_wait,
            "restart_cooldown": policy.restart_cooldown,
            "farm_reconnect_after": policy.farm_reconnect_after,
            "account": self._masked(config.account),
            "account_fallback": config.account_fallback,
            "mask_accounts": config.mask_accounts,
        }
        self._file.write(json.dumps(header) + "\n")
        self._file.flush()

    def write(self, entries: Sequence[JournalEntry]) -> None:
        """Append one line per handled input, then flush (a crash loses at most a line)."""
        if self._file is None or not entries:
            return
        # The entries were recorded a moment ago on the monotonic clock; their
        # time of day is now's, moved back by as much.
        now, wall = self._clock.monotonic(), self._clock.wall()
        for entry in entries:
            line: dict[str, object] = {
                "type": "input", "at": round(entry.at, 6),
                "wall": wall_text(wall - timedelta(seconds=now - entry.at)),
                **entry.input.to_json(), "state": entry.state.value}
            accounts = entry.input.accounts
            if accounts is not None:
                line["accounts"] = [self._masked(a) for a in accounts]
            if entry.effects is not None:
                line["effects"] = [
                    [effect.name, *map(self._masked, effect.args)]
                    if effect.name == "select_account" else effect.to_json()
                    for effect in entry.effects]
            self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def _masked(self, account: Any) -> Any:
        return self._mask(account) if self._mask is not None and account else account

    def close(self) -> None:
        """Close the file if this writer opened it (then writes are dropped). Idempotent."""
        if self._owned and self._file is not None:
            self._file.close()
            self._file = None


# -- replay ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayedInput:
    """One input of a journal, as recorded and as replayed.

    Attributes:
        line: its line number in the journal (from 1).
        session: the session it belongs to (from 1; a header starts one).
        input: the input's kind.
        recorded: the state the journal says it led to.
        replayed: the state a fresh machine computes now.
        recorded_effects: the effects the journal says it asked for, as
            ``[name, *args]`` lists; None for a line written before effects
            were journaled (then only the states are compared).
        replayed_effects: the effects a fresh machine asks for now.
    """

    line: int
    session: int
    input: str
    recorded: str
    replayed: str
    recorded_effects: list[list[object]] | None = None
    replayed_effects: list[list[object]] | None = None

    @property
    def matches(self) -> bool:
        """True when the machine still decides as it did: state, and effects if journaled."""
        if self.recorded != self.replayed:
            return False
        return self.recorded_effects is None or self.recorded_effects == self.replayed_effects

    @property
    def difference(self) -> str:
        """How the replay differs from the journal, in words (empty when it matches)."""
        if self.recorded != self.replayed:
            return f"journal says {self.recorded}, the machine now says {self.replayed}"
        if not self.matches:
            return (f"journal says effects {self.recorded_effects}, the machine now asks "
                    f"for {self.replayed_effects}")
        return ""


@dataclass(frozen=True)
class Replay:
    """The result of replaying a journal.

    Attributes:
        inputs: every complete input line, in order.
        sessions: how many sessions (header lines) the journal holds.
        cut_lines: line numbers of lines cut mid-write (a session's last line,
            left incomplete when its bot stopped); they are not replayed.
    """

    inputs: list[ReplayedInput]
    sessions: int
    cut_lines: list[int]

    @property
    def mismatches(self) -> list[ReplayedInput]:
        """The inputs whose replayed state differs from the recorded one."""
        return [step for step in self.inputs if not step.matches]


#: Header fields that older journals lack; a missing one keeps the default.
_RESTART_FIELDS = ("restart_after", "restart_wait", "restart_cooldown", "farm_reconnect_after")


def _machine(header: dict[str, Any], number: int) -> tuple[ConnectionMachine, ManualClock]:
    try:
        restart = {name: header[name] for name in _RESTART_FIELDS if name in header}
        # A header without the long-outage fields was written before they
        # existed: its manager kept the fast cap for ever.
        backoff = {"long_outage_after": None, **header["backoff"]}
        policy = RecoveryPolicy(
            backoff=BackoffPolicy(**backoff), seed=header["seed"],
            restore_timeout=header["restore_timeout"],
            maintenance_restore_timeout=header["maintenance_restore_timeout"],
            same_client_id_retries=header["same_client_id_retries"], **restart,
        )
        # The header's readings, when it has them, put the replay's clock at
        # the same time of day as the session (the nightly reset window).
        start = float(header.get("at", 0.0))
        wall = parse_wall(header["wall"]) if "wall" in header else None
        clock = ManualClock(start=start, wall_start=wall)
        machine = ConnectionMachine(
            clock, port=header["port"], client_ids=header["client_ids"],
            policy=policy,
            controller_configured=bool(header.get("controller_configured", False)),
            account=str(header.get("account", "")),
            account_fallback=str(header.get("account_fallback", "error")),
            mask_accounts=bool(header.get("mask_accounts", True)))
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError(number, f"bad header: {exc!r}") from exc
    return machine, clock


def _parse(text: str, number: int) -> dict[str, Any] | None:
    """Return the line's object, or None if it is not JSON at all."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        raise JournalError(number, f"not a journal record: {text.strip()[:80]!r}")
    return record


def replay(lines: Iterable[str]) -> Replay:
    """Re-feed a journal into a fresh machine per session.

    Args:
        lines: the journal's lines, with or without their line ends (a file
            object will do).

    Returns:
        What each input led to, as recorded and as replayed, and the cut lines.

    Raises:
        JournalError: a line that is neither a journal record nor a cut last
            line of a session, an input before any header, a malformed record,
            or no header at all; the error names the line.
    """
    numbered = [(number, text) for number, text in enumerate(lines, start=1) if text.strip()]
    records: list[tuple[int, dict[str, Any] | None]] = [
        (number, _parse(text, number)) for number, text in numbered]
    inputs: list[ReplayedInput] = []
    cut: list[int] = []
    sessions = 0
    machine: ConnectionMachine | None = None
    clock = ManualClock()
    for index, (number, record) in enumerate(records):
        if record is None:
            text = numbered[index][1]
            last = index == len(records) - 1
            following = None if last else records[index + 1][1]
            # A crash cuts the line being written: the file's last line, or,
            # once the bot has started again and appended, the line before a
            # header. A cut line has no line end and began as a record.
            ends_session = (last and not text.endswith("\n")) or (
                following is not None and following.get("type") == "header")
            if text.lstrip().startswith("{") and ends_session:
                cut.append(number)
                continue
            raise JournalError(number, f"not JSON: {text.strip()[:80]!r}")
        kind = record.get("type")
        if kind == "header":
            sessions += 1
            machine, clock = _machine(record, number)
            continue
        if kind != "input":
            raise JournalError(number, f"unknown record type {kind!r}")
        if machine is None:
            raise JournalError(number, "an input before any header line")
        try:
            at = float(record["at"])
            inp = Input.from_json(record)
            recorded = ConnectionState(record["state"]).value
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(number, f"bad input record: {exc!r}") from exc
        if at > clock.monotonic():
            clock.advance(at - clock.monotonic())
        recorded_effects = record.get("effects")
        if recorded_effects is not None and not isinstance(recorded_effects, list):
            raise JournalError(number, f"bad input record: effects {recorded_effects!r}")
        step = machine.handle(inp)
        machine.journal.clear()
        # JSON's view of the effects: tuples of arguments become lists.
        replayed_effects = json.loads(json.dumps([e.to_json() for e in step.effects]))
        inputs.append(ReplayedInput(number, sessions, inp.kind.value, recorded,
                                    step.state.value, recorded_effects, replayed_effects))
    if sessions == 0:
        raise JournalError(None, "not a journal: no header line")
    return Replay(inputs, sessions, cut)


def replay_file(path: str | Path) -> Replay:
    """Replay the journal at ``path`` (see :func:`replay`).

    Raises:
        OSError: the file cannot be read.
        JournalError: the file is not a journal (see :func:`replay`).
    """
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        return replay(fh)


def replay_journal(lines: Iterable[str]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Re-feed a journal into a fresh machine per session (the older interface).

    Args:
        lines: the journal's lines (JSON objects).

    Returns:
        (recorded, replayed): the state after each input, as recorded and as
        the fresh machine computed it; equal lists mean the replay matches.

    Raises:
        JournalError: see :func:`replay` (it is a ``ValueError``).
    """
    result = replay(lines)
    recorded: list[dict[str, object]] = [
        {"input": step.input, "state": step.recorded} for step in result.inputs]
    replayed: list[dict[str, object]] = [
        {"input": step.input, "state": step.replayed} for step in result.inputs]
    return recorded, replayed


__all__ = [
    "JournalWriter",
    "Replay",
    "ReplayedInput",
    "parse_wall",
    "replay",
    "replay_file",
    "replay_journal",
    "wall_text",
]
