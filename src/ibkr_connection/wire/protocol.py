"""TWS API wire protocol: framing, field encoding and message identifiers.

The TWS socket protocol frames every message with a 4-byte big-endian length
prefix; a message is a sequence of NUL-terminated text fields whose first
field is the numeric message id. The connection starts with the client
sending ``API\\0`` followed by one framed ``v<min>..<max>`` version range.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

from ibkr_connection.wire.versions import ADVANCED_ORDER_REJECT, MAX_SERVER_VERSION

#: Highest server version the simulator speaks by default: it answers each
#: client with the highest version in the client's range up to this cap
#: (ib_insync 0.9.86 gets 176, ib_async 2.x 178); see :mod:`.versions`.
SERVER_VERSION = MAX_SERVER_VERSION

#: Largest frame the simulator accepts from a client (bytes).
MAX_FRAME = 1 << 20

#: IB's time format in execDetails, completedOrder and the handshake reply.
TIME_FORMAT = "%Y%m%d %H:%M:%S UTC"

API_PREFIX = b"API\0"

#: A frame's length prefix: 4 bytes, big-endian.
_LENGTH = struct.Struct(">I")

# ---------------------------------------------------------------- incoming ids
#: Client -> server message ids and readable names.
INCOMING: dict[int, str] = {
    1: "reqMktData",
    2: "cancelMktData",
    3: "placeOrder",
    4: "cancelOrder",
    5: "reqOpenOrders",
    6: "reqAccountUpdates",
    7: "reqExecutions",
    8: "reqIds",
    9: "reqContractDetails",
    10: "reqMktDepth",
    11: "cancelMktDepth",
    12: "reqNewsBulletins",
    13: "cancelNewsBulletins",
    14: "setServerLogLevel",
    15: "reqAutoOpenOrders",
    16: "reqAllOpenOrders",
    17: "reqManagedAccts",
    18: "requestFA",
    19: "replaceFA",
    20: "reqHistoricalData",
    21: "exerciseOptions",
    22: "reqScannerSubscription",
    23: "cancelScannerSubscription",
    24: "reqScannerParameters",
    25: "cancelHistoricalData",
    49: "reqCurrentTime",
    50: "reqRealTimeBars",
    51: "cancelRealTimeBars",
    52: "reqFundamentalData",
    53: "cancelFundamentalData",
    54: "calculateImpliedVolatility",
    55: "calculateOptionPrice",
    56: "cancelCalculateImpliedVolatility",
    57: "cancelCalculateOptionPrice",
    58: "reqGlobalCancel",
    59: "reqMarketDataType",
    61: "reqPositions",
    62: "reqAccountSummary",
    63: "cancelAccountSummary",
    64: "cancelPositions",
    65: "verifyRequest",
    66: "verifyMessage",
    67: "queryDisplayGroups",
    68: "subscribeToGroupEvents",
    69: "updateDisplayGroup",
    70: "unsubscribeFromGroupEvents",
    71: "startApi",
    72: "verifyAndAuthRequest",
    73: "verifyAndAuthMessage",
    74: "reqPositionsMulti",
    75: "cancelPositionsMulti",
    76: "reqAccountUpdatesMulti",
    77: "cancelAccountUpdatesMulti",
    78: "reqSecDefOptParams",
    79: "reqSoftDollarTiers",
    80: "reqFamilyCodes",
    81: "reqMatchingSymbols",
    82: "reqMktDepthExchanges",
    83: "reqSmartComponents",
    84: "reqNewsArticle",
    85: "reqNewsProviders",
    86: "reqHistoricalNews",
    87: "reqHeadTimeStamp",
    88: "reqHistogramData",
    89: "cancelHistogramData",
    90: "cancelHeadTimeStamp",
    91: "reqMarketRule",
    92: "reqPnL",
    93: "cancelPnL",
    94: "reqPnLSingle",
    95: "cancelPnLSingle",
    96: "reqHistoricalTicks",
    97: "reqTickByTickData",
    98: "cancelTickByTickData",
    99: "reqCompletedOrders",
    100: "reqWshMetaData",
    101: "cancelWshMetaData",
    102: "reqWshEventData",
    103: "cancelWshEventData",
    104: "reqUserInfo",
}

# ---------------------------------------------------------------- outgoing ids
TICK_PRICE = 1
TICK_SIZE = 2
ORDER_STATUS = 3
ERR_MSG = 4
OPEN_ORDER = 5
ACCT_VALUE = 6
PORTFOLIO_VALUE = 7
ACCT_UPDATE_TIME = 8
NEXT_VALID_ID = 9
CONTRACT_DATA = 10
EXECUTION_DATA = 11
MANAGED_ACCTS = 15
CURRENT_TIME = 49
CONTRACT_DATA_END = 52
OPEN_ORDER_END = 53
ACCT_DOWNLOAD_END = 54
EXECUTION_DATA_END = 55
TICK_SNAPSHOT_END = 57
MARKET_DATA_TYPE = 58
COMMISSION_REPORT = 59
POSITION_DATA = 61
POSITION_END = 62
ACCOUNT_SUMMARY = 63
ACCOUNT_SUMMARY_END = 64
POSITION_MULTI_END = 72
ACCOUNT_UPDATE_MULTI = 73
ACCOUNT_UPDATE_MULTI_END = 74
COMPLETED_ORDER = 101
COMPLETED_ORDERS_END = 102

# tick types
TICK_BID_SIZE = 0
TICK_BID = 1
TICK_ASK = 2
TICK_ASK_SIZE = 3
TICK_LAST = 4
TICK_LAST_SIZE = 5
TICK_VOLUME = 8
TICK_CLOSE = 9

# ------------------------------------------------------------- message texts
#: IB's wording for the system messages a connection manager has to handle.
DEFAULT_MESSAGES: dict[int, str] = {
    103: "Duplicate order id",
    200: "No security definition has been found for the request",
    202: "Order Canceled - reason:",
    # TWS's own wording starts so (e.g. "Error reading request. Unable to parse
    # field: 'Client Req Id' for input string: 'AAPL'" from TWS 10.37); the
    # simulator appends what it could not read.
    320: "Error reading request.",
    326: ("Unable to connect as the client id is already in use. Retry with a unique client id."),
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    1300: (
        "TWS socket port has been reset and this connection is being dropped. "
        "Please reconnect on the new port - {port}"
    ),
    2103: "Market data farm connection is broken:{farm}",
    2104: "Market data farm connection is OK:{farm}",
    2105: "HMDS data farm connection is broken:{farm}",
    2106: "HMDS data farm connection is OK:{farm}",
    2107: "HMDS data farm connection is inactive but should be available upon demand.{farm}",
    2108: "Market data farm connection is inactive but should be available upon demand.{farm}",
    2110: (
        "Connectivity between Trader Workstation and server is broken. "
        "It will be restored automatically."
    ),
    2157: "Sec-def data farm connection is broken:{farm}",
    2158: "Sec-def data farm connection is OK:{farm}",
    10147: "OrderId {order_id} that needs to be cancelled is not found.",
    10182: "Failed to request live updates (disconnected).",
}

#: Farm used in a default text when the caller gives none.
DEFAULT_FARMS: dict[int, str] = {
    2103: "usfarm",
    2104: "usfarm",
    2105: "ushmds",
    2106: "ushmds",
    2107: "ushmds",
    2108: "usfarm",
    2157: "secdefil",
    2158: "secdefil",
}


def default_message(code: int, *, farm: str | None = None, port: int | None = None) -> str:
    """Return IB's usual text for ``code``.

    Args:
        code: The IB message code.
        farm: Farm name substituted into farm messages (default per code).
        port: New port substituted into the 1300 message.

    Returns:
        The message text, or a generic text for codes without a known wording.
    """
    template = DEFAULT_MESSAGES.get(code)
    if template is None:
        return f"Simulated message {code}"
    return template.format(
        farm=farm if farm is not None else DEFAULT_FARMS.get(code, "usfarm"),
        port=port if port is not None else 4002,
        order_id="",
    )


def farm_codes(farm: str) -> tuple[int, int]:
    """Return the (broken, OK) message codes for a farm name.

    Names containing ``hmds`` are historical data farms (2105/2106), names
    starting with ``secdef`` are security definition farms (2157/2158), all
    others are market data farms (2103/2104).

    Args:
        farm: Farm name such as ``usfarm``, ``ushmds`` or ``secdefil``.

    Returns:
        The code pair ``(broken, ok)``.
    """
    name = farm.lower()
    if "hmds" in name:
        return 2105, 2106
    if name.startswith("secdef"):
        return 2157, 2158
    return 2103, 2104


Field = str | int | float | bool | None


def encode_field(value: Field) -> str:
    """Encode one field value as TWS text.

    Args:
        value: ``None`` becomes empty, booleans ``1``/``0``, infinite floats
            ``Infinite``, integers (an ``IntEnum`` too) their number, everything
            else ``str()``.

    Returns:
        The text of the field without its terminating NUL.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinite"
        if value.is_integer():
            return str(int(value)) if abs(value) < 1e15 else repr(value)
        return repr(value)
    if isinstance(value, int):
        # An int subclass (an IntEnum) as its number: str() gives "Side.BUY"
        # before Python 3.11.
        return str(int(value))
    return str(value)


def encode_message(fields: Iterable[Field]) -> bytes:
    """Serialize fields into one length-prefixed frame.

    Args:
        fields: Field values, the first being the message id.

    Returns:
        The framed message bytes.
    """
    # Text and integers, most of every message, are laid out without a call to
    # encode_field (exactly a str's or an int's own text; a bool is not an int
    # here): a startup sync lays out every order and execution of the book, ~100
    # fields each (issue 21: a month's book holds hundreds).
    texts = [f if type(f) is str else str(f) if type(f) is int else encode_field(f)
             for f in fields]
    body = ("\0".join(texts) + "\0").encode() if texts else b""
    return _LENGTH.pack(len(body)) + body


def error(
    req_id: int, code: int, text: str, *, version: int, advanced_reject_json: str = ""
) -> bytes:
    """An error / system message (errMsg, version 2), laid out for ``version``.

    The simulator sends it and the proxy injects it, so both lay it out alike.

    Args:
        req_id: Request or order id; -1 for system messages.
        code: IB message code.
        text: Message text.
        version: The connection's server version.
        advanced_reject_json: IB's JSON detail of an order rejection (sent
            from version 166 on, where it follows the text; empty otherwise).

    Returns:
        The framed message.
    """
    f: list[Field] = [ERR_MSG, 2, req_id, code, text]
    if version >= ADVANCED_ORDER_REJECT:
        f.append(advanced_reject_json)
    return encode_message(f)


class ProtocolError(Exception):
    """Raised when a client sends bytes that cannot be framed."""


class FrameReader:
    """Incremental decoder of length-prefixed frames.

    Args:
        max_frame: Largest accepted payload size in bytes.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = b""
        self._max_frame = max_frame

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Add received bytes and return every complete frame payload.

        Args:
            data: Bytes just received (a view is copied: its buffer may be
                read into again).

        Returns:
            The payloads completed by this data, oldest first.

        Raises:
            ProtocolError: If a length prefix exceeds ``max_frame``.
        """
        # Frames are cut at an offset and the rest kept once, rather than the
        # buffer sliced after every frame (quadratic in the frames of one read);
        # a read with nothing left over (the usual case: one request, e.g. a
        # heartbeat's reqCurrentTime, ~837,000 a month, issue 21) copies nothing.
        buffer = self._buffer + data if self._buffer else bytes(data)
        end = len(buffer)
        frames: list[bytes] = []
        pos = 0
        while end - pos >= 4:
            (size,) = _LENGTH.unpack_from(buffer, pos)
            if size > self._max_frame:
                self._buffer = buffer[pos:]
                raise ProtocolError(f"frame length {size} exceeds {self._max_frame}")
            if end - pos - 4 < size:
                break
            frames.append(buffer[pos + 4 : pos + 4 + size])
            pos += 4 + size
        self._buffer = buffer[pos:] if pos else buffer
        return frames

    def take_prefix(self, size: int) -> bytes | None:
        """Remove and return ``size`` raw bytes if available (used for ``API\\0``).

        Args:
            size: Number of bytes wanted.

        Returns:
            The bytes, or ``None`` if fewer are buffered.
        """
        if len(self._buffer) < size:
            return None
        head, self._buffer = self._buffer[:size], self._buffer[size:]
        return head


def split_fields(payload: bytes) -> list[str]:
    """Split a frame payload into text fields (the trailing NUL is dropped).

    Args:
        payload: One frame's payload.

    Returns:
        The fields; undecodable bytes are replaced.
    """
    text = payload.decode(errors="replace")
    fields = text.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


def parse_version_range(payload: bytes) -> tuple[int, int, str]:
    """Parse the client's ``v<min>..<max>[ options]`` handshake payload.

    Args:
        payload: Frame payload sent after ``API\\0``.

    Returns:
        ``(min_version, max_version, connect_options)``.

    Raises:
        ProtocolError: If the payload is not a version range.
    """
    text = payload.decode(errors="replace").rstrip("\0")
    if not text.startswith("v"):
        raise ProtocolError(f"bad handshake {text!r}")
    spec, _, options = text[1:].partition(" ")
    try:
        if ".." in spec:
            low_s, high_s = spec.split("..", 1)
            low, high = int(low_s), int(high_s)
        else:
            low = high = int(spec)
    except ValueError as exc:
        raise ProtocolError(f"bad handshake {text!r}") from exc
    return low, high, options
