"""The project's exceptions.

Every exception raised on purpose by ibkr-connection derives from
:class:`IBKRConnectionError`. Caller misuse is kept apart from failures of the
gateway, so a bot can tell "my code is wrong" from "the gateway is down"::

    IBKRConnectionError
    ├── UsageError                 the caller used the library wrongly
    │   ├── ConfigError            a configuration value is invalid (names the field)
    │   └── ManagerStoppedError    the manager was stopped and cannot be reused
    ├── GatewayError               TWS / IB Gateway did not give us a usable session
    │   ├── ConnectFailedError     retries exhausted (retryable failures only)
    │   ├── FatalConnectError      a failure retrying cannot fix (e.g. unknown account)
    │   │   └── AccountError       the configured account is not managed by this login
    │   └── ControllerError        a controller (IBC, a command) could not act on the gateway
    ├── OrderRejectedError         the library refused to send an order (read-only,
    │                              or the connection is not usable)
    ├── SubscriptionError          a subscription could not be issued (e.g. a
    │                              contract the gateway does not know)
    ├── JournalError               a journal cannot be replayed (names the line)
    └── ReentrantHandleError       internal: the machine was fed while it was
                                   handling an input (a bug of the shell)

Two more are raised inside a connection attempt and classified by
:data:`ibkr_connection.codes.FAILURES` (they never reach the bot): they extend
the built-in errors the client library raises for the same events, so that a
row for ``TimeoutError`` or ``ConnectionError`` still matches them::

    TimeoutError -> HandshakeTimeoutError   no API handshake within handshake_timeout
    ConnectionError -> SyncIncompleteError  the startup sync did not complete
"""

from __future__ import annotations


class IBKRConnectionError(Exception):
    """Base class of every exception raised by ibkr-connection."""


class UsageError(IBKRConnectionError):
    """The caller used the library in a way it does not support."""


class ConfigError(UsageError, ValueError):
    """A configuration value is invalid.

    Attributes:
        field: the name of the offending field or environment variable.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ManagerStoppedError(UsageError):
    """The connection manager was stopped; create a new one to connect again."""


class GatewayError(IBKRConnectionError):
    """The gateway did not give us a usable API session."""


class ConnectFailedError(GatewayError):
    """Every allowed connection attempt failed with a retryable error."""


class FatalConnectError(GatewayError):
    """The connection failed in a way that retrying cannot fix."""


class AccountError(FatalConnectError):
    """The configured account is not among the login's managed accounts."""


class ControllerError(GatewayError):
    """A controller could not act on the gateway (refused, unreachable, timed out, garbage)."""


class OrderRejectedError(IBKRConnectionError):
    """The library refused to send an order or a cancel to the gateway."""


class SubscriptionError(IBKRConnectionError):
    """A subscription could not be issued (e.g. a contract that does not qualify).

    The handle keeps it as ``handle.error``; ``handle.errorEvent`` and the
    manager's ``subscriptionFailedEvent`` fire with it.
    """


class JournalError(IBKRConnectionError, ValueError):
    """A journal cannot be replayed: a line is not a record, or none is a header.

    Attributes:
        line: the offending line's number (from 1), or None for the file as a whole.
    """

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


class ReentrantHandleError(IBKRConnectionError, RuntimeError):
    """The machine's ``handle`` was entered while another ``handle`` was on the stack.

    An internal error, never the caller's or the gateway's: the shell must
    queue an input that arises while it carries out a step's effects and feed
    it after the step.
    """


class SyncIncompleteError(ConnectionError):
    """The startup sync did not complete (a request timed out)."""


class HandshakeTimeoutError(TimeoutError):
    """The gateway accepted the socket but did not answer the API handshake in time.

    A healthy gateway sends its server version within milliseconds; only the
    startup sync that follows is slow. Silence here is a sign of a wedged
    gateway, not of a slow one.
    """
