"""Connection settings, validated, with a reader for environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ibkr_connection.controller import IBC_DEFAULT_PORT
from ibkr_connection.errors import ConfigError
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy

if TYPE_CHECKING:
    from ibkr_connection.controller import IBCController

AccountFallback = Literal["error", "first"]

#: Every environment variable :meth:`ConnectionConfig.from_env` reads. The seed's
#: :class:`~ibkr_connection.broker.Config` has an attribute of each name, read by
#: the same parser, so a setting means the same thing whichever way it comes.
ENV_VARIABLES = (
    "IBKR_HOST", "IBKR_PORT", "IBKR_CLIENT_ID", "IBKR_FALLBACK_CLIENT_IDS", "IBKR_ACCOUNT",
    "IBKR_ACCOUNT_FALLBACK", "IBKR_READONLY", "IBKR_CONNECT_TIMEOUT",
    "IBKR_HANDSHAKE_TIMEOUT", "IBKR_MAX_ATTEMPTS", "IBKR_IBC_HOST", "IBKR_IBC_PORT",
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _check_port(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer port number, got {value!r}")
    if not 0 < value < 65536:
        raise ConfigError(name, f"must be between 1 and 65535, got {value}")
    return value


#: The highest API client id. TWS reads the client id as a Java ``int``
#: (``EClient.eConnect(String host, int port, int clientId)`` in IB's API), so
#: anything above 2**31-1 cannot reach it intact; and 2**31-1 itself is the
#: API's ``UNSET_INTEGER`` (``ib_insync/util.py``, ``ibapi/common.py``), which
#: TWS does not take as a client id: hadrianl/ibapi issue 45 reports that
#: 2147483647 fails the handshake where 2147483646 succeeds.
MAX_CLIENT_ID = 2**31 - 2


def _check_client_id(name: str, value: object) -> int:
    """Return ``value`` if it is a client id TWS accepts; raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer client id, got {value!r}")
    if not 0 <= value <= MAX_CLIENT_ID:
        raise ConfigError(name, f"must be a client id from 0 to {MAX_CLIENT_ID}, got {value}")
    return value


#: The bounds of ``ConnectionConfig.socket_read_size``: a TWS message can be a
#: few KiB long; past 16 MiB a read buffer is no longer a read size.
MIN_READ_SIZE = 4 * 1024
MAX_READ_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class ConnectionConfig:
    """Where to connect, as whom, and how patiently.

    Attributes:
        host: the gateway's host.
        port: the gateway's API port (IB Gateway paper 4002, live 4001; TWS
            paper 7497, live 7496).
        client_id: the API client id.
        fallback_client_ids: ids to use, in order, when ``client_id`` is
            rejected with 326 (after retrying it once).
        account: the account to use; must be one of the login's managed
            accounts. Empty: the only managed account, see ``account_fallback``.
        account_fallback: with no ``account`` and several managed accounts,
            ``"error"`` fails with a clear error, ``"first"`` takes the first.
        readonly: read-only session. The manager makes ``IB.placeOrder``,
            ``cancelOrder``, ``reqGlobalCancel`` and ``exerciseOptions`` raise
            :class:`~ibkr_connection.errors.OrderRejectedError` on its ``IB``
            object until it is stopped (until the last read-only manager
            on that object is), and ib_insync skips its order sync. (TWS's own
            "Read-Only API" setting is the gateway's guard.)
        connect_timeout: seconds for one attempt (socket, handshake, sync).
        handshake_timeout: seconds the gateway has, once it accepted the
            socket, to answer the API handshake with its server version
            (default 2). A healthy gateway answers within milliseconds (only
            the startup sync after it is slow); a silent one fails the
            attempt as "no handshake", a sign of a wedged gateway, without
            waiting out ``connect_timeout``. Not applied when it is not
            shorter than ``connect_timeout``.
        heartbeat_idle: seconds without any message before a probe is sent.
        heartbeat_timeout: seconds a probe may take before the gateway is
            declared hung.
        policy: backoff, restore patience, reset windows, jitter seed.
        mask_accounts: mask account ids in logs (``DU***567``): the
            manager's own lines, and (with ``quiet_client_logs``) every line
            its ``IB`` object writes, at every level.
        quiet_client_logs: while the manager runs, route the lines its
            ``IB`` object writes through ``<client logger>.managed`` (e.g.
            ``ib_insync.client.managed``), masking account ids (see
            ``mask_accounts``) and logging the client library's own
            per-attempt errors ("API connection failed", "Make sure API port
            on TWS/IBG is open", "Peer closed connection") at INFO and its
            copy of the IB codes the manager logs itself ("Error 1100, reqId
            -1", "Warning 2104, reqId -1") at DEBUG. Only this manager's
            ``IB`` object is affected. False leaves the client's logging
            untouched, account ids included.
        ibc_host: where IBC's command server runs (for restarting a wedged
            gateway); empty: no IBC controller.
        ibc_port: IBC's ``CommandServerPort``; None: no IBC controller. When
            set, :meth:`controller` builds an
            :class:`~ibkr_connection.controller.IBCController` (``watch`` and
            the sync wrapper use it). :meth:`from_env` sets it to 7462 when
            only ``IBKR_IBC_HOST`` is given.
        socket_read_size: the most bytes the client's socket takes in one read
            once a session is up (64 KiB; 4 KiB to 16 MiB). asyncio's socket
            transport reads up to 256 KiB at a time into a new buffer; with
            glibc, once one such buffer has been freed, the later ones come
            from the main heap, which then grows in steps over weeks of
            reads and never shrinks (a month on virtual time: about 1.4 MB
            more RSS; benchmarks/README.md section 10). Below glibc's 128 KiB
            threshold the heap stays flat. None leaves the transport as
            asyncio built it; a transport without asyncio's read size (another
            event loop's) is left alone either way.
    """

    host: str = "127.0.0.1"
    port: int = 4002
    client_id: int = 1
    fallback_client_ids: tuple[int, ...] = ()
    account: str = ""
    account_fallback: AccountFallback = "error"
    readonly: bool = False
    connect_timeout: float = 10.0
    handshake_timeout: float = 2.0
    heartbeat_idle: float = 3.0
    heartbeat_timeout: float = 2.0
    policy: RecoveryPolicy = field(default_factory=RecoveryPolicy)
    mask_accounts: bool = True
    quiet_client_logs: bool = True
    ibc_host: str = "127.0.0.1"
    ibc_port: int | None = None
    socket_read_size: int | None = 64 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfigError("host", "must be a non-empty host name or address")
        _check_port("port", self.port)
        _check_client_id("client_id", self.client_id)
        for fallback in self.fallback_client_ids:
            _check_client_id("fallback_client_ids", fallback)
        if self.account_fallback not in ("error", "first"):
            raise ConfigError("account_fallback", "must be 'error' or 'first'")
        if self.ibc_port is not None:
            _check_port("ibc_port", self.ibc_port)
        if not isinstance(self.ibc_host, str):
            raise ConfigError("ibc_host", f"must be a host name, got {self.ibc_host!r}")
        size = self.socket_read_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or not MIN_READ_SIZE <= size <= MAX_READ_SIZE):
            raise ConfigError("socket_read_size", f"must be a number of bytes from "
                              f"{MIN_READ_SIZE} to {MAX_READ_SIZE}, or None, got {size!r}")
        for name in ("connect_timeout", "handshake_timeout", "heartbeat_idle",
                     "heartbeat_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(name, f"must be a positive number of seconds, got {value!r}")

    def controller(self) -> IBCController | None:
        """Return the IBC controller these settings name, or None without ``ibc_port``."""
        if self.ibc_port is None or not self.ibc_host:
            return None
        from ibkr_connection.controller import IBCController

        return IBCController(host=self.ibc_host, port=self.ibc_port)

    @property
    def client_ids(self) -> tuple[int, ...]:
        """The client id followed by the fallbacks."""
        return (self.client_id, *self.fallback_client_ids)

    def replace(self, **changes: object) -> ConnectionConfig:
        """Return a copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: object) -> ConnectionConfig:
        """Read the settings from environment variables.

        Variables: ``IBKR_HOST``, ``IBKR_PORT``, ``IBKR_CLIENT_ID``,
        ``IBKR_FALLBACK_CLIENT_IDS`` (comma separated), ``IBKR_ACCOUNT``,
        ``IBKR_ACCOUNT_FALLBACK`` (``error`` or ``first``), ``IBKR_READONLY``
        (true/false), ``IBKR_CONNECT_TIMEOUT``, ``IBKR_HANDSHAKE_TIMEOUT``,
        ``IBKR_MAX_ATTEMPTS``
        (empty or ``none`` for no limit), ``IBKR_IBC_HOST`` and
        ``IBKR_IBC_PORT`` (IBC's command server, optional; either one turns
        the IBC controller on: the host defaults to 127.0.0.1, the port to
        IBC's 7462). Unset variables keep the defaults.

        Args:
            environ: the mapping to read (``os.environ`` by default).
            **overrides: fields that take precedence over the environment.

        Raises:
            ConfigError: naming the variable, if a value is invalid.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def text(var: str) -> str | None:
            raw = env.get(var)
            return raw.strip() if raw is not None else None

        def integer(var: str) -> int | None:
            raw = text(var)
            if raw is None:
                return None
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(var, f"must be an integer, got {raw!r}") from None

        if (host := text("IBKR_HOST")) is not None:
            if not host:
                raise ConfigError("IBKR_HOST", "must not be empty")
            values["host"] = host
        if (port := integer("IBKR_PORT")) is not None:
            values["port"] = _check_port("IBKR_PORT", port)
        if (client_id := integer("IBKR_CLIENT_ID")) is not None:
            values["client_id"] = _check_client_id("IBKR_CLIENT_ID", client_id)
        if (fallbacks := text("IBKR_FALLBACK_CLIENT_IDS")) is not None:
            ids = []
            for part in filter(None, (p.strip() for p in fallbacks.split(","))):
                try:
                    ids.append(_check_client_id("IBKR_FALLBACK_CLIENT_IDS", int(part)))
                except ValueError:
                    raise ConfigError("IBKR_FALLBACK_CLIENT_IDS",
                                      f"must be comma separated integers, got {fallbacks!r}"
                                      ) from None
            values["fallback_client_ids"] = tuple(ids)
        if (account := text("IBKR_ACCOUNT")) is not None:
            values["account"] = account
        if (fallback := text("IBKR_ACCOUNT_FALLBACK")) is not None:
            if fallback not in ("error", "first"):
                raise ConfigError("IBKR_ACCOUNT_FALLBACK",
                                  f"must be error or first, got {fallback!r}")
            values["account_fallback"] = fallback
        if (readonly := text("IBKR_READONLY")) is not None:
            if readonly.lower() not in _TRUE | _FALSE:
                raise ConfigError("IBKR_READONLY", f"must be true or false, got {readonly!r}")
            values["readonly"] = readonly.lower() in _TRUE
        for var, name in (("IBKR_CONNECT_TIMEOUT", "connect_timeout"),
                          ("IBKR_HANDSHAKE_TIMEOUT", "handshake_timeout")):
            if (timeout := text(var)) is not None:
                try:
                    seconds = float(timeout)
                except ValueError:
                    raise ConfigError(var, f"must be a number of seconds, got {timeout!r}"
                                      ) from None
                if seconds <= 0:
                    raise ConfigError(var, f"must be positive, got {timeout!r}")
                values[name] = seconds
        if (ibc_host := text("IBKR_IBC_HOST")) is not None:
            if not ibc_host:
                raise ConfigError("IBKR_IBC_HOST", "must not be empty")
            values["ibc_host"] = ibc_host
            # A host alone asks for IBC: at the port IBC's own config.ini suggests
            # (IBKR_IBC_PORT, read next, replaces it), never silently none.
            values["ibc_port"] = IBC_DEFAULT_PORT
        if (ibc_port := integer("IBKR_IBC_PORT")) is not None:
            values["ibc_port"] = _check_port("IBKR_IBC_PORT", ibc_port)
        if (attempts := text("IBKR_MAX_ATTEMPTS")) is not None:
            if attempts.lower() in ("", "none"):
                max_attempts = None
            else:
                max_attempts = integer("IBKR_MAX_ATTEMPTS")
                if max_attempts is not None and max_attempts < 1:
                    raise ConfigError("IBKR_MAX_ATTEMPTS", "must be at least 1, or none")
            base = overrides.get("policy", RecoveryPolicy())
            assert isinstance(base, RecoveryPolicy)
            values["policy"] = replace(
                base, backoff=replace(base.backoff, max_attempts=max_attempts))
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def mask_account(account: str) -> str:
    """Mask an account id for logs: ``DU1234567`` becomes ``DU***567``."""
    if len(account) <= 5:
        return "***"
    head = 2 if account[:2].isalpha() else 1
    return f"{account[:head]}***{account[-3:]}"


__all__ = ["AccountFallback", "BackoffPolicy", "ConnectionConfig", "RecoveryPolicy",
           "mask_account"]
