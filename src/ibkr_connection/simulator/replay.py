"""Serving a proxy recording: ``ibkr-connection sim --replay FILE``.

:class:`ReplayGateway` is a :class:`~ibkr_connection.simulator.gateway.FakeGateway`
that consults a recording (:mod:`ibkr_connection.wire.recording`) before
its own model:

* The handshake is answered with the recorded server version, never a
  negotiated one: the recorded messages are laid out for it. A client whose
  version range excludes it is refused as the simulator refuses a range it
  cannot serve (answered with that version, then closed), and the log says
  which range excluded which version. When the recording's sessions were at
  different versions (e.g. an ib_insync bot at 176 and an ib_async bot at
  178), a connection gets the highest version of the sessions left to serve
  that its range includes, as TWS answers with the highest both speak.
* A client's ``startApi`` takes the next recorded session at the version its
  connection speaks (one of the same client id first), and gets that
  session's greeting (``managedAccounts``, ``nextValidId``, farm notices
  ...).
* Each later request is matched to the first unused recorded request with
  the same message id and the same identifying fields (every field but its
  request or order id: the contract of a ``reqMktData``, the filter of a
  ``reqExecutions``, the terms of a ``placeOrder``), and answered with what
  the gateway answered to it, with the recorded request ids patched to the
  client's own, at the recorded delays after the request.
* Messages nobody asked for (farm notices, 1100/1101, errors with reqId -1)
  follow the request they followed in the recording, at the recorded delay
  after it. A ``reqCurrentTime`` is never such an anchor: heartbeats send it
  on a timer, so how many there are depends on timing.
* A session the gateway (or the proxy) closed is closed at the recorded delay
  after its last anchoring request; if a recorded ``restart`` dropped it,
  connections are then refused for its outage. A recorded 1300 names this
  simulator's port.
* A request the recording has no answer for is answered by the simulator's
  own model, and logged (:attr:`ReplayGateway.unmatched` keeps them). The
  model reads the request and lays out its answer for the connection's
  version, the recorded one, as for any client at that version; a recorded
  version outside the simulator's 157..178 is said at start, since the model
  then reads and answers as at the nearest version it speaks.

Which messages answer which request (:func:`build_plan`): a message carrying
a recorded request's id (at the position :data:`REPLY_ID_FIELDS` gives for
its message id) answers that request; a message of a list a request is
still receiving (``position`` until ``positionEnd`` for ``reqPositions``
...) belongs to that request; ``currentTime``, ``nextValidId`` and
``managedAccounts`` answer the oldest pending ``reqCurrentTime``, ``reqIds``
and ``reqManagedAccts``; everything else came unasked.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.transport import ApiClient, Request
from ibkr_connection.wire import framing
from ibkr_connection.wire import protocol as p
from ibkr_connection.wire import versions as v
from ibkr_connection.wire.recording import RecordedMessage, RecordedSession, Recording

logger = logging.getLogger(__name__)

#: Client -> gateway message id -> position of its request (or order) id among
#: the fields, the message id being field 0. From ib_insync 0.9.86's
#: ``client.py`` (ib_async 2.x sends the same layouts).
REQUEST_ID_FIELD: dict[int, int] = {
    1: 2, 2: 2, 3: 1, 4: 2, 7: 2, 9: 2, 10: 2, 11: 2, 20: 1, 21: 2, 22: 1, 23: 2, 25: 2,
    50: 2, 51: 2, 52: 2, 53: 2, 54: 2, 55: 2, 56: 2, 57: 2, 62: 2, 63: 2, 67: 2, 68: 2,
    69: 2, 70: 2, 74: 2, 75: 2, 76: 2, 77: 2, 78: 1, 79: 1, 81: 1, 83: 1, 84: 1, 86: 1,
    87: 1, 88: 1, 89: 1, 90: 1, 92: 1, 93: 1, 94: 1, 95: 1, 96: 1, 97: 1, 98: 1, 100: 1,
    101: 1, 102: 1, 103: 1, 104: 1,
}

#: Gateway -> client message id -> positions of the request or order ids in it.
#: From ib_insync's ``decoder.py``; ``errMsg`` (4), ``contractData`` (10) and
#: ``bondContractData`` (18) depend on the version (:func:`reply_id_fields`).
REPLY_ID_FIELDS: dict[int, tuple[int, ...]] = {
    1: (2,), 2: (2,), 3: (1,), 4: (2,), 5: (1,), 10: (2,), 11: (1, 2), 12: (2,), 13: (2,),
    17: (1,), 18: (2,), 20: (2,), 21: (1,), 45: (2,), 46: (2,), 47: (2,), 50: (2,),
    51: (2,), 52: (2,), 55: (2,), 56: (2,), 57: (2,), 58: (2,), 63: (2,), 64: (2,),
    67: (2,), 68: (2,), 71: (2,), 72: (2,), 73: (2,), 74: (2,), 75: (1,), 76: (1,),
    77: (1,), 79: (1,), 81: (1,), 82: (1,), 83: (1,), 84: (1,), 86: (1,), 87: (1,),
    88: (1,), 89: (1,), 90: (1,), 91: (1,), 92: (1,), 94: (1,), 95: (1,), 96: (1,),
    97: (1,), 98: (1,), 99: (1,), 103: (1,), 104: (1,), 105: (1,), 106: (1,), 107: (1,),
    108: (1,),
}

#: List requests without an id: request id -> (ids of the list's messages, id of its end).
LIST_REPLIES: dict[int, tuple[frozenset[int], int]] = {
    61: (frozenset({61}), 62),  # reqPositions: position ... positionEnd
    5: (frozenset({5, 3}), 53),  # reqOpenOrders: openOrder, orderStatus ... openOrderEnd
    16: (frozenset({5, 3}), 53),  # reqAllOpenOrders
    15: (frozenset({5, 3}), 53),  # reqAutoOpenOrders
    99: (frozenset({101}), 102),  # reqCompletedOrders: completedOrder ... completedOrdersEnd
    6: (frozenset({6, 7, 8}), 54),  # reqAccountUpdates: values, portfolio, time ... end
}

#: Single answers without an id: reply id -> the request id it answers.
SINGLE_REPLIES: dict[int, int] = {49: 49, 9: 8, 15: 17}

#: Requests that never anchor unasked messages: sent on a timer (heartbeats).
UNANCHORED = frozenset({49})

#: ``commissionReport``: follows the ``execDetails`` it belongs to.
COMMISSION_REPORT = 59
EXEC_DETAILS = 11

#: Answers within this many seconds of their request go out with the answer to it.
IMMEDIATE = 0.001


def reply_id_fields(msg_id: int, version: int) -> tuple[int, ...]:
    """Positions of the request or order ids in a gateway message at ``version``.

    Args:
        msg_id: The message id.
        version: The negotiated server version.

    Returns:
        Field positions (the message id is field 0); empty if it carries none.
    """
    if msg_id == framing.ERR_MSG:
        return (1,) if version >= framing.ERROR_TIME_VERSION else (2,)
    if msg_id in (10, 18):
        # ib_insync decoder: the version field went away at 164.
        return (1,) if version >= 164 else (2,)
    return REPLY_ID_FIELDS.get(msg_id, ())


def request_key(fields: Sequence[str]) -> tuple[str, ...]:
    """The identifying fields of a request: all of them but its request or order id."""
    try:
        msg_id = int(fields[0])
    except (IndexError, ValueError):
        return tuple(fields)
    index = REQUEST_ID_FIELD.get(msg_id)
    if index is None or index >= len(fields):
        return tuple(fields)
    return (*fields[:index], *fields[index + 1:])


def _int(fields: Sequence[str] | None, index: int) -> int | None:
    if fields is None or index >= len(fields):
        return None
    try:
        return int(fields[index])
    except ValueError:
        return None


@dataclass
class Timed:
    """A recorded message (or a close, ``message=None``) due ``delay`` s after its anchor."""

    delay: float
    message: RecordedMessage | None


@dataclass
class RecordedRequest:
    """One recorded request, and what came after it in the recording.

    Attributes:
        msg_id: Its message id.
        key: Its identifying fields (:func:`request_key`).
        t: When it was recorded.
        rec_id: Its recorded request or order id, if it has one.
        answers: What answered it, with delays after it.
        followers: Unasked messages that came after it (before the next anchor).
        used: Matched to a client's request already.
    """

    msg_id: int
    key: tuple[str, ...]
    t: float
    rec_id: int | None = None
    answers: list[Timed] = field(default_factory=list)
    followers: list[Timed] = field(default_factory=list)
    used: bool = False


@dataclass
class Plan:
    """A recorded session, cut into requests with their answers and followers.

    Attributes:
        session: The recorded session.
        start: The ``startApi`` (its followers are the greeting).
        requests: Every other request, in recorded order.
        version: The server version it is served at: the session's own
            (0 if its handshake answer was not recorded).
        outage: Seconds of refusals after its recorded drop (a ``restart``).
    """

    session: RecordedSession
    start: RecordedRequest
    requests: list[RecordedRequest]
    version: int = 0
    outage: float = 0.0

    def take(self, fields: Sequence[str]) -> RecordedRequest | None:
        """Return (and mark used) the first unused request with these identifying fields."""
        key = request_key(fields)
        for request in self.requests:
            if not request.used and request.key == key:
                request.used = True
                return request
        return None

    def unsent(self) -> int:
        """Recorded messages still waiting for a request that never came."""
        return sum(len(r.answers) + len(r.followers) for r in self.requests if not r.used)


def build_plan(session: RecordedSession) -> Plan:
    """Attribute every recorded message of a session (see the module docstring).

    Args:
        session: A recorded session that reached ``startApi``.

    Returns:
        The plan.
    """
    version = session.version
    start = RecordedRequest(framing.START_API, ("startApi",), session.opened_at)
    requests: list[RecordedRequest] = []
    anchor = start
    by_id: dict[int, RecordedRequest] = {}
    lists: dict[int, collections.deque[RecordedRequest]] = {}
    singles: dict[int, collections.deque[RecordedRequest]] = {}
    last_exec: RecordedRequest | None = None
    for message in session.messages:
        fields = message.fields
        if message.direction == "c2s":
            if message.msg_id == framing.START_API:
                start.t = message.t
                continue
            request = RecordedRequest(message.msg_id, request_key(fields or [str(message.msg_id)]),
                                      message.t)
            index = REQUEST_ID_FIELD.get(message.msg_id)
            if index is not None:
                request.rec_id = _int(fields, index)
                if request.rec_id is not None:
                    by_id[request.rec_id] = request
            if message.msg_id in LIST_REPLIES and not (message.msg_id == 6 and fields
                                                       and fields[2:3] != ["1"]):
                lists.setdefault(message.msg_id, collections.deque()).append(request)
            if message.msg_id in SINGLE_REPLIES.values():
                singles.setdefault(message.msg_id, collections.deque()).append(request)
            requests.append(request)
            if message.msg_id not in UNANCHORED:
                anchor = request
            continue
        owner = _owner(message, version, by_id, lists, singles, last_exec)
        if message.msg_id == EXEC_DETAILS:
            last_exec = owner
        if owner is None:
            anchor.followers.append(Timed(message.t - anchor.t, message))
        else:
            owner.answers.append(Timed(message.t - owner.t, message))
    if session.closed_by_gateway and session.closed_at is not None:
        anchor.followers.append(Timed(session.closed_at - anchor.t, None))
    return Plan(session, start, requests, version)


def _restart_outage(recording: Recording, session: RecordedSession) -> float:
    """The outage of the recorded ``restart`` that dropped this session (0 if none did)."""
    if session.closed_at is None or not session.close_reason.startswith("dropped"):
        return 0.0
    for fault in recording.faults:
        t = fault.get("t")
        outage = fault.get("params", {}).get("outage") if isinstance(fault.get("params"),
                                                                    dict) else None
        if fault.get("action") == "restart" and isinstance(t, (int, float)) \
                and isinstance(outage, (int, float)) and 0 <= session.closed_at - t < 1.0:
            return float(outage)
    return 0.0


def _owner(
    message: RecordedMessage,
    version: int,
    by_id: dict[int, RecordedRequest],
    lists: dict[int, collections.deque[RecordedRequest]],
    singles: dict[int, collections.deque[RecordedRequest]],
    last_exec: RecordedRequest | None,
) -> RecordedRequest | None:
    msg_id = message.msg_id
    for req_msg_id, (members, end) in LIST_REPLIES.items():
        pending = lists.get(req_msg_id)
        if pending and (msg_id in members or msg_id == end):
            owner = pending[0]
            if msg_id == end:
                pending.popleft()
            return owner
    if msg_id == COMMISSION_REPORT:
        return last_exec
    for index in reply_id_fields(msg_id, version):
        value = _int(message.fields, index)
        if value is not None and value in by_id:
            return by_id[value]
    request_id = SINGLE_REPLIES.get(msg_id)
    if request_id is not None:
        pending = singles.get(request_id)
        if pending:
            return pending.popleft()
    return None


class _Replay:
    """One client connection served from a recorded session."""

    def __init__(self, gw: ReplayGateway, conn: ApiClient, plan: Plan) -> None:
        self.gw = gw
        self.conn = conn
        self.plan = plan
        # The connection speaks the plan's version (ReplayGateway._start picks it so).
        self.version = conn.version
        self.ids: dict[int, int] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def greet(self) -> None:
        self.play(self.plan.start)

    def answer(self, request: Request) -> bool:
        recorded = self.plan.take(request.fields)
        if recorded is None:
            return False
        if recorded.rec_id is not None:
            index = REQUEST_ID_FIELD[recorded.msg_id]
            mine = _int(request.fields, index)
            if mine is not None:
                self.ids[recorded.rec_id] = mine
        self.play(recorded)
        return True

    def play(self, recorded: RecordedRequest) -> None:
        items = sorted(recorded.answers + recorded.followers, key=lambda item: item.delay)
        now = 0
        while now < len(items) and items[now].delay < IMMEDIATE:
            self.send(items[now])
            now += 1
        if now < len(items):
            task = asyncio.ensure_future(self._later(items[now:]))
            self.tasks.append(task)
            task.add_done_callback(self.tasks.remove)

    async def _later(self, items: list[Timed]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for item in items:
            wait = start + item.delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.send(item)

    def send(self, item: Timed) -> None:
        if self.conn.transport.is_closing():
            return
        if item.message is None:
            logger.info("replay: closing client %s's connection, as the gateway did in the "
                        "recording", self.conn.client_id)
            self.conn.transport.abort()
            if self.plan.outage > 0:
                self.gw.refuse_for(self.plan.outage)
            return
        message = item.message
        code_at = reply_id_fields(framing.ERR_MSG, self.version)[0] + 1
        if message.msg_id == framing.ERR_MSG and _int(message.fields, code_at) == 1300 \
                and message.fields is not None and len(message.fields) > code_at + 1:
            # The recorded 1300 names the proxy's new port; the client must come back here.
            fields = list(message.fields)
            fields[code_at + 1] = p.default_message(1300, port=self.gw.port)
            self.conn.send_raw(framing.encode(fields, self.version))
            return
        if message.fields is None:
            self.conn.send_raw(message.frame(self.version))
            return
        fields = message.fields
        for index in reply_id_fields(message.msg_id, self.version):
            value = _int(fields, index)
            if value is not None and value in self.ids:
                fields = list(fields)
                fields[index] = str(self.ids[value])
        self.conn.send_raw(framing.encode(fields, self.version))

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class ReplayGateway(FakeGateway):
    """A simulator that serves a recording first and its own model for the rest.

    Every connection speaks a recorded server version, never a negotiated
    one (see the module docstring); the model's answers are laid out for it.

    Args:
        recording: The recording to serve.
        **kwargs: As for :class:`FakeGateway`; ``accounts`` defaults to the
            recording's. ``server_version`` (the cap of a gateway that
            negotiates) only applies to a recording without any recorded
            handshake; it defaults to the recorded version, or the nearest
            the simulator speaks.

    Attributes:
        recording: The recording served.
        recorded_version: The recording's server version (its first
            session's; 0 if it has none), spoken once every session is served.
        plans: Recorded sessions not yet served, in recorded order.
        unmatched: Requests the recording had no answer for (the model answered).
        served: Client connections served from the recording so far.
    """

    def __init__(self, recording: Recording, **kwargs: Any) -> None:
        kwargs.setdefault("accounts", recording.accounts or ["DU1234567"])
        recorded = recording.version
        kwargs.setdefault("server_version", _modelled(recorded) if recorded
                          else p.SERVER_VERSION)
        super().__init__(**kwargs)
        self.recording = recording
        self.recorded_version = recorded
        self.plans = [build_plan(s) for s in recording.sessions if s.client_id is not None]
        for plan in self.plans:
            plan.version = plan.version or recorded
            plan.outage = _restart_outage(recording, plan.session)
        self._outage: asyncio.Task[None] | None = None
        self.unmatched: list[Request] = []
        self.served = 0
        self._replays: dict[int, _Replay] = {}
        spoken = sorted(({plan.version for plan in self.plans} | {recorded}) - {0})
        for version in spoken:
            if _modelled(version) != version:
                logger.warning(
                    "replay: the recording is at server version %d, which the simulator does "
                    "not model (it speaks %d..%d): recorded answers are served as recorded, but "
                    "the simulator's own answers (to requests the recording lacks) are read "
                    "and laid out as at version %d, which a client at %d may misread",
                    version, v.MIN_SERVER_VERSION, v.MAX_SERVER_VERSION, _modelled(version),
                    version)
        logger.info("replay: %s: %d session(s) to serve at server version %s",
                    recording.source, len(self.plans),
                    ", ".join(map(str, spoken)) or f"up to {self.server_version} (none recorded)")

    def _offered(self) -> list[int]:
        """The versions a connection may get now: those of the sessions left to serve."""
        left = {plan.version for plan in self.plans if plan.version}
        if not left and self.recorded_version:
            left = {self.recorded_version}
        return sorted(left)

    def _negotiate(self, conn: ApiClient, low: int, high: int) -> int | None:
        """Speak a recorded version in the client's range, or refuse it; never negotiate one.

        The recorded messages are laid out for their session's version, and a
        client decodes them by the version of the handshake: a replay that
        answered any other (as a gateway with a cap would) would hand the
        client messages it misreads.
        """
        offered = self._offered()
        if not offered:
            return super()._negotiate(conn, low, high)  # nothing recorded: a plain simulator
        return max((version for version in offered if low <= version <= high), default=None)

    def _refusal(self, conn: ApiClient, low: int, high: int) -> int:
        offered = self._offered()
        if not offered:
            return super()._refusal(conn, low, high)
        logger.warning(
            "replay: connection %d refused: client versions %d..%d exclude %s, the server "
            "version of the recorded session(s) left to serve (a replay speaks only what was "
            "recorded); answered %d and closed",
            conn.conn_id, low, high, ", ".join(map(str, offered)), offered[-1])
        return offered[-1]

    async def stop(self) -> None:
        """Stop serving; pending recorded answers are dropped."""
        for replay in list(self._replays.values()):
            self._retire(replay)
        if self._outage is not None:
            self._outage.cancel()
        await super().stop()

    def _retire(self, replay: _Replay) -> None:
        replay.cancel()
        self._replays.pop(replay.conn.conn_id, None)
        unsent = replay.plan.unsent()
        if unsent:
            logger.info("replay: recorded session %d: %d message(s) never sent (the requests "
                        "they answer or follow never came)", replay.plan.session.session, unsent)

    def refuse_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds``, as the recorded restart did (once at a time)."""
        if self._outage is not None and not self._outage.done():
            return

        async def outage() -> None:
            await self._stop_listening(logging.DEBUG)  # the line below says it
            await asyncio.sleep(seconds)
            await self.start_listening()

        logger.info("replay: refusing connections for %.2fs, as the recorded restart did",
                    seconds)
        self._outage = asyncio.ensure_future(outage())

    def _handle_request(self, conn: ApiClient, request: Request) -> None:
        if request.msg_id == framing.START_API:
            self._start(conn, request)
            return
        replay = self._replays.get(conn.conn_id)
        if replay is not None and conn.ready and replay.answer(request):
            return
        if conn.ready:
            self.unmatched.append(request)
            logger.info("replay: client %s sent %s %s, which the recording does not answer; "
                        "answered by the simulator's model", conn.client_id, request.name,
                        request.fields[1:])
        super()._handle_request(conn, request)

    def _start(self, conn: ApiClient, request: Request) -> None:
        client_id = _int(request.fields, 2)
        if client_id is None:
            super()._handle_request(conn, request)
            return
        fitting = [pl for pl in self.plans if pl.version in (0, conn.version)]
        plan = next((pl for pl in fitting if pl.session.client_id == client_id), None) \
            or (fitting[0] if fitting else None)
        if plan is None:
            logger.info("replay: no recorded session at server version %d left for client %d; "
                        "the simulator's model serves it", conn.version, client_id)
            super()._handle_request(conn, request)
            return
        if not self.accept_client(conn, client_id):
            return
        self.plans.remove(plan)
        self.served += 1
        for stale in [r for r in self._replays.values() if r.conn.transport.is_closing()]:
            self._retire(stale)
        replay = _Replay(self, conn, plan)
        self._replays[conn.conn_id] = replay
        logger.info("replay: client %d served from recorded session %d (client %s)", client_id,
                    plan.session.session, plan.session.client_id)
        replay.greet()


def _modelled(version: int) -> int:
    """The version whose layouts the simulator's model uses for a client at ``version``."""
    return min(max(version, v.MIN_SERVER_VERSION), v.MAX_SERVER_VERSION)
