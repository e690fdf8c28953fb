"""Fault injection: the failures a connection manager must survive, on demand.

:class:`FaultInjection` adds to the transport everything that makes a gateway
misbehave: IB error and system messages, data farms going down and up,
dropped sockets, restarts, a moved API port, a hung gateway, a slow or
incomplete startup sync (held or delayed "end" messages), a slow handshake,
IB's nightly reset, and an order request caught by a dying socket (lost on
its way in, booked with its answer lost, or answered just before the drop).
It also sends the replies of the sync requests, since those are what the
holds and delays act on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from ibkr_connection.simulator.transport import ApiClient, GatewayTransport, Request
from ibkr_connection.wire import protocol as p
from ibkr_connection.wire.nightly import play_nightly_reset
from ibkr_connection.wire.scenario import SYNC_REQUESTS

logger = logging.getLogger(__name__)

#: Requests an order fault can catch: a new order or a modification, and a cancel.
ORDER_REQUESTS = ("placeOrder", "cancelOrder")

#: What an order fault does to the request it catches (see :meth:`FaultInjection.order_fault`).
ORDER_FAULTS = ("lost", "ack_lost", "drop_after")


class FaultInjection(GatewayTransport):
    """A gateway transport whose faults can be injected at any time.

    Args:
        host: Interface to bind.
        port: TCP port; 0 picks a free one.
        server_version: Highest protocol version spoken (157..178).
        farms: Data farms, all OK at first.

    Attributes:
        farms: Data farm name -> OK (True) or broken (False).
        sync_delays: Request name -> seconds its reply is delayed.
    """

    def __init__(self, host: str, port: int, server_version: int, farms: Sequence[str]) -> None:
        super().__init__(host, port, server_version)
        self.farms: dict[str, bool] = {farm: True for farm in farms}
        self.sync_delays: dict[str, float] = {}
        self._held: set[str] = set()
        #: Order requests lost on their way in (never handled), oldest first.
        self.lost_requests: list[Request] = []
        self._order_faults: list[tuple[str, str, int | None]] = []

    def send_reply(
        self, conn: ApiClient, name: str, body: Iterable[bytes], end: bytes | None
    ) -> None:
        """Send a request's reply, honouring sync delays and held ends.

        Args:
            conn: The client that asked.
            name: Request name, e.g. ``"reqPositions"``.
            body: The reply's messages, sent in one write.
            end: The closing "end" message, if the reply has one.
        """
        data = b"".join(body)
        if not self.sync_delays:  # the usual case, without a call to _later
            self._deliver(conn, name, data, end)
            return
        self._later(conn, self.sync_delays.get(name, 0.0), self._deliver, conn, name, data, end)

    def _deliver(self, conn: ApiClient, name: str, data: bytes, end: bytes | None) -> None:
        if data:  # a reply that is only its end (reqCurrentTime) writes once
            conn.send_raw(data)
        if end is None:
            return
        if name in self._held:
            conn.held.setdefault(name, []).append(end)
            logger.info("holding end of %s for client %s", name, conn.client_id)
        else:
            conn.send_raw(end)

    async def send_error(
        self,
        code: int,
        client_id: int | None = None,
        message: str | None = None,
        req_id: int = -1,
        *,
        advanced_reject_json: str = "",
    ) -> int:
        """Send an IB error / system message (sent even while stalled).

        Each client gets it laid out for its own server version.

        Args:
            code: IB message code, e.g. 1100.
            client_id: Target client id; ``None`` for every connected client.
            message: Text; IB's wording for ``code`` if omitted.
            req_id: Request id; -1 for system messages, as TWS uses.
            advanced_reject_json: IB's JSON detail of an order rejection;
                clients at server version 166 or later receive it.

        Returns:
            Number of clients the message was sent to.
        """
        text = message if message is not None else p.default_message(code, port=self._port)
        targets = self._client(client_id)
        for conn in targets:
            conn.send_error(req_id, code, text, advanced_reject_json)
        logger.info("fault: sent %d %r to %d client(s)", code, text, len(targets))
        await asyncio.sleep(0)
        return len(targets)

    async def farm_broken(
        self, farm: str = "usfarm", client_id: int | None = None, code: int | None = None
    ) -> None:
        """Mark a data farm broken and send 2103 / 2105 / 2157 (by farm kind).

        Args:
            farm: Farm name (``usfarm``, ``ushmds``, ``secdefil`` ...).
            client_id: Target client; ``None`` for all.
            code: Explicit code instead of the one derived from the name.
        """
        self.farms[farm] = False
        broken, _ = p.farm_codes(farm)
        use = code if code is not None else broken
        await self.send_error(use, client_id, p.default_message(use, farm=farm))

    async def farm_ok(
        self, farm: str = "usfarm", client_id: int | None = None, code: int | None = None
    ) -> None:
        """Mark a data farm OK and send 2104 / 2106 / 2158 (by farm kind).

        Args:
            farm: Farm name.
            client_id: Target client; ``None`` for all.
            code: Explicit code instead of the one derived from the name.
        """
        self.farms[farm] = True
        _, ok = p.farm_codes(farm)
        use = code if code is not None else ok
        await self.send_error(use, client_id, p.default_message(use, farm=farm))

    def farm_notices(self, version: int) -> list[bytes]:
        """The farm status messages TWS sends a client right after ``startApi``.

        Args:
            version: The client's server version.

        Returns:
            One 2104/2106/2158 (OK) or 2103/2105/2157 (broken) per farm.
        """
        notices: list[bytes] = []
        for farm, ok in self.farms.items():
            broken_code, ok_code = p.farm_codes(farm)
            code = ok_code if ok else broken_code
            text = p.default_message(code, farm=farm)
            notices.append(p.error(-1, code, text, version=version))
        return notices

    async def drop_clients(self, client_id: int | None = None) -> int:
        """Abort client sockets abruptly (no goodbye), including handshaking ones.

        Args:
            client_id: Only this client (``None``: every connection).

        Returns:
            Number of connections aborted.
        """
        dropped = self._abort(client_id)
        logger.info("fault: dropped %d connection(s)", dropped)
        await asyncio.sleep(0)
        return dropped

    def _abort(self, client_id: int | None = None) -> int:
        victims = [c for c in self._conns.values() if client_id is None or c.client_id == client_id]
        for conn in victims:
            conn.transport.abort()
        return len(victims)

    async def restart(self, outage: float = 1.0) -> None:
        """Simulate a gateway restart: drop everyone, refuse for ``outage`` s, listen again.

        Args:
            outage: Seconds during which connections are refused.
        """
        # One line as it goes down, one as it comes back: the parts are DEBUG.
        dropped = await self.shut_down()
        logger.info("fault: gateway restart: %d connection(s) dropped, refusing connections "
                    "for %.2fs", dropped, outage)
        await asyncio.sleep(outage)
        await self.start_listening(quiet=True)
        logger.info("gateway back after the restart, listening on %s:%d", self.host, self._port)

    async def shut_down(self) -> int:
        """Stop listening and abort every connection, saying nothing (the caller says it).

        The parts of a restart (this one, or IBC's); :meth:`start_listening`
        or :meth:`restart` bring the gateway back.

        Returns:
            The number of connections aborted.
        """
        await self._stop_listening(logging.DEBUG)
        dropped = self._abort()
        await asyncio.sleep(0)  # the aborted connections' callbacks run
        return dropped

    async def reset_port(self, new_port: int = 0) -> int:
        """Move to a new port: send 1300 naming it, drop clients, listen there only.

        Args:
            new_port: Port to move to (0 = any free port).

        Returns:
            The new port.
        """
        new_server, port = await self._create_server(new_port)
        targets = self._client(None)
        for conn in targets:
            conn.send_error(-1, 1300, p.default_message(1300, port=port))
        await asyncio.sleep(0)
        dropped = self._abort()
        await self._stop_listening(logging.DEBUG)
        self._server = new_server
        self._port = port
        logger.info("fault: socket port reset: 1300 sent to %d client(s), %d connection(s) "
                    "dropped, now listening on %d", len(targets), dropped, port)
        return port

    def stall(self) -> None:
        """Hang: sockets stay open but requests (and handshakes) get no answer.

        Incoming bytes are buffered and processed on :meth:`unstall`; ticks
        are not streamed. :meth:`send_error` still goes through.
        """
        self._stalled = True
        logger.info("fault: gateway stalled")

    def wedge(self) -> None:
        """Wedge: accept sockets and answer nothing (handshakes included) until a restart.

        What a stuck gateway does (nautilus_trader #4796, ib-gateway-docker
        #336): reconnecting cannot help. A restart through IBC's command
        server (:class:`~ibkr_connection.simulator.ibc.IbcCommandServer`),
        or :meth:`unstall`, clears it.
        """
        self._stalled = True
        logger.info("fault: gateway wedged (sockets accepted, nothing answered)")

    def unstall(self) -> None:
        """Resume after :meth:`stall`, processing everything received meanwhile."""
        self._stalled = False
        logger.info("fault: gateway unstalled")
        for conn in list(self._conns.values()):
            data, conn.backlog = bytes(conn.backlog), bytearray()
            if data:
                self._on_data(conn, data)

    def clear_faults(self) -> list[str]:
        """Forget the faults of this run, as a restarted gateway does; nothing is sent.

        Clears a stall or wedge, held and delayed sync replies, a slow
        handshake and broken farms. Called with no client connected (after a
        drop), so nothing held is delivered.

        Returns:
            What was cleared, one phrase each (empty when nothing was set).
        """
        cleared: list[str] = []
        if self._stalled:
            self._stalled = False
            cleared.append("the stall")
        if self._held:
            cleared.append(f"held ends of {', '.join(sorted(self._held))}")
            self._held.clear()
        if self.sync_delays:
            cleared.append(f"delays of {', '.join(sorted(self.sync_delays))}")
            self.sync_delays.clear()
        if self.handshake_delay:
            cleared.append(f"the {self.handshake_delay:g}s handshake delay")
            self.handshake_delay = 0.0
        broken = [farm for farm, ok in self.farms.items() if not ok]
        if broken:
            cleared.append(f"broken farms {', '.join(broken)}")
            for farm in broken:
                self.farms[farm] = True
        return cleared

    def hold_sync(self, name: str) -> None:
        """Withhold the end message of a request type (e.g. ``execDetailsEnd``).

        Args:
            name: Request name from :data:`SYNC_REQUESTS`, e.g. ``"reqExecutions"``.

        Raises:
            ValueError: For a request without an end message.
        """
        if name not in SYNC_REQUESTS:
            raise ValueError(f"cannot hold {name!r}; choose from {', '.join(SYNC_REQUESTS)}")
        self._held.add(name)
        logger.info("fault: holding the end of %s", name)

    def release_sync(self, name: str | None = None) -> None:
        """Stop holding and deliver the withheld end messages.

        Args:
            name: Request name, or ``None`` for all.
        """
        names = set(self._held) if name is None else {name}
        self._held -= names
        for conn in self._conns.values():
            for n in names:
                for msg in conn.held.pop(n, []):
                    conn.send_raw(msg)
        logger.info("fault: released %s", ", ".join(sorted(names)) or "nothing")

    def delay_sync(self, name: str, seconds: float) -> None:
        """Answer a request type only after ``seconds`` (a slow startup sync).

        Args:
            name: Request name from :data:`SYNC_REQUESTS`.
            seconds: Delay; 0 removes it.
        """
        if seconds > 0:
            self.sync_delays[name] = seconds
        else:
            self.sync_delays.pop(name, None)

    async def nightly_reset(
        self,
        silence: float = 2.0,
        restore_code: int = 1101,
        farms: Sequence[str] | None = None,
        stall: bool = False,
    ) -> None:
        """Play the nightly server reset story.

        Sends 1100, marks the farms broken (2103/2105/2157), stays silent for
        ``silence`` seconds (optionally hung), then sends ``restore_code``
        (1101 data lost or 1102 data maintained) and the farms OK messages.

        Args:
            silence: Seconds between the loss and the restore.
            restore_code: 1101 or 1102.
            farms: Farms to break (default: all known farms).
            stall: Also hang requests during the silence.
        """
        names = list(farms) if farms is not None else list(self.farms) or ["usfarm"]
        logger.info("fault: nightly reset, silence %.2fs, restore %d", silence, restore_code)
        await play_nightly_reset(self, names, silence, restore_code, stall)

    # ------------------------------------------------------------ orders caught by a drop
    def lose_next_order(self, request: str = "placeOrder", client_id: int | None = None) -> None:
        """Lose the next order request in transit: never handled, and the socket dies.

        The request leaves :attr:`requests` for :attr:`lost_requests`: the
        gateway never got it (no order is booked, no id is used up).

        Args:
            request: ``"placeOrder"`` (a new order or a modification) or ``"cancelOrder"``.
            client_id: Only a request of this client (``None``: anyone's).
        """
        self._arm_order_fault("lost", request, client_id)

    def lose_next_order_ack(
        self, request: str = "placeOrder", client_id: int | None = None
    ) -> None:
        """Handle the next order request, but drop the socket before any answer leaves.

        The order is booked (filled per the fill mode, modified or cancelled)
        and nothing of it reaches the client: it learns the outcome from the
        next session's startup sync only.

        Args:
            request: ``"placeOrder"`` or ``"cancelOrder"``.
            client_id: Only a request of this client (``None``: anyone's).
        """
        self._arm_order_fault("ack_lost", request, client_id)

    def drop_after_next_order(
        self, request: str = "placeOrder", client_id: int | None = None
    ) -> None:
        """Handle the next order request and answer it, then drop the socket at once.

        Args:
            request: ``"placeOrder"`` or ``"cancelOrder"``.
            client_id: Only a request of this client (``None``: anyone's).
        """
        self._arm_order_fault("drop_after", request, client_id)

    def clear_order_faults(self) -> None:
        """Disarm every order fault not yet triggered."""
        self._order_faults.clear()

    @property
    def armed_order_faults(self) -> list[tuple[str, str, int | None]]:
        """Order faults waiting for their request: ``(fault, request, client id)``."""
        return list(self._order_faults)

    def _arm_order_fault(self, fault: str, request: str, client_id: int | None) -> None:
        if request not in ORDER_REQUESTS:
            raise ValueError(
                f"cannot catch {request!r}; choose from {', '.join(ORDER_REQUESTS)}")
        self._order_faults.append((fault, request, client_id))
        logger.info("fault: armed %s for the next %s%s", fault, request,
                    "" if client_id is None else f" of client {client_id}")

    def order_fault(self, conn: ApiClient, request: Request) -> str | None:
        """Take the armed fault that catches ``request``, and begin it.

        Called by the gateway before it handles a request. ``"lost"``: the
        socket is aborted and the request moved to :attr:`lost_requests` (the
        caller must not handle it). ``"ack_lost"``: the socket is aborted, so
        whatever the handler sends goes nowhere. ``"drop_after"``: nothing
        yet; the caller drops the socket (:meth:`drop_after`) once the
        request is handled and answered.

        Args:
            conn: The connection the request came on.
            request: The request, already logged.

        Returns:
            The fault taken (one of :data:`ORDER_FAULTS`), or ``None``.
        """
        if not self._order_faults:
            return None
        index = next((i for i, (_, name, client_id) in enumerate(self._order_faults)
                      if name == request.name and client_id in (None, conn.client_id)), None)
        if index is None:
            return None
        fault = self._order_faults.pop(index)[0]
        logger.info("fault: %s %s of client %s (order %s)", fault, request.name,
                    conn.client_id, request.fields[1:3])
        if fault == "lost":
            for index in range(len(self.requests) - 1, -1, -1):
                if self.requests[index] is request:
                    del self.requests[index]
                    break
            self.lost_requests.append(request)
        if fault in ("lost", "ack_lost"):
            conn.transport.abort()
        return fault

    def drop_after(self, conn: ApiClient) -> None:
        """Abort ``conn`` after the answers already written (a ``"drop_after"`` fault)."""
        conn.transport.abort()
