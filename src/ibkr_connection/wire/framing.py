"""What the relay knows of the TWS wire: frames, the handshake, message ids, error frames.

The facts, as the installed clients and IB's own API read them:

* The client opens with ``API\\0`` followed by one length-prefixed payload
  ``v<min>..<max>[ <options>]`` (``ib_insync/client.py``, ``connectAsync``).
* The server answers with one length-prefixed payload ``<version>\\0<time>\\0``;
  that version is the negotiated one (``ib_insync/client.py``,
  ``_onSocketHasData``: the first two-field message "concludes the handshake").
* Every later message, both ways, is a 4-byte big-endian length and a payload.
  Below server version 201 the payload is NUL-terminated text fields, the
  message id first. From 201 (``MIN_SERVER_VER_PROTOBUF`` in IB's ibapi) the
  payload opens with the message id as a 4-byte big-endian integer; an id
  above 200 means a protobuf body for message ``id - 200``.
* The client's first message after the handshake is ``startApi`` (id 71):
  ``71, 2, clientId, optionalCapabilities``.

Nothing here does I/O; :class:`FrameSplitter` is the relay's hot path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ibkr_connection.wire import protocol, versions

#: The bytes a TWS API client opens its connection with.
API_PREFIX = b"API\0"

#: Largest frame the relay frames. IB's clients refuse longer ones
#: (``MAX_MSG_LEN`` = 0xFFFFFF in ibapi); a longer length prefix means the
#: stream is not TWS frames, and the relay passes it on unframed.
MAX_FRAME = 0xFFFFFF

#: Server version from which message ids travel as 4-byte integers (ibapi's
#: ``MIN_SERVER_VER_PROTOBUF``).
BINARY_MSG_ID_VERSION = 201

#: Added to a message id whose body is protobuf (ibapi's ``PROTOBUF_MSG_ID``).
PROTOBUF_OFFSET = 200

#: From this server version the error message carries ``advancedOrderRejectJson``
#: (ibapi ``MIN_SERVER_VER_ADVANCED_ORDER_REJECT``; ib_insync and ib_async
#: ``Decoder.errorMsg`` read it from 166 on): the simulator's own constant.
ERROR_REJECT_JSON_VERSION = versions.ADVANCED_ORDER_REJECT

#: From this server version the error message drops its version field and ends
#: with the error time in epoch milliseconds (ibapi ``MIN_SERVER_VER_ERROR_TIME``,
#: ``EDecoder::processErrMsgMsg``).
ERROR_TIME_VERSION = 194

#: Message ids the relay acts on.
START_API = 71
ERR_MSG = 4
MANAGED_ACCTS = 15

_LEN = struct.Struct(">I")


class FrameSplitter:
    """Cuts a byte stream into whole frames, keeping an incomplete tail for later.

    The relay writes whole frames only, so that anything it injects lands at a
    message boundary. A length prefix above :data:`MAX_FRAME` turns the
    splitter off (:attr:`broken`): from then on :meth:`feed` returns every
    byte as it comes.

    Attributes:
        broken: True once the stream proved not to be TWS frames.
    """

    __slots__ = ("_buf", "broken")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken = False

    @property
    def pending(self) -> int:
        """Bytes held back because their frame is not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        """Add bytes; return the longest prefix of the stream made of whole frames.

        Args:
            data: Bytes just received.

        Returns:
            Whole frames (length prefixes included), possibly empty; everything
            once the splitter is broken.
        """
        if self.broken:
            return data
        buf = self._buf
        if not buf:
            # The common case: a read that ends on a frame boundary needs no copy.
            end = _scan(data, 0, len(data))
            if end == len(data):
                return data
            if end < 0:
                return self._break(data)
            buf += memoryview(data)[end:]
            return data[:end]
        buf += data
        end = _scan(buf, 0, len(buf))
        if end < 0:
            return self._break(b"")
        out = bytes(buf[:end])
        del buf[:end]
        return out

    def _break(self, data: bytes) -> bytes:
        self.broken = True
        out = bytes(self._buf) + data
        self._buf.clear()
        return out


def _scan(buf: bytes | bytearray, pos: int, size: int) -> int:
    """Return the end of the last whole frame from ``pos``, or -1 if a length is absurd."""
    unpack = _LEN.unpack_from
    while pos + 4 <= size:
        length = unpack(buf, pos)[0]
        if length > MAX_FRAME:
            return -1
        end = pos + 4 + length
        if end > size:
            break
        pos = end
    return pos


def iter_payloads(frames: bytes) -> list[bytes]:
    """Split whole frames (as :meth:`FrameSplitter.feed` returns them) into payloads.

    Args:
        frames: Concatenated whole frames.

    Returns:
        Each frame's payload, without its length prefix.
    """
    out = []
    pos, size = 0, len(frames)
    unpack = _LEN.unpack_from
    while pos + 4 <= size:
        end = pos + 4 + unpack(frames, pos)[0]
        out.append(frames[pos + 4 : end])
        pos = end
    return out


def frame_size(prefix: bytes) -> int:
    """Read a frame's 4-byte length prefix.

    Raises:
        ValueError: The length is beyond :data:`MAX_FRAME` (not a TWS stream).
    """
    size = int(_LEN.unpack(prefix)[0])
    if size > MAX_FRAME:
        raise ValueError(f"frame length {size} is not a TWS frame's")
    return size


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its 4-byte big-endian length."""
    return _LEN.pack(len(payload)) + payload


@dataclass(frozen=True)
class Message:
    """One framed message, decoded as far as the relay needs.

    Attributes:
        msg_id: The message id (for a protobuf body, the id it stands for);
            -1 if the payload has none.
        fields: The text fields, the message id first; ``None`` when the
            payload is not NUL-separated UTF-8 text (a protobuf body, garbage).
    """

    msg_id: int
    fields: list[str] | None


def decode(payload: bytes, version: int) -> Message:
    """Decode a payload sent after the handshake.

    Args:
        payload: The frame's payload.
        version: The negotiated server version (0 if not known yet).

    Returns:
        The message; undecodable payloads give ``fields=None``.
    """
    if version >= BINARY_MSG_ID_VERSION:
        if len(payload) < 4:
            return Message(-1, None)
        wire_id = _LEN.unpack_from(payload, 0)[0]
        if wire_id > PROTOBUF_OFFSET:
            return Message(wire_id - PROTOBUF_OFFSET, None)
        rest = _text_fields(payload[4:])
        return Message(wire_id, None if rest is None else [str(wire_id), *rest])
    fields = _text_fields(payload)
    if not fields:
        return Message(-1, fields)
    try:
        return Message(int(fields[0]), fields)
    except ValueError:
        return Message(-1, fields)


def _text_fields(payload: bytes) -> list[str] | None:
    if payload and not payload.endswith(b"\0"):
        return None
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return None
    fields = text.split("\0")
    fields.pop()
    return fields


def encode(fields: list[str], version: int) -> bytes:
    """Encode text fields (the message id first) into one frame for ``version``.

    Args:
        fields: The fields as text.
        version: The negotiated server version.

    Returns:
        The frame, length prefix included.
    """
    if version >= BINARY_MSG_ID_VERSION:
        body = _LEN.pack(int(fields[0])) + "".join(f + "\0" for f in fields[1:]).encode()
    else:
        body = "".join(f + "\0" for f in fields).encode()
    return frame(body)


def parse_client_hello(payload: bytes) -> tuple[int, int, str] | None:
    """Parse the client's ``v<min>..<max>[ options]`` payload.

    Args:
        payload: The first frame's payload after ``API\\0``.

    Returns:
        ``(min, max, options)``, or ``None`` if it is not a version range.
    """
    text = payload.decode(errors="replace").rstrip("\0")
    if not text.startswith("v"):
        return None
    spec, _, options = text[1:].partition(" ")
    low_s, sep, high_s = spec.partition("..")
    try:
        low = int(low_s)
        high = int(high_s) if sep else low
    except ValueError:
        return None
    return low, high, options


def parse_server_hello(payload: bytes) -> int | None:
    """Return the negotiated version from the server's first payload, if it is one."""
    fields = _text_fields(payload)
    if not fields:
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


def _escape(char: str) -> str:
    """Java's ``\\uXXXX`` escape of one character (a surrogate pair above U+FFFF)."""
    code = ord(char)
    if code < 0x80:
        return char
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def proxy_error_frame(
    version: int, req_id: int, code: int, message: str, *, error_time_ms: int = 0
) -> bytes:
    """Frame an IB error / system message (id 4) in the layout of ``version``.

    At the versions the simulator speaks (157..178) this is the simulator's
    own encoder, :func:`ibkr_connection.wire.protocol.error`, so the
    proxy and the simulator cannot disagree on a layout the tests check
    against ib_insync and ib_async. The proxy relays whatever version the real
    gateway negotiated, so it keeps its own rules for the versions the
    simulator does not model:

    * below 157: ``4, 2, reqId, code, message`` (errMsg version 2, which
      ib_insync / ib_async ``Decoder.errorMsg`` and ibapi read alike; the
      simulator's 157 layout);
    * 179 to 193: ``4, 2, reqId, code, message, advancedOrderRejectJson``
      (both decoders read the extra field from 166 on; ibapi
      ``MIN_SERVER_VER_ADVANCED_ORDER_REJECT`` = 166);
    * 194 to 200: ``4, reqId, code, message, advancedOrderRejectJson,
      errorTime`` (ibapi ``processErrMsgMsg``: no version field
      from ``MIN_SERVER_VER_ERROR_TIME`` = 194 on, the time in epoch ms
      last);
    * 201 and up: the same fields after a 4-byte binary message id (ibapi
      ``MIN_SERVER_VER_PROTOBUF`` = 201; :func:`encode`).

    From version 153 (ibapi ``MIN_SERVER_VER_ENCODE_MSG_ASCII7``) TWS escapes
    non-ASCII text as ``\\uXXXX``, which IB's own clients unescape from that
    version on (ib_insync 0.9.86 and ib_async 2.x do not, and show the
    escapes). The proxy escapes the text before laying it out, at every
    version, as the gateway it stands for would. The simulator's texts are
    ASCII, so its encoder has nothing to escape and the two agree.

    Args:
        version: The negotiated server version.
        req_id: Request or order id; -1 for a system message.
        code: IB's message code.
        message: The text.
        error_time_ms: The error time (194 and up); 0 leaves it 0, as a
            decoder reads an absent time.

    Returns:
        The frame, length prefix included.
    """
    text = message if message.isascii() else "".join(_escape(c) for c in message)
    if versions.MIN_SERVER_VERSION <= version <= versions.MAX_SERVER_VERSION:
        return protocol.error(req_id, code, text, version=version)
    if version < ERROR_REJECT_JSON_VERSION:
        fields = ["4", "2", str(req_id), str(code), text]
    elif version < ERROR_TIME_VERSION:
        fields = ["4", "2", str(req_id), str(code), text, ""]
    else:
        fields = ["4", str(req_id), str(code), text, "", str(error_time_ms)]
    return encode(fields, version)
