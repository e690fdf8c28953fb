"""Recordings of relayed sessions: the JSON Lines writer and its reader.

A recording is what ``ibkr-connection proxy --record FILE`` saw: a header
line, then one JSON object per line for each session's opening, handshake,
message (either way), injected fault and closing, in the order they
happened. The format is documented in ``docs/recording.md``; its version is
:data:`FORMAT_VERSION`, in the header's ``format`` field.

Lines are flushed as they are written (the messages of one socket read in
one write), before the proxy hands those messages on, so a proxy that dies
loses at most the line it was writing; :func:`load_recording` skips a cut
last line and names it. ``--mask-accounts`` replaces each account id announced in
``managedAccounts`` by ``MASKED1``, ``MASKED2`` ... wherever it appears in
later messages, the same id by the same mask in every session of the file.

:class:`RecordingError` (an :class:`~ibkr_connection.errors.IBKRConnectionError`)
names the file and the line a reader cannot use.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ibkr_connection.errors import IBKRConnectionError
from ibkr_connection.wire import framing

logger = logging.getLogger(__name__)

#: The value of the header's ``recording`` field.
RECORDING_KIND = "ibkr-connection"

#: The version of the line format this module writes and reads.
FORMAT_VERSION = 1

#: Line types, in the order a session produces them (``fault`` and ``raw`` anywhere).
LINE_TYPES = ("header", "open", "hello", "msg", "raw", "fault", "close")

DIRECTIONS = ("c2s", "s2c")

#: What masked account ids become: ``MASKED1``, ``MASKED2`` ...
MASK_PREFIX = "MASKED"


class RecordingError(IBKRConnectionError):
    """A recording cannot be read; the message names the file and the line."""


def _wall(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: One encoder for every line: json.dumps with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class AccountMask:
    """Replaces account ids by stable masks (``MASKED1`` ...), learnt as they appear."""

    def __init__(self) -> None:
        self.masks: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None

    def learn(self, accounts: Iterable[str]) -> None:
        """Add account ids to mask from now on (an id keeps its first mask)."""
        for account in accounts:
            if account and account not in self.masks:
                self.masks[account] = f"{MASK_PREFIX}{len(self.masks) + 1}"
        if self.masks:
            # Longest first, and never inside a longer word: "DU1" must not eat "DU12".
            names = sorted(self.masks, key=len, reverse=True)
            self._pattern = re.compile(
                r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, names)) + r")(?![A-Za-z0-9])")

    def text(self, value: str) -> str:
        """Return ``value`` with every known account id masked."""
        if self._pattern is None:
            return value
        return self._pattern.sub(lambda m: self.masks[m.group(0)], value)

    def data(self, value: bytes) -> bytes:
        """Return ``value`` (bytes) with every known account id masked."""
        if not self.masks:
            return value
        for account, mask in self.masks.items():
            value = value.replace(account.encode(), mask.encode())
        return value


class RecordingWriter:
    """Writes a recording, one flushed JSON line per event.

    Args:
        target: A path, or an open text file (kept open by the caller).
        upstream: ``host:port`` of the gateway relayed to, for the header.
        mask_accounts: Mask account ids (see the module docstring).
        clock: Monotonic clock; ``t`` is seconds since the writer was made.
        overwrite: Replace a file that exists at ``target``; when False, an
            existing file raises :class:`FileExistsError` and is left as it was.

    Attributes:
        lines: Lines written so far, header included.
        messages: Message lines written so far.
    """

    def __init__(
        self,
        target: str | Path | IO[str],
        *,
        upstream: str = "",
        mask_accounts: bool = False,
        clock: Callable[[], float] = time.monotonic,
        overwrite: bool = True,
    ) -> None:
        if isinstance(target, (str, Path)):
            # Line buffered: each line reaches the OS as it is written. Mode "x"
            # never truncates: a recording already there is not lost.
            mode = "w" if overwrite else "x"
            self._file: IO[str] = open(target, mode, encoding="utf-8", buffering=1)  # noqa: SIM115
            self._owned = True
            self.path = str(target)
        else:
            self._file = target
            self._owned = False
            self.path = getattr(target, "name", "<stream>")
        self._clock = clock
        self._t0 = clock()
        self.mask = AccountMask() if mask_accounts else None
        self.lines = 0
        self.messages = 0
        self._closed = False
        self._wall_ms = -1
        self._wall_text = ""
        self._write({"type": "header", "recording": RECORDING_KIND, "format": FORMAT_VERSION,
                     "created": _wall(), "upstream": upstream, "masked": mask_accounts})

    def _write(self, obj: dict[str, Any]) -> None:
        self._write_lines([_ENCODER.encode(obj)])

    def _write_lines(self, lines: list[str]) -> None:
        if self._closed or not lines:
            return
        # One write and one flush for the lines of one event (the messages of one
        # read): each line is whole on disk before the proxy goes on.
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        self.lines += len(lines)

    def _now(self) -> tuple[float, str]:
        t = round(self._clock() - self._t0, 6)
        now = time.time()
        millis = int(now * 1000)
        if millis != self._wall_ms:
            self._wall_ms, self._wall_text = millis, _wall(now)
        return t, self._wall_text

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        stamped = {"type": obj.pop("type"), **obj}
        stamped["t"], stamped["wall"] = self._now()
        return stamped

    def open_session(self, session: int, peer: str) -> None:
        """Record a client's connection to the proxy."""
        self._write(self._stamp({"type": "open", "session": session, "peer": peer}))

    def client_hello(self, session: int, raw: bytes, versions: tuple[int, int] | None,
                     options: str) -> None:
        """Record the client's handshake: ``API\\0`` and its version range."""
        line: dict[str, Any] = {"type": "hello", "session": session, "dir": "c2s",
                                "raw": _b64(raw)}
        if versions is not None:
            line["versions"] = list(versions)
            line["options"] = options
        self._write(self._stamp(line))

    def server_hello(self, session: int, raw: bytes, version: int | None) -> None:
        """Record the gateway's handshake answer: the negotiated version and its time."""
        line: dict[str, Any] = {"type": "hello", "session": session, "dir": "s2c",
                                "raw": _b64(raw)}
        if version is not None:
            line["version"] = version
        self._write(self._stamp(line))

    def frames(self, session: int, direction: str, data: bytes, version: int, *,
               injected: bool = False, discarded: bool = False) -> None:
        """Record whole frames (length prefixes included), one line per message.

        Args:
            session: The session's number.
            direction: ``c2s`` (bot to gateway) or ``s2c``.
            data: Whole frames, as relayed.
            version: The negotiated server version, to decode them.
            injected: The proxy made these frames (a scenario's fault).
            discarded: The frames were held and thrown away (``unstall`` with
                ``discard``): the client never got them.
        """
        t, wall = self._now()
        # Each line is spelled out rather than built as a dict: this runs per message.
        head = f'{{"type":"msg","session":{session},"dir":"{direction}",'
        tail = (',"injected":true' if injected else "") + (
            ',"discarded":true' if discarded else "") + f',"t":{t!r},"wall":"{wall}"}}'
        encode = _ENCODER.encode
        mask = self.mask
        lines = []
        for payload in framing.iter_payloads(data):
            message = framing.decode(payload, version)
            fields = message.fields
            if fields is not None:
                if mask is not None:
                    if message.msg_id == framing.MANAGED_ACCTS and direction == "s2c" \
                            and len(fields) > 2:
                        mask.learn(a.strip() for a in fields[2].split(","))
                    fields = [mask.text(f) for f in fields]
                lines.append(f'{head}"fields":{encode(fields)}{tail}')
            else:
                raw = payload if mask is None else mask.data(payload)
                lines.append(f'{head}"id":{message.msg_id},"raw":"{_b64(raw)}"{tail}')
        self._write_lines(lines)
        self.messages += len(lines)

    def raw(self, session: int, direction: str, data: bytes) -> None:
        """Record bytes relayed unframed (a stream that is not TWS frames)."""
        if self.mask is not None:
            data = self.mask.data(data)
        self._write(self._stamp({"type": "raw", "session": session, "dir": direction,
                                 "raw": _b64(data)}))

    def fault(self, action: str, params: dict[str, Any], sessions: int) -> None:
        """Record an injected fault and how many sessions it reached."""
        self._write(self._stamp({"type": "fault", "action": action, "params": params,
                                 "sessions": sessions}))

    def close_session(self, session: int, client_id: int | None, c2s_bytes: int,
                      s2c_bytes: int, reason: str) -> None:
        """Record the end of a session with its byte counts."""
        self._write(self._stamp({"type": "close", "session": session, "client_id": client_id,
                                 "c2s_bytes": c2s_bytes, "s2c_bytes": s2c_bytes,
                                 "reason": reason}))

    def close(self) -> None:
        """Close the file (if the writer opened it); later events are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._owned:
            self._file.close()


# ------------------------------------------------------------------------ reading
@dataclass
class RecordedMessage:
    """One recorded message of a session.

    Attributes:
        direction: ``c2s`` or ``s2c``.
        t: Seconds since the recording started.
        msg_id: The message id (-1 if the payload had none).
        fields: The text fields, the message id first; ``None`` for a raw payload.
        raw: The payload bytes when it was not text.
        injected: Made by the proxy's scenario.
        line: The line of the file it came from.
    """

    direction: str
    t: float
    msg_id: int
    fields: list[str] | None
    raw: bytes | None = None
    injected: bool = False
    line: int = 0

    def frame(self, version: int) -> bytes:
        """Return the message as a frame for ``version``."""
        if self.fields is not None:
            return framing.encode(self.fields, version)
        return framing.frame(self.raw or b"")


@dataclass
class RecordedSession:
    """Everything recorded of one relayed session.

    Attributes:
        session: The session's number in the recording.
        peer: The bot's address.
        version: The negotiated server version (0 if the handshake was not seen).
        client_versions: The version range the client offered.
        client_id: The client id of its ``startApi``, if it sent one.
        messages: Its messages, both ways, in recorded order (discarded ones left out).
        opened_at: ``t`` of its ``open`` line.
        closed_at: ``t`` of its ``close`` line (None if the recording has none).
        close_reason: The ``reason`` of its ``close`` line.
    """

    session: int
    peer: str = ""
    version: int = 0
    client_versions: tuple[int, int] | None = None
    client_id: int | None = None
    messages: list[RecordedMessage] = field(default_factory=list)
    opened_at: float = 0.0
    closed_at: float | None = None
    close_reason: str = ""

    @property
    def closed_by_gateway(self) -> bool:
        """True if the session ended from the gateway's side (or the proxy's), not the bot's."""
        return self.closed_at is not None and not self.close_reason.startswith("client closed")


@dataclass
class Recording:
    """A recording as read back.

    Attributes:
        source: The file it came from.
        header: The header line's object.
        sessions: The sessions in the order they opened.
        faults: The ``fault`` lines.
        cut_line: The number of a last line cut mid-write and skipped, if any.
    """

    source: str
    header: dict[str, Any]
    sessions: list[RecordedSession]
    faults: list[dict[str, Any]] = field(default_factory=list)
    cut_line: int | None = None

    @property
    def version(self) -> int:
        """The server version of the first session that negotiated one (0 if none did)."""
        return next((s.version for s in self.sessions if s.version), 0)

    @property
    def accounts(self) -> list[str]:
        """The accounts of the first recorded ``managedAccounts``, in order."""
        for session in self.sessions:
            for m in session.messages:
                if m.direction == "s2c" and m.msg_id == framing.MANAGED_ACCTS and m.fields \
                        and len(m.fields) > 2:
                    return [a.strip() for a in m.fields[2].split(",") if a.strip()]
        return []


def load_recording(path: str | Path) -> Recording:
    """Read and check a recording.

    Args:
        path: The file.

    Returns:
        The recording.

    Raises:
        RecordingError: The file cannot be read, is not a recording, is of a
            newer format, or has a line that is not a valid record (the
            message names the line). A last line cut mid-write is skipped
            and reported in :attr:`Recording.cut_line`.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{source}: cannot read: {exc}") from exc
    lines = text.split("\n")
    cut_line: int | None = None
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        # No newline at the end: the writer died in the middle of this line.
        last = lines[-1]
        try:
            json.loads(last)
        except ValueError:
            cut_line = len(lines)
            lines.pop()
    if not lines:
        raise RecordingError(f"{source}: empty file, not a recording")
    header = _json_line(source, 1, lines[0])
    if header.get("type") != "header" or header.get("recording") != RECORDING_KIND:
        raise RecordingError(f"{source} line 1: not a recording header (expected "
                             f'{{"type": "header", "recording": "{RECORDING_KIND}", ...}})')
    version = header.get("format")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordingError(f"{source} line 1: 'format' must be an integer")
    if version > FORMAT_VERSION:
        raise RecordingError(f"{source} line 1: format {version} is newer than this reader "
                             f"(format {FORMAT_VERSION}); upgrade ibkr-connection")
    recording = Recording(source, header, [], cut_line=cut_line)
    sessions: dict[int, RecordedSession] = {}
    for number, line in enumerate(lines[1:], start=2):
        _read_line(recording, sessions, source, number, _json_line(source, number, line))
    if cut_line is not None:
        logger.warning("%s line %d: cut mid-write (the proxy stopped while writing it); "
                       "skipped", source, cut_line)
    return recording


def _json_line(source: str, number: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordingError(f"{source} line {number}: not JSON ({exc.msg} at column "
                             f"{exc.colno})") from None
    if not isinstance(obj, dict):
        raise RecordingError(f"{source} line {number}: not a JSON object")
    return obj


def _need(source: str, number: int, obj: dict[str, Any], key: str, kind: type | tuple[type, ...],
          ) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordingError(f"{source} line {number}: {obj.get('type')} line needs "
                             f"'{key}' ({names}), got {value!r}")
    return value


def _read_line(recording: Recording, sessions: dict[int, RecordedSession], source: str,
               number: int, obj: dict[str, Any]) -> None:
    kind = obj.get("type")
    if kind not in LINE_TYPES or kind == "header":
        raise RecordingError(f"{source} line {number}: unknown line type {kind!r}; "
                             f"expected one of {', '.join(LINE_TYPES[1:])}")
    t = float(_need(source, number, obj, "t", (int, float)))
    if kind == "fault":
        _need(source, number, obj, "action", str)
        recording.faults.append(obj)
        return
    sid = _need(source, number, obj, "session", int)
    if kind == "open":
        session = RecordedSession(sid, peer=str(obj.get("peer", "")), opened_at=t)
        sessions[sid] = session
        recording.sessions.append(session)
        return
    if sid not in sessions:
        raise RecordingError(f"{source} line {number}: session {sid} has no 'open' line before it")
    session = sessions[sid]
    if kind == "close":
        client_id = obj.get("client_id")
        if session.client_id is None and isinstance(client_id, int):
            session.client_id = client_id
        session.closed_at = t
        session.close_reason = str(obj.get("reason", ""))
        return
    direction = _need(source, number, obj, "dir", str)
    if direction not in DIRECTIONS:
        raise RecordingError(f"{source} line {number}: 'dir' must be c2s or s2c, "
                             f"got {direction!r}")
    if kind == "hello":
        if direction == "s2c" and isinstance(obj.get("version"), int):
            session.version = obj["version"]
        versions = obj.get("versions")
        if direction == "c2s" and isinstance(versions, list) and len(versions) == 2 \
                and all(isinstance(v, int) for v in versions):
            session.client_versions = (versions[0], versions[1])
        return
    if kind == "raw":
        _decode_b64(source, number, _need(source, number, obj, "raw", str))
        return
    if obj.get("discarded"):
        return
    if "fields" in obj:
        fields = _need(source, number, obj, "fields", list)
        if not fields or not all(isinstance(f, str) for f in fields):
            raise RecordingError(f"{source} line {number}: 'fields' must be a non-empty list "
                                 "of strings")
        try:
            msg_id = int(fields[0])
        except ValueError:
            msg_id = -1
        message = RecordedMessage(direction, t, msg_id, list(fields),
                                  injected=bool(obj.get("injected")), line=number)
    else:
        raw = _decode_b64(source, number, _need(source, number, obj, "raw", str))
        msg_id = obj.get("id", -1)
        message = RecordedMessage(direction, t, msg_id if isinstance(msg_id, int) else -1, None,
                                  raw=raw, injected=bool(obj.get("injected")), line=number)
    if direction == "c2s" and message.msg_id == framing.START_API and message.fields \
            and len(message.fields) > 2 and session.client_id is None:
        with contextlib.suppress(ValueError):
            session.client_id = int(message.fields[2])
    session.messages.append(message)


def _decode_b64(source: str, number: int, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordingError(f"{source} line {number}: 'raw' is not base64 ({exc})") from None
