"""The TWS API relay: bots connect to it, it connects each one to the real gateway.

:class:`ProxyServer` listens (on 127.0.0.1 unless told otherwise) and, for
every bot that connects, opens a connection to the upstream TWS / IB Gateway
and relays the bytes both ways unchanged. It frames both streams as it goes
(the ``API\\0`` opening, the two handshakes, then length-prefixed messages)
so that it can

* tell the negotiated server version and the bot's client id,
* inject IB error and system messages into the bot's stream at a message
  boundary, in the layout of the negotiated version
  (:func:`~ibkr_connection.wire.framing.proxy_error_frame`),
* hold the gateway's bytes (a hung gateway), delay its handshake answer, or
  hold or delay the end message of one startup request,
* drop sessions, stop listening, restart, or move to a new port,
* and write every message each way to a recording
  (:class:`~ibkr_connection.wire.recording.RecordingWriter`).

The proxy writes whole frames only, both ways: a read that ends inside a
frame keeps that frame's start until the rest arrives. A stream that is not
TWS frames (a client that does not open with ``API\\0``, an absurd length
prefix) is passed on unframed, as it comes; the proxy never closes a
session for what its bytes say, the gateway decides.

The fault methods mirror :class:`~ibkr_connection.simulator.gateway.FakeGateway`'s,
so :mod:`ibkr_connection.proxy.injection` plays the simulator's scenario
actions on a relay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from ibkr_connection.proxy.session import SYNC_ENDS, ClientSide, RelaySession, addr
from ibkr_connection.wire import framing
from ibkr_connection.wire import protocol as p
from ibkr_connection.wire.nightly import play_nightly_reset
from ibkr_connection.wire.recording import RecordingWriter

logger = logging.getLogger(__name__)

#: Farms a nightly reset breaks when no session has named any yet.
DEFAULT_FARMS = ("usfarm", "ushmds", "secdefil")

#: Receives the operator's lines: one per session and per fault.
Notify = Callable[[str], None]

#: The version range :meth:`ProxyServer.probe_upstream` offers: the simulator's
#: whole range, which a real gateway of any recent build answers.
_PROBE_RANGE = b"v157..178"

class ProxyServer:
    """A fault-injecting, recording relay in front of a real TWS / IB Gateway.

    Use as ``async with ProxyServer(...) as proxy`` or call :meth:`start` and
    :meth:`stop`.

    Args:
        upstream_host: The gateway's host.
        upstream_port: The gateway's API port.
        host: Interface to listen on; 127.0.0.1 unless told otherwise.
        port: Port to listen on; 0 picks a free one (see :attr:`port`).
        recorder: Where to record every relayed session (None: no recording).
        notify: Called with one line per session and per fault, for the
            operator (the CLI prints them); they are logged as well.
        inspect: Read every frame from the gateway (needed by
            ``hold_sync``, ``delay_sync`` and by ``nightly_reset`` to learn
            the farms); off, the hot path only looks at frame lengths.
            Turned on by the first of those faults if off.
        connect_timeout: Seconds to wait for the gateway to accept a session.

    Attributes:
        sessions: Open sessions, by number.
        handshake_delay: Seconds the gateway's handshake answer is held in
            sessions that open from now on.
        sync_delays: Request name -> seconds its end message is delayed.
        closed_sessions: How many sessions ended so far.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        recorder: RecordingWriter | None = None,
        notify: Notify | None = None,
        inspect: bool = False,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self._port = port
        self.recorder = recorder
        self.notify = notify
        self.inspect = inspect
        self.connect_timeout = connect_timeout
        self.sessions: dict[int, RelaySession] = {}
        self.handshake_delay = 0.0
        self.sync_delays: dict[str, float] = {}
        self.closed_sessions = 0
        self.held_syncs: set[str] = set()
        self._stalled = False
        self._server: asyncio.base_events.Server | None = None
        self._numbers = itertools.count(1)
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ state
    @property
    def port(self) -> int:
        """The port the proxy listens (or last listened) on."""
        return self._port

    @property
    def upstream(self) -> str:
        """``host:port`` of the gateway."""
        return addr(self.upstream_host, self.upstream_port)

    @property
    def sockname(self) -> tuple[str, int] | None:
        """The address the listening socket is bound to (None while not listening)."""
        if self._server is None:
            return None
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def listening(self) -> bool:
        """True while the proxy accepts connections."""
        return self._server is not None

    @property
    def stalled(self) -> bool:
        """True while the gateway's bytes are held (see :meth:`stall`)."""
        return self._stalled

    @property
    def ready_sessions(self) -> list[RelaySession]:
        """Sessions past the handshake and ``startApi``, oldest first."""
        return [s for s in self.sessions.values() if s.ready]

    def _targets(self, client_id: int | None) -> list[RelaySession]:
        return [s for s in self.ready_sessions if client_id is None or s.client_id == client_id]

    def say(self, line: str) -> None:
        """Tell the operator one event, once: to ``notify`` if given, else to the log."""
        if self.notify is not None:
            self.notify(line)
        else:
            logger.info("%s", line)

    def elapsed(self) -> float:
        """Seconds since the proxy started listening."""
        return asyncio.get_running_loop().time() - self._t0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening; the scenario clock (the loop's) starts now."""
        self._t0 = asyncio.get_running_loop().time()
        await self.start_listening()

    async def stop(self) -> None:
        """Stop listening and drop every session (each reports its line)."""
        await self.stop_listening()
        for session in list(self.sessions.values()):
            session.reason = session.reason or "proxy stopped"
            session.drop()
        # connection_lost runs on the next loop turns; wait for the session lines.
        for _ in range(50):
            if not self.sessions:
                break
            await asyncio.sleep(0.01)

    async def start_listening(self) -> None:
        """Listen (again) on :attr:`port` (no-op if listening)."""
        if self._server is not None:
            return
        self._server, self._port = await self._create_server(self._port)
        # DEBUG: the CLI's first line says it, and a restart's fault line covers the rest.
        logger.debug("proxy listening on %s, relaying to %s", addr(self.host, self._port),
                     self.upstream)

    async def stop_listening(self) -> None:
        """Refuse new connections; open sessions stay."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            logger.debug("proxy stopped listening on port %d", self._port)
        await asyncio.sleep(0)

    async def _create_server(self, port: int) -> tuple[asyncio.base_events.Server, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientSide(self), self.host, port,
                                          reuse_address=True)
        return server, int(server.sockets[0].getsockname()[1])

    def session_opened(self, transport: asyncio.Transport) -> RelaySession:
        session = RelaySession(self, next(self._numbers), transport)
        self.sessions[session.number] = session
        logger.info("session %d opened from %s", session.number, session.peer)
        if self.recorder is not None:
            self.recorder.open_session(session.number, session.peer)
        session.start()
        return session

    def session_closed(self, session: RelaySession) -> None:
        self.sessions.pop(session.number, None)
        self.closed_sessions += 1
        if self.recorder is not None:
            self.recorder.close_session(session.number, session.client_id, session.c2s_bytes,
                                        session.s2c_bytes, session.reason)
        if session.reason.startswith("upstream unreachable"):
            return  # already said, when it happened
        seconds = time.monotonic() - session.opened_at
        self.say(f"session {session.number} (client {session.client_id}, {session.peer}) "
                  f"closed after {seconds:.2f}s: {session.c2s_bytes:,} bytes to the gateway, "
                  f"{session.s2c_bytes:,} bytes to the client ({session.reason})")

    def report_fault(self, action: str, params: dict[str, Any], sessions: int) -> None:
        """Say (and record) that a fault was injected.

        Args:
            action: The scenario action.
            params: Its parameters, as shown and recorded.
            sessions: How many sessions it reached.
        """
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        self.say(f"{self.elapsed():8.3f}s fault {action}{' ' + shown if shown else ''} -> "
                  f"{sessions} session(s)")
        if self.recorder is not None:
            self.recorder.fault(action, params, sessions)

    async def probe_upstream(self, timeout: float = 2.0) -> str:
        """Say whether the gateway answers: a TCP connect and the API handshake.

        The probe sends the ``API\\0`` opening and a version range and reads the
        gateway's answer, then closes without ``startApi`` (no client id is
        taken), as the manager's own gateway probe does. Never fatal: the
        gateway may come later, and sessions connect to it when they open.

        Args:
            timeout: Seconds allowed for the connect, and again for the answer.

        Returns:
            The one-line notice, also said (see :meth:`say`).
        """
        where = f"upstream {self.upstream}"
        opened: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            line = (f"{where} does not answer yet ({str(exc) or type(exc).__name__}); "
                    "sessions that open before it does are closed")
        else:
            opened = writer
            try:
                writer.write(framing.API_PREFIX + framing.frame(_PROBE_RANGE))
                await writer.drain()
                size = framing.frame_size(await asyncio.wait_for(reader.readexactly(4), timeout))
                version = framing.parse_server_hello(
                    await asyncio.wait_for(reader.readexactly(size), timeout))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                version = None
            if version is None:
                line = (f"{where} accepts connections but does not answer the API "
                        f"handshake within {timeout:g}s: not a TWS API port, or a gateway "
                        "still starting?")
            else:
                line = f"{where} answers the API handshake (server version {version})"
        finally:
            if opened is not None:
                opened.close()
        self.say(line)
        return line

    # ------------------------------------------------------------------ faults
    def _inject_error(self, code: int, client_id: int | None, text: str, req_id: int) -> int:
        targets = self._targets(client_id)
        now_ms = int(time.time() * 1000)
        for session in targets:
            session.inject(framing.proxy_error_frame(session.version, req_id, code, text,
                                                  error_time_ms=now_ms))
        return len(targets)

    async def send_error(
        self, code: int, client_id: int | None = None, message: str | None = None,
        req_id: int = -1,
    ) -> int:
        """Inject an IB error / system message into the bots' streams.

        Framed in each session's negotiated layout and written at a message
        boundary; sent while stalled too.

        Args:
            code: IB's code, e.g. 1100.
            client_id: Only the session of this client id (None: every ready session).
            message: The text; IB's wording for ``code`` if omitted (a 1300
                names the proxy's own port).
            req_id: The request id; -1 for a system message.

        Returns:
            The number of sessions it was written to.
        """
        text = message if message is not None else p.default_message(code, port=self._port)
        sent = self._inject_error(code, client_id, text, req_id)
        params: dict[str, Any] = {"code": code}
        if client_id is not None:
            params["client_id"] = client_id
        if req_id != -1:
            params["req_id"] = req_id
        self.report_fault("error", params, sent)
        await asyncio.sleep(0)
        return sent

    async def farm_broken(self, farm: str = "usfarm", client_id: int | None = None,
                          code: int | None = None) -> int:
        """Inject a farm-broken notice: 2103, 2105 or 2157 by the farm's name.

        Returns:
            The number of sessions it was written to.
        """
        return await self._farm("farm_broken", farm, client_id,
                                code if code is not None else p.farm_codes(farm)[0])

    async def farm_ok(self, farm: str = "usfarm", client_id: int | None = None,
                      code: int | None = None) -> int:
        """Inject a farm-OK notice: 2104, 2106 or 2158 by the farm's name.

        Returns:
            The number of sessions it was written to.
        """
        return await self._farm("farm_ok", farm, client_id,
                                code if code is not None else p.farm_codes(farm)[1])

    async def _farm(self, action: str, farm: str, client_id: int | None, code: int) -> int:
        sent = self._inject_error(code, client_id, p.default_message(code, farm=farm), -1)
        params: dict[str, Any] = {"farm": farm, "code": code}
        if client_id is not None:
            params["client_id"] = client_id
        self.report_fault(action, params, sent)
        await asyncio.sleep(0)
        return sent

    async def drop_clients(self, client_id: int | None = None) -> int:
        """Abort sessions on both sides (handshaking ones too when ``client_id`` is None).

        Returns:
            The number of sessions dropped.
        """
        victims = [s for s in self.sessions.values()
                   if client_id is None or s.client_id == client_id]
        for session in victims:
            session.drop()
        self.report_fault("drop_clients", {} if client_id is None else {"client_id": client_id},
                    len(victims))
        await asyncio.sleep(0)
        return len(victims)

    async def restart(self, outage: float = 1.0) -> None:
        """Play a gateway restart: stop listening, drop everyone, refuse for ``outage`` s."""
        self.report_fault("restart", {"outage": outage}, len(self.sessions))
        await self.stop_listening()
        for session in list(self.sessions.values()):
            session.drop()
        await asyncio.sleep(outage)
        await self.start_listening()

    async def reset_port(self, new_port: int = 0) -> int:
        """Move to a new port: 1300 naming it, drop every session, listen there only.

        Args:
            new_port: The port to move to (0: any free port).

        Returns:
            The new port.
        """
        server, port = await self._create_server(new_port)
        sent = self._inject_error(1300, None, p.default_message(1300, port=port), -1)
        self.report_fault("reset_port", {"new_port": port}, sent)
        for session in list(self.sessions.values()):
            session.drop()
        await self.stop_listening()
        self._server, self._port = server, port
        logger.debug("proxy moved to port %d", port)  # said by the fault line
        return port

    def stall(self) -> None:
        """Hold the gateway's bytes: sockets stay open, the bots get nothing.

        What the bots send still reaches the gateway; its answers wait for
        :meth:`unstall`. Injected messages still go out.
        """
        self._stalled = True
        self.report_fault("stall", {}, len(self.sessions))

    def unstall(self, discard: bool = False) -> None:
        """Stop holding; deliver what was held, or throw it away.

        Args:
            discard: Throw the held bytes away instead of delivering them.
        """
        self._stalled = False
        held = sum(s.flush_held(discard) for s in list(self.sessions.values()))
        self.report_fault("unstall", {"discard": discard, "held_bytes": held}, len(self.sessions))

    def hold_sync(self, name: str) -> None:
        """Withhold the end message of one startup request from now on.

        Args:
            name: A request of :data:`SYNC_ENDS`, e.g. ``reqExecutions``.

        Raises:
            ValueError: For a request the relay cannot tell the end of.
        """
        if name not in SYNC_ENDS:
            raise ValueError(f"cannot hold {name!r}; choose from {', '.join(SYNC_ENDS)}")
        self._need_inspection(f"hold_sync {name}")
        self.held_syncs.add(name)
        self.report_fault("hold_sync", {"request": name}, len(self.sessions))

    def release_sync(self, name: str | None = None) -> int:
        """Stop withholding and deliver the end messages withheld so far.

        Args:
            name: The request, or None for every held one.

        Returns:
            The number of end messages delivered.
        """
        names = set(self.held_syncs) if name is None else {name}
        self.held_syncs -= names
        count = sum(s.release_ends(names) for s in list(self.sessions.values()))
        self.report_fault("release_sync", {} if name is None else {"request": name}, count)
        return count

    def delay_sync(self, name: str, seconds: float) -> None:
        """Delay the end message of one startup request by ``seconds`` (0 removes it).

        Raises:
            ValueError: For a request the relay cannot tell the end of.
        """
        if name not in SYNC_ENDS:
            raise ValueError(f"cannot delay {name!r}; choose from {', '.join(SYNC_ENDS)}")
        self._need_inspection(f"delay_sync {name}")
        if seconds > 0:
            self.sync_delays[name] = seconds
        else:
            self.sync_delays.pop(name, None)
        self.report_fault("delay_sync", {"request": name, "seconds": seconds}, len(self.sessions))

    def set_handshake_delay(self, seconds: float) -> None:
        """Hold the gateway's handshake answer ``seconds`` in sessions opened from now on."""
        self.handshake_delay = max(0.0, seconds)
        self.report_fault("handshake_delay", {"seconds": seconds}, 0)

    def _need_inspection(self, what: str) -> None:
        if not self.inspect:
            logger.warning("%s: the proxy starts reading every frame now; sessions already "
                           "open may have requests it did not see", what)
            self.inspect = True

    def farms(self) -> list[str]:
        """Every data farm the gateway named to an open session, in order seen."""
        seen: dict[str, None] = {}
        for session in self.sessions.values():
            seen.update(dict.fromkeys(session.farms))
        return list(seen)

    async def nightly_reset(self, silence: float = 2.0, restore_code: int = 1101,
                            farms: Sequence[str] | None = None, stall: bool = False) -> None:
        """Play IB's nightly reset: 1100, farms broken, silence, the restore code, farms OK.

        Args:
            silence: Seconds between the loss and the restore.
            restore_code: 1101 (data lost) or 1102 (data kept).
            farms: The farms to break; those the gateway named, else
                :data:`DEFAULT_FARMS`.
            stall: Also hold the gateway's bytes during the silence.
        """
        names = list(farms) if farms is not None else self.farms() or list(DEFAULT_FARMS)
        self.report_fault("nightly_reset", {"silence": silence, "restore_code": restore_code,
                                      "farms": ",".join(names), "stall": stall},
                    len(self.ready_sessions))
        await play_nightly_reset(self, names, silence, restore_code, stall)
