"""Gateway controllers: restart a wedged TWS / IB Gateway when reconnecting cannot help.

A :class:`Controller` is whatever can act on the gateway process itself.
:class:`IBCController` speaks the command server of IBC (IbcAlpha/IBC), which
most headless gateways run under; :class:`CommandController` runs a command of
the user's (e.g. ``docker restart ib-gateway``).

IBC's command server, as IBC's own sources define it (``CommandChannel.java``,
``CommandDispatcher.java``, ``RestartTask.java``):

* plain TCP on ``CommandServerPort`` (off by default, 0; 7462 by convention),
  one command per line: ``RESTART``, ``RECONNECTDATA``, ``RECONNECTACCOUNT``,
  ``STOP``, ``ENABLEAPI`` (TWS only), ``EXIT`` (closes the channel);
* every answer is a line beginning ``OK`` or ``ERROR`` and then a text
  (``OK RESTART in progress``, ``ERROR RESTART already in progress``,
  ``ERROR Command invalid``); lines beginning ``INFO`` may come first (when
  IBC's ``SuppressInfoMessages=no``), and an optional prompt
  (``CommandPrompt``) is written without a line end;
* ``RESTART`` and ``STOP`` close the channel after answering.

Every failure (an ``ERROR`` answer, an unreachable port, a time-out, an answer
that is neither) raises :class:`ControllerError` with what happened, naming the
host and port or the command.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ibkr_connection.errors import ConfigError, ControllerError

logger = logging.getLogger(__name__)

#: IBC's conventional command server port. IBC's own default is 0 (no command
#: server); the config.ini IBC ships (``resources/config.ini``, section "IBC
#: Command Server Settings") suggests ``CommandServerPort=7462``, which is what
#: an IBC set up for commands listens on unless its owner chose otherwise.
IBC_DEFAULT_PORT = 7462

_ANSWER = re.compile(r"\b(OK|ERROR)\b ?(.*)$")


@runtime_checkable
class Controller(Protocol):
    """What the manager needs to act on the gateway process.

    Each method returns once the controller accepted the request (a restart
    itself takes tens of seconds after that) and raises
    :class:`ControllerError` when it did not.
    """

    @property
    def name(self) -> str:
        """A readable name for logs (e.g. ``IBC at 127.0.0.1:7462``)."""
        ...

    async def restart(self) -> str:
        """Restart the gateway (with its login); return the controller's answer."""
        ...

    async def reconnect_data(self) -> str:
        """Ask the gateway to reconnect its data farms (IBC's RECONNECTDATA)."""
        ...

    async def reconnect_account(self) -> str:
        """Ask the gateway to reconnect to its account server (IBC's RECONNECTACCOUNT)."""
        ...


class IBCController:
    """Talks to IBC's command server over TCP, one connection per command.

    Args:
        host: where IBC runs.
        port: IBC's ``CommandServerPort``.
        timeout: seconds for connecting and for the answer.

    Raises:
        ControllerError: from every method, as the module docstring says.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = IBC_DEFAULT_PORT,
                 timeout: float = 10.0) -> None:
        if not 0 < port < 65536:
            raise ConfigError("ibc port", f"must be between 1 and 65535, got {port}")
        self.host = host
        self.port = port
        self.timeout = timeout

    @property
    def name(self) -> str:
        """``IBC at host:port``."""
        return f"IBC at {self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"IBCController(host={self.host!r}, port={self.port})"

    async def restart(self) -> str:
        """Send ``RESTART``: IBC restarts TWS / the Gateway and logs in again."""
        return await self.send("RESTART")

    async def reconnect_data(self) -> str:
        """Send ``RECONNECTDATA`` (the gateway's Ctrl-Alt-F: reconnect the data farms)."""
        return await self.send("RECONNECTDATA")

    async def reconnect_account(self) -> str:
        """Send ``RECONNECTACCOUNT`` (the gateway's Ctrl-Alt-R: reconnect to the account)."""
        return await self.send("RECONNECTACCOUNT")

    async def stop(self) -> str:
        """Send ``STOP``: IBC closes TWS / the Gateway (and itself)."""
        return await self.send("STOP")

    async def send(self, command: str) -> str:
        """Send one command and return the text after ``OK``.

        Raises:
            ControllerError: ``ERROR`` answer (with IBC's text), unreachable
                port, time-out, or an answer that is neither OK nor ERROR.
        """
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ControllerError(
                f"{self.name} is unreachable ({exc!r}); is IBC's CommandServerPort "
                f"set to {self.port}?") from None
        try:
            writer.write(command.encode("ascii") + b"\n")
            await writer.drain()
            return await asyncio.wait_for(self._answer(reader, command), self.timeout)
        except asyncio.TimeoutError:
            raise ControllerError(
                f"{self.name} did not answer {command} within {self.timeout:g}s") from None
        except OSError as exc:
            raise ControllerError(f"{self.name}: the channel broke during {command}: "
                                  f"{exc!r}") from None
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, command: str) -> str:
        seen: list[str] = []
        while True:
            raw = await reader.readline()
            if not raw:
                shown = "; ".join(seen) or "nothing"
                raise ControllerError(
                    f"{self.name} closed the channel without an answer to {command} "
                    f"(it sent: {shown})")
            line = raw.decode("utf-8", "replace").strip()
            if not line or line.startswith("INFO"):
                continue
            match = _ANSWER.search(line)
            if match is None:
                seen.append(line[:80])
                if len(seen) >= 20:
                    raise ControllerError(
                        f"{self.name} answered {command} with garbage: {'; '.join(seen)}")
                continue
            verdict, text = match.group(1), match.group(2).strip()
            if verdict == "ERROR":
                raise ControllerError(f"{self.name} refused {command}: ERROR {text}")
            logger.info("%s: %s -> OK %s", self.name, command, text)
            return text


class CommandController:
    """Runs a command of the user's to act on the gateway (e.g. a container restart).

    Args:
        restart: the argv that restarts the gateway, e.g.
            ``["docker", "restart", "ib-gateway"]``.
        reconnect_data: the argv for a data-farm reconnect, if there is one.
        reconnect_account: the argv for an account reconnect, if there is one.
        timeout: seconds the command may run.

    The command succeeds when it exits with status 0; otherwise
    :class:`ControllerError` carries its status and the end of its stderr.
    """

    def __init__(self, restart: Sequence[str], *, reconnect_data: Sequence[str] | None = None,
                 reconnect_account: Sequence[str] | None = None,
                 timeout: float = 120.0) -> None:
        if not restart:
            raise ConfigError("restart",
                              "needs a command, e.g. ['docker', 'restart', 'ib-gateway']")
        self.restart_argv = list(restart)
        self.reconnect_data_argv = list(reconnect_data) if reconnect_data else None
        self.reconnect_account_argv = list(reconnect_account) if reconnect_account else None
        self.timeout = timeout

    @property
    def name(self) -> str:
        """``command `docker restart ib-gateway```."""
        return f"command `{' '.join(self.restart_argv)}`"

    def __repr__(self) -> str:
        return f"CommandController({self.restart_argv!r})"

    async def restart(self) -> str:
        """Run the restart command."""
        return await self._run(self.restart_argv, "restart")

    async def reconnect_data(self) -> str:
        """Run the data-farm reconnect command, if one was given."""
        if self.reconnect_data_argv is None:
            raise ControllerError(f"{self.name}: no command given for reconnect_data")
        return await self._run(self.reconnect_data_argv, "reconnect_data")

    async def reconnect_account(self) -> str:
        """Run the account reconnect command, if one was given."""
        if self.reconnect_account_argv is None:
            raise ControllerError(f"{self.name}: no command given for reconnect_account")
        return await self._run(self.reconnect_account_argv, "reconnect_account")

    async def _run(self, argv: list[str], what: str) -> str:
        shown = " ".join(argv)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise ControllerError(f"{what}: cannot run `{shown}`: {exc}") from None
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise ControllerError(
                f"{what}: `{shown}` did not finish within {self.timeout:g}s") from None
        if process.returncode != 0:
            tail = err.decode("utf-8", "replace").strip()[-300:]
            raise ControllerError(
                f"{what}: `{shown}` exited with status {process.returncode}: {tail}")
        text = out.decode("utf-8", "replace").strip()
        logger.info("%s: %s -> exit 0 %s", self.name, what, text[-200:])
        return text


__all__ = ["IBC_DEFAULT_PORT", "CommandController", "Controller",
           "IBCController"]
