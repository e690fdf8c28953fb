"""IBC's command server, simulated: restart a (possibly wedged) simulator on command.

It answers the way IBC's command server does (IbcAlpha/IBC:
``CommandChannel.java``, ``CommandDispatcher.java``, ``RestartTask.java``):
one command per line, answers ``OK <text>`` or ``ERROR <text>``;
``RESTART`` answers ``OK RESTART in progress`` and closes the channel (a
second one while the first runs: ``ERROR RESTART already in progress``);
``RECONNECTDATA`` and ``RECONNECTACCOUNT`` answer ``OK`` with no text;
``STOP`` answers ``OK Shutting down``; ``EXIT`` answers ``OK Goodbye`` and closes
the channel; anything else answers ``ERROR Command invalid``; blank lines are
skipped.

What the commands do to the simulator: ``RESTART`` drops every client, refuses
connections for ``restart_outage`` seconds and comes back healthy (every
fault cleared: stall, held or delayed sync, slow handshake, broken farms);
``RECONNECTDATA`` marks every farm OK and sends the farm-OK notices;
``RECONNECTACCOUNT`` sends 1102 (connectivity restored, data kept); ``STOP``
stops listening and drops every client (the process stays: ``RESTART`` brings
the gateway back). Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

logger = logging.getLogger(__name__)


class Controlled(Protocol):
    """What IBC's commands act on (:class:`FakeGateway
    <ibkr_connection.simulator.gateway.FakeGateway>` is one). Declared here so
    that this module does not import the gateway that runs it.
    """

    farms: dict[str, bool]

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    async def shut_down(self) -> int: ...

    async def start_listening(self, *, quiet: bool = False) -> None: ...

    def clear_faults(self) -> list[str]: ...

    async def farm_ok(self, farm: str) -> object: ...

    async def send_error(self, code: int) -> object: ...


class IbcCommandServer:
    """IBC's command server in front of a :class:`FakeGateway`.

    Args:
        gateway: the simulator it controls.
        host: interface to bind (127.0.0.1).
        port: TCP port; 0 picks a free one.
        restart_outage: seconds the gateway refuses connections during RESTART.
        silent: accept commands and never answer (a hung IBC, for tests).

    Attributes:
        commands: every command received, in order (upper-cased).
        restarts: how many restarts were carried out.
        on_command: called with each command as it is received (upper-cased),
            before it is carried out; e.g. a demo printing it in its own
            time style.
    """

    def __init__(self, gateway: Controlled, host: str = "127.0.0.1", port: int = 0,
                 *, restart_outage: float = 1.0, silent: bool = False) -> None:
        self.gateway = gateway
        self.host = host
        self.restart_outage = restart_outage
        self.silent = silent
        self.commands: list[str] = []
        self.restarts = 0
        self.on_command: Callable[[str], None] | None = None
        self._port = port
        self._server: asyncio.Server | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._channels: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._port

    @property
    def restarting(self) -> bool:
        """True while a RESTART runs."""
        task = self._restart_task
        return task is not None and not task.done()

    async def start(self) -> None:
        """Listen for commands."""
        self._server = await asyncio.start_server(self._channel, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        # DEBUG: whoever started it says where it listens (the CLI's ready line).
        logger.debug("IBC command server on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Stop listening, end the channels and any restart in progress."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in [*self._channels, self._restart_task]:
            if task is not None and not task.done():
                task.cancel()
        tasks = [t for t in [*self._channels, self._restart_task] if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> IbcCommandServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def _channel(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._channels.add(task)
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                command = raw.decode("utf-8", "replace").strip()
                if not command:
                    continue
                self.commands.append(command.upper())
                logger.info("IBC command server received: %s", command)
                if self.on_command is not None:
                    self.on_command(command.upper())
                if self.silent:
                    continue
                answer, close = await self._dispatch(command.upper())
                writer.write((answer + "\n").encode())
                await writer.drain()
                if close:
                    break
        except (ConnectionError, OSError) as exc:
            logger.debug("IBC channel broke: %r", exc)
        finally:
            writer.close()
            if task is not None:
                self._channels.discard(task)

    async def _dispatch(self, command: str) -> tuple[str, bool]:
        """Return (answer line, close the channel after it)."""
        gateway = self.gateway
        if command == "RESTART":
            if self.restarting:
                return "ERROR RESTART already in progress", True
            self._restart_task = asyncio.ensure_future(self._restart())
            return "OK RESTART in progress", True
        if command == "RECONNECTDATA":
            for farm in list(gateway.farms):
                await gateway.farm_ok(farm)
            return "OK ", False
        if command == "RECONNECTACCOUNT":
            await gateway.send_error(1102)
            return "OK ", False
        if command == "STOP":
            dropped = await gateway.shut_down()
            # IBC's STOP ends the gateway; the simulator's process stays, deaf.
            logger.info("IBC: STOP: the gateway stopped listening (%d connection(s) dropped); "
                        "RESTART through this command server brings it back", dropped)
            return "OK Shutting down", True
        if command == "EXIT":
            return "OK Goodbye", True
        return "ERROR Command invalid", False

    async def _restart(self) -> None:
        gateway = self.gateway
        # One line going down, one coming back; the parts say nothing.
        dropped = await gateway.shut_down()
        # A restarted gateway remembers none of the faults of the last run.
        cleared = gateway.clear_faults()
        logger.info("IBC: restarting the gateway: %d connection(s) dropped, refusing "
                    "connections for %.2fs%s", dropped, self.restart_outage,
                    f", cleared {'; '.join(cleared)}" if cleared else "")
        await asyncio.sleep(self.restart_outage)
        await gateway.start_listening(quiet=True)
        self.restarts += 1
        logger.info("IBC: gateway restarted (%d so far), listening on %s:%d", self.restarts,
                    gateway.host, gateway.port)


__all__ = ["IbcCommandServer"]
