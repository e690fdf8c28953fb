"""What the connection machine reacts to: plain data, no I/O.

An :class:`Input` is what the asyncio driver (or a test) feeds into
:class:`~ibkr_connection.machine.ConnectionMachine`: a user request, the result
of a connection attempt, a socket event, a timer, or an IB message code already
classified by :mod:`ibkr_connection.codes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class InputKind(str, Enum):
    """Every input the machine declares an outcome for, in every state."""

    def __str__(self) -> str:
        return self.value

    #: The user asked for a connection (``start()`` / ``connect()``).
    CONNECT = "connect"
    #: The user asked to disconnect (``stop()`` / ``disconnect()``).
    DISCONNECT = "disconnect"
    #: The running attempt finished: socket, handshake and startup sync done.
    ATTEMPT_SUCCEEDED = "attempt_succeeded"
    #: The running attempt failed in a way a later attempt may fix.
    ATTEMPT_FAILED = "attempt_failed"
    #: Something retrying cannot fix (bad config, unknown account).
    FATAL_ERROR = "fatal_error"
    #: The API socket closed (ib_insync's ``disconnectedEvent``).
    SOCKET_CLOSED = "socket_closed"
    #: The backoff delay is over: time for the next attempt.
    RETRY_DUE = "retry_due"
    #: IB code 1100: TWS lost its connection to IB; the API socket is still up.
    CONNECTIVITY_LOST = "connectivity_lost"
    #: IB code 1101: restored, but market data and other subscriptions are lost.
    RESTORED_DATA_LOST = "restored_data_lost"
    #: IB code 1102: restored, subscriptions kept.
    RESTORED_DATA_KEPT = "restored_data_kept"
    #: IB codes 2103 / 2105 / 2157: one data farm is broken (the message names it).
    FARM_BROKEN = "farm_broken"
    #: IB codes 2104 / 2106 / 2158: one data farm is OK again (or OK at connect).
    FARM_OK = "farm_ok"
    #: IB code 2110: TWS's own link to its server is broken.
    SERVER_LINK_BROKEN = "server_link_broken"
    #: IB code 1300: the API port was reset; reconnect on the new port.
    PORT_RESET = "port_reset"
    #: IB code 326: our client id is already used by another session.
    CLIENT_ID_IN_USE = "client_id_in_use"
    #: IB codes 502 / 504: the API is not connected.
    NOT_CONNECTED = "not_connected"
    #: The heartbeat probe was not answered in time: a hung gateway.
    HEARTBEAT_MISSED = "heartbeat_missed"
    #: A 1100 has lasted longer than the restore patience.
    RESTORE_TIMEOUT = "restore_timeout"
    #: The bot added a subscription (``subscribe_market_data`` and the rest).
    SUBSCRIBED = "subscribed"
    #: The controller accepted the restart command (IBC answered ``OK``).
    RESTART_SENT = "restart_sent"
    #: The controller refused the restart, was unreachable, timed out or
    #: answered garbage (the message says which).
    RESTART_FAILED = "restart_failed"
    #: After a restart, the gateway accepts connections and answers the API
    #: handshake again.
    GATEWAY_BACK = "gateway_back"
    #: The restarted gateway did not come back within ``restart_wait``.
    RESTART_TIMEOUT = "restart_timeout"
    #: A data farm has been broken for ``farm_reconnect_after``.
    FARM_RECONNECT_DUE = "farm_reconnect_due"
    #: The user stopped the manager (``stop()``, after its disconnect): nothing
    #: connects again.
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Input:
    """One input to the machine, with what caused it.

    Attributes:
        kind: which input this is.
        code: the IB message code behind it, if any.
        message: IB's message text, or a short description of the cause.
        farm: the data farm named by a farm code.
        port: the new port named by a 1300.
        costly: for a failed attempt, whether it cost the gateway an API
            handshake (the backoff then waits longer) rather than a refused
            TCP connect, which costs it next to nothing.
        accounts: for a successful attempt, the accounts the gateway says the
            login manages, in its order (the table chooses one of them, or
            refuses them all). None: not reported (a test's bare input, a
            journal written before the table chose the account): the account
            check counts as passed.
        attempts: for a connect request, the failed attempts after which this
            series gives up (``failed``), if fewer than the policy's
            ``max_attempts``; None: the policy's. A session that comes up
            ends the series: recovery after it follows the policy.
    """

    kind: InputKind
    code: int | None = None
    message: str = ""
    farm: str | None = None
    port: int | None = None
    costly: bool = False
    accounts: tuple[str, ...] | None = None
    attempts: int | None = None

    def to_json(self) -> dict[str, object]:
        """Return the input as a JSON-ready dict (for the journal)."""
        data: dict[str, object] = {"input": self.kind.value}
        if self.code is not None:
            data["code"] = self.code
        if self.message:
            data["message"] = self.message
        if self.farm is not None:
            data["farm"] = self.farm
        if self.port is not None:
            data["port"] = self.port
        if self.costly:
            data["costly"] = True
        if self.accounts is not None:
            data["accounts"] = list(self.accounts)
        if self.attempts is not None:
            data["attempts"] = self.attempts
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Input:
        """Rebuild an input written by :meth:`to_json`."""
        code = data.get("code")
        port = data.get("port")
        farm = data.get("farm")
        accounts = data.get("accounts")
        attempts = data.get("attempts")
        return cls(
            kind=InputKind(str(data["input"])),
            code=int(str(code)) if code is not None else None,
            message=str(data.get("message", "")),
            farm=str(farm) if farm is not None else None,
            port=int(str(port)) if port is not None else None,
            costly=bool(data.get("costly", False)),
            accounts=(tuple(str(a) for a in accounts)
                      if isinstance(accounts, list) else None),
            attempts=int(str(attempts)) if attempts is not None else None,
        )
