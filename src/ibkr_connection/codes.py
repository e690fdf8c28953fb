"""What the outside world says, as tables: IB message codes and attempt failures.

TWS reports connection events as "error" messages with a code. :data:`CODES`
maps each code the connection machine cares about to an
:class:`~ibkr_connection.inputs.Input`, with the log level to use (whether
subscriptions must be re-issued is the transition table's: the rows of
``restored_data_lost`` and of a new session). A new code is a new row in
:data:`CODES`, never a new ``elif``. Codes not in the table are logged and
change nothing (see :func:`classify`).

A connection attempt that fails raises; :data:`FAILURES` maps the exception to
the input the driver feeds: retryable or fatal, and costly (it cost the
gateway a handshake, so the backoff waits longer) or cheap. A new kind of
failure is a new row in :data:`FAILURES` (see :func:`classify_failure`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from dataclasses import dataclass
from enum import Enum

from ibkr_connection.errors import AccountError, HandshakeTimeoutError, SyncIncompleteError
from ibkr_connection.inputs import Input, InputKind


class Payload(str, Enum):
    """What a code's message text carries that the machine needs."""

    NONE = "none"  #: nothing
    FARM = "farm"  #: the data farm's name, after the last colon
    PORT = "port"  #: the new API port, the last number of the text


@dataclass(frozen=True)
class CodeInfo:
    """One row of the code table.

    Attributes:
        code: IB's message code.
        meaning: what IB means by it, in our words.
        input: the machine input it becomes, or None for "log only".
        level: the logging level used when it arrives.
        payload: what to parse out of the message text.
    """

    code: int
    meaning: str
    input: InputKind | None
    level: int
    payload: Payload = Payload.NONE

    def to_input(self, message: str) -> Input | None:
        """Return the machine input for this code with IB's ``message``, or None (log only)."""
        if self.input is None:
            return None
        farm = farm_name(message) if self.payload is Payload.FARM else None
        port = new_port(message) if self.payload is Payload.PORT else None
        return Input(self.input, code=self.code, message=message, farm=farm, port=port)


_W, _I, _E = logging.WARNING, logging.INFO, logging.ERROR

#: The code table. Order is the order of the docs table in ``diagrams/codes.md``.
CODES: tuple[CodeInfo, ...] = (
    CodeInfo(326, "client id already in use by another API session",
             InputKind.CLIENT_ID_IN_USE, _E),
    CodeInfo(502, "could not connect to TWS (API not enabled, wrong port, or TWS down)",
             InputKind.NOT_CONNECTED, _E),
    CodeInfo(504, "not connected: a request was sent while the socket was down",
             InputKind.NOT_CONNECTED, _E),
    CodeInfo(1100, "connectivity between TWS and IB lost (API socket still up)",
             InputKind.CONNECTIVITY_LOST, _W),
    CodeInfo(1101, "connectivity restored, data lost: subscriptions must be re-issued",
             InputKind.RESTORED_DATA_LOST, _W),
    CodeInfo(1102, "connectivity restored, data maintained",
             InputKind.RESTORED_DATA_KEPT, _I),
    CodeInfo(1300, "API socket port was reset; this connection is dropped, reconnect on the "
                   "new port named in the message",
             InputKind.PORT_RESET, _W, payload=Payload.PORT),
    CodeInfo(2103, "market data farm connection broken",
             InputKind.FARM_BROKEN, _W, payload=Payload.FARM),
    CodeInfo(2104, "market data farm connection OK",
             InputKind.FARM_OK, _I, payload=Payload.FARM),
    CodeInfo(2105, "historical data farm (HMDS) connection broken",
             InputKind.FARM_BROKEN, _W, payload=Payload.FARM),
    CodeInfo(2106, "historical data farm (HMDS) connection OK",
             InputKind.FARM_OK, _I, payload=Payload.FARM),
    CodeInfo(2107, "historical data farm inactive, available on demand",
             None, _I),
    CodeInfo(2108, "market data farm inactive, available on demand",
             None, _I),
    CodeInfo(2110, "connectivity between TWS and its server broken; restored automatically",
             InputKind.SERVER_LINK_BROKEN, _W),
    CodeInfo(2119, "market data farm connecting",
             None, _I),
    CodeInfo(2157, "security definition farm connection broken",
             InputKind.FARM_BROKEN, _W, payload=Payload.FARM),
    CodeInfo(2158, "security definition farm connection OK",
             InputKind.FARM_OK, _I, payload=Payload.FARM),
    CodeInfo(10182, "live updates of a request failed because TWS was disconnected",
             None, _W),
)

_BY_CODE: dict[int, CodeInfo] = {info.code: info for info in CODES}
if len(_BY_CODE) != len(CODES):  # pragma: no cover - guards the table itself
    raise RuntimeError("duplicate code in ibkr_connection.codes.CODES")

_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def lookup(code: int) -> CodeInfo | None:
    """Return the table row of ``code``, or None if the code is not in the table."""
    return _BY_CODE.get(code)


def farm_name(message: str) -> str:
    """Extract the farm name from a farm status message.

    IB writes e.g. ``"Market data farm connection is broken:usfarm"``; the farm is
    what follows the last colon. A message without one yields ``"unknown"``.
    """
    _, sep, tail = message.rpartition(":")
    name = tail.strip()
    return name if sep and name else "unknown"


def new_port(message: str) -> int | None:
    """Extract the new port from a 1300 message, or None if it names none."""
    match = _LAST_NUMBER.search(message)
    if match is None:
        return None
    port = int(match.group(1))
    return port if 0 < port < 65536 else None


@dataclass(frozen=True)
class FailureInfo:
    """One row of the attempt failure table.

    Attributes:
        exceptions: the exception types of the row (the first row that
            matches an exception is taken).
        meaning: what went wrong, in our words; the input's message for a
            retryable failure is ``"<meaning>: <exception repr>"``, for a
            fatal one the exception's own text.
        input: ``attempt_failed`` (retry) or ``fatal_error`` (give up).
        costly: whether the attempt cost the gateway an API handshake (the
            backoff then follows its costly schedule).
        traceback: log the exception with its traceback: it is a bug, not
            the gateway.
    """

    exceptions: tuple[type[BaseException], ...]
    meaning: str
    input: InputKind
    costly: bool
    traceback: bool = False


_FAILED, _FATAL = InputKind.ATTEMPT_FAILED, InputKind.FATAL_ERROR

#: The attempt failure table, tried in order (a refused connect is a
#: ConnectionError is an OSError; TimeoutError is an OSError from Python 3.11).
FAILURES: tuple[FailureInfo, ...] = (
    FailureInfo((AccountError,), "the account check failed: retrying cannot fix it", _FATAL,
                False),
    FailureInfo((ConnectionRefusedError,), "connection refused", _FAILED, False),
    # Neutral on purpose: on an endpoint without a session yet the machine's
    # warning says "not a TWS API port?"; on a proven one it counts a wedge sign.
    FailureInfo((HandshakeTimeoutError,),
                "no handshake (the port accepted but is silent: wedged, or not a TWS API port?)",
                _FAILED, True),
    FailureInfo((asyncio.TimeoutError, TimeoutError), "timed out", _FAILED, True),
    FailureInfo((SyncIncompleteError,), "startup sync incomplete", _FAILED, True),
    FailureInfo((ConnectionError,), "socket broke during the handshake or sync", _FAILED, True),
    FailureInfo((OSError,), "socket error", _FAILED, False),
    FailureInfo((Exception,), "unexpected error", _FAILED, True, traceback=True),
)


def classify_failure(exc: Exception) -> tuple[FailureInfo, Input]:
    """Turn the exception a connection attempt raised into a machine input.

    Returns:
        The table row and the input to feed.
    """
    info = next(row for row in FAILURES if isinstance(exc, row.exceptions))
    if info.input is InputKind.FATAL_ERROR:
        return info, Input(info.input, message=str(exc))
    # Interned: a gateway down for hours fails the same way thousands of times,
    # and each failure's text stays in the transcript (up to 10,000 of them).
    message = sys.intern(f"{info.meaning}: {exc!r}")
    return info, Input(info.input, message=message, costly=info.costly)


def markdown_table() -> str:
    """Render the code and failure tables as Markdown, for ``diagrams/codes.md``."""
    lines = [
        "# IB message codes",
        "",
        "Generated from `ibkr_connection.codes.CODES` by `ibkr-connection diagram`; "
        "do not edit by hand.",
        "System codes (request id -1) not listed are logged at WARNING and change "
        "nothing; codes tied to a request are left to ib_insync's own log.",
        "",
        "| code | meaning | machine input | log level | payload |",
        "|---:|---|---|---|---|",
    ]
    for info in CODES:
        lines.append(
            f"| {info.code} | {info.meaning} | "
            f"{info.input.value if info.input else '(log only)'} | "
            f"{logging.getLevelName(info.level)} | {info.payload.value} |"
        )
    lines += [
        "",
        "## Attempt failures",
        "",
        "Generated from `ibkr_connection.codes.FAILURES`. A connection attempt that raises "
        "is classified by the first row whose exception matches; the driver feeds the input "
        "before it closes the socket. A costly failure cost the gateway an API handshake: "
        "the next delay follows the costly schedule (the row guarded by `costly` in the "
        "transition table).",
        "",
        "| exception | meaning | machine input | costly | traceback logged |",
        "|---|---|---|---|---|",
    ]
    for failure in FAILURES:
        names = " / ".join(sorted({f"`{e.__name__}`" for e in failure.exceptions}))
        lines.append(
            f"| {names} | {failure.meaning} | {failure.input.value} | "
            f"{'yes' if failure.costly else 'no'} | {'yes' if failure.traceback else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def classify(code: int, message: str) -> Input | None:
    """Turn an IB message code into a machine input.

    Args:
        code: IB's code, as delivered by ``IB.errorEvent``.
        message: IB's message text.

    Returns:
        The input, or None when the code is log-only or not in the table.
    """
    info = _BY_CODE.get(code)
    return None if info is None else info.to_input(message)
