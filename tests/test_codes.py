"""The code and failure tables: each IB code or attempt failure becomes the right input."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ibkr_connection import codes, errors
from ibkr_connection.errors import AccountError
from ibkr_connection.inputs import InputKind

K = InputKind


@pytest.mark.parametrize(
    ("code", "message", "kind", "farm", "port"),
    [
        (1100, "Connectivity between IB and Trader Workstation has been lost.",
         K.CONNECTIVITY_LOST, None, None),
        (1101, "Connectivity between IB and TWS has been restored- data lost.",
         K.RESTORED_DATA_LOST, None, None),
        (1102, "Connectivity between IB and TWS has been restored- data maintained.",
         K.RESTORED_DATA_KEPT, None, None),
        (2103, "Market data farm connection is broken:usfarm", K.FARM_BROKEN, "usfarm", None),
        (2104, "Market data farm connection is OK:usfarm", K.FARM_OK, "usfarm", None),
        (2105, "HMDS data farm connection is broken:ushmds", K.FARM_BROKEN, "ushmds", None),
        (2106, "HMDS data farm connection is OK:ushmds", K.FARM_OK, "ushmds", None),
        (2157, "Sec-def data farm connection is broken:secdefil", K.FARM_BROKEN, "secdefil", None),
        (2158, "Sec-def data farm connection is OK:secdefil", K.FARM_OK, "secdefil", None),
        (2110, "Connectivity between Trader Workstation and server is broken. "
               "It will be restored automatically.", K.SERVER_LINK_BROKEN, None, None),
        (1300, "TWS socket port has been reset and this connection is being dropped. "
               "Please reconnect on the new port - 4003", K.PORT_RESET, None, 4003),
        (326, "Unable to connect as the client id is already in use. "
              "Retry with a unique client id.", K.CLIENT_ID_IN_USE, None, None),
        (502, "Couldn't connect to TWS.", K.NOT_CONNECTED, None, None),
        (504, "Not connected", K.NOT_CONNECTED, None, None),
    ],
)
def test_classify(code: int, message: str, kind: InputKind, farm: str | None,
                  port: int | None) -> None:
    """Each listed code becomes its input, carrying the farm or port it names."""
    inp = codes.classify(code, message)
    assert inp is not None
    assert (inp.kind, inp.code, inp.farm, inp.port, inp.message) == (
        kind, code, farm, port, message)


@pytest.mark.parametrize("code", [2107, 2108, 2119, 10182, 200, 399, 9999])
def test_log_only_and_unknown_codes_change_nothing(code: int) -> None:
    """Log-only and unknown codes produce no input."""
    assert codes.classify(code, "whatever") is None


@pytest.mark.parametrize(
    ("code", "level"),
    [(2104, logging.INFO), (2106, logging.INFO), (2158, logging.INFO),
     (2103, logging.WARNING), (1100, logging.WARNING), (326, logging.ERROR)],
)
def test_farm_ok_notices_are_info(code: int, level: int) -> None:
    """Farm OK notices are routine (INFO), not warnings; broken farms warn."""
    info = codes.lookup(code)
    assert info is not None and info.level == level


@pytest.mark.parametrize(
    ("message", "port"),
    [("reconnect on the new port - 7497", 7497), ("no port here", None),
     ("port - 99999", None)],
)
def test_new_port_parsing(message: str, port: int | None) -> None:
    """The new port is the last number of a 1300's text, if it is a valid port."""
    assert codes.new_port(message) == port


def test_farm_without_name() -> None:
    """A farm message without a colon names the farm 'unknown' rather than failing."""
    assert codes.farm_name("Market data farm connection is broken") == "unknown"


# -- attempt failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "costly", "message"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), K.ATTEMPT_FAILED, False,
         "connection refused: ConnectionRefusedError(111, 'Connect call failed')"),
        (asyncio.TimeoutError(), K.ATTEMPT_FAILED, True, "timed out: TimeoutError()"),
        (TimeoutError("slow"), K.ATTEMPT_FAILED, True, "timed out: TimeoutError('slow')"),
        (errors.SyncIncompleteError("positions request timed out"), K.ATTEMPT_FAILED, True,
         "startup sync incomplete: SyncIncompleteError('positions request timed out')"),
        (ConnectionResetError(104, "reset"), K.ATTEMPT_FAILED, True,
         "socket broke during the handshake or sync: ConnectionResetError(104, 'reset')"),
        (OSError(101, "Network is unreachable"), K.ATTEMPT_FAILED, False,
         "socket error: OSError(101, 'Network is unreachable')"),
        (ValueError("bug"), K.ATTEMPT_FAILED, True, "unexpected error: ValueError('bug')"),
        (AccountError("account DU***001 is not managed by this login"), K.FATAL_ERROR, False,
         "account DU***001 is not managed by this login"),
    ],
)
def test_classify_failure(exc: Exception, kind: InputKind, costly: bool, message: str) -> None:
    """Each exception an attempt raises becomes its input: retryable or fatal, costly or cheap."""
    _, inp = codes.classify_failure(exc)
    assert (inp.kind, inp.costly, inp.message) == (kind, costly, message)


def test_only_a_bug_logs_a_traceback() -> None:
    """Only the catch-all row (an exception nobody expected) logs its traceback."""
    assert [f.meaning for f in codes.FAILURES if f.traceback] == ["unexpected error"]


def test_codes_page_lists_the_failure_table() -> None:
    """diagrams/codes.md carries both tables."""
    page = codes.markdown_table()
    assert "| `ConnectionRefusedError` | connection refused | attempt_failed | no | no |" in page
    assert "| `AccountError` |" in page and "| fatal_error |" in page
