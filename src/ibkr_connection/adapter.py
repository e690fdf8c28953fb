"""The one module that knows ib_insync's (and ib_async's) internals.

Everything else talks to the ``IB`` object through these functions, so a change
in the client library is a change here. ``ib_async`` stands in for
``ib_insync`` without any other change.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ibkr_connection.config import mask_account
from ibkr_connection.errors import (
    HandshakeTimeoutError,
    OrderRejectedError,
    SyncIncompleteError,
    UsageError,
)

logger = logging.getLogger(__name__)


def new_ib() -> Any:
    """Return a new ``ib_insync.IB`` (the library's default client)."""
    from ib_insync import IB

    return IB()  # type: ignore[no-untyped-call]


def backend_of(obj: Any) -> str:
    """Return the top-level package an object's class comes from (``ib_insync``, ...)."""
    return type(obj).__module__.split(".")[0]


def check_same_backend(ib: Any, *objects: Any) -> None:
    """Raise :class:`UsageError` if an object comes from another client library than ``ib``.

    ib_insync's encoder writes an ib_async ``Contract`` (and vice versa) as
    garbage fields that the gateway rejects, so the mix is refused here, with
    the reason, before anything is sent.
    """
    backend = backend_of(ib)
    if backend not in ("ib_insync", "ib_async"):
        return
    for obj in objects:
        other = backend_of(obj)
        if other in ("ib_insync", "ib_async") and other != backend:
            raise UsageError(
                f"{type(obj).__name__} comes from {other} but the IB object is {backend}'s: "
                f"import contracts and orders from {backend}, or pass {other}'s IB()"
            )


def stock(symbol: str, exchange: str = "SMART", currency: str = "USD") -> Any:
    """Return an ib_insync ``Stock`` contract."""
    from ib_insync import Stock

    return Stock(symbol, exchange, currency)


def market_order(action: str, quantity: float, order_ref: str = "") -> Any:
    """Return an ib_insync ``MarketOrder``."""
    from ib_insync import MarketOrder

    return MarketOrder(action, quantity, orderRef=order_ref)


def needs_qualified_contract(ib: Any, contract: Any) -> bool:
    """Return True if ``contract`` is to be qualified through the gateway before streaming.

    On both backends, a contract without a ``conId`` (a combo, ``BAG``, has
    none of its own): ib_async keys its tickers by the contract's hash, which
    needs one (``reqMktData`` raises ``ValueError: ... no 'conId'``
    otherwise); ib_insync takes any contract, but a ``reqMktData`` for one the
    gateway does not know is answered only by an error 200 on its request id,
    which nothing waits for, so ``wait_ready()`` would return as if all were
    well. Qualifying first turns an unknown contract into a failed handle on
    both. Qualified in place, the contract has its ``conId`` on every later
    session: one round trip per subscribe, none per reconnect.
    """
    return not (getattr(contract, "conId", 0) or getattr(contract, "secType", "") == "BAG")


async def qualify_contract(ib: Any, contract: Any) -> bool:
    """Fill in ``contract``'s ``conId`` (and the rest) from the gateway, in place.

    Returns:
        True if the gateway knew exactly one matching contract.

    Raises:
        ConnectionError: the session went away during the request.
    """
    await ib.qualifyContractsAsync(contract)
    return bool(getattr(contract, "conId", 0))


class SyncTimeoutCatcher(logging.Handler):
    """Catches ib_insync's "<name> request timed out" log lines during a connect.

    ib_insync 0.9.86 only logs a startup request that timed out and reports
    the connection as up anyway; we refuse to call such a session connected.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.timed_out: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.endswith("request timed out"):
            self.timed_out.append(message)


_SUPPORTS: dict[tuple[type, str, str], bool] = {}


def _supports(cls: type, method: str, parameter: str) -> bool:
    """Return True if ``cls.method`` takes ``parameter`` (cached per class)."""
    key = (cls, method, parameter)
    if key not in _SUPPORTS:
        try:
            found = parameter in inspect.signature(getattr(cls, method)).parameters
        except (AttributeError, TypeError, ValueError):
            found = False
        _SUPPORTS[key] = found
    return _SUPPORTS[key]


def watch_sync_timeouts(ib: Any, catcher: SyncTimeoutCatcher) -> Callable[[], None]:
    """Attach ``catcher`` to ``ib``'s logger; return the undo.

    One catcher serves every attempt of a manager: :func:`connect_session`
    clears it when the attempt starts and reads it when the connect returns.
    A cancelled attempt leaves nothing to remove (it once removed the catcher
    of the attempt that replaced it), and no handler is built per attempt.
    """
    ib_logger = getattr(ib, "_logger", None) or logging.getLogger(type(ib).__module__)
    if isinstance(ib_logger, logging.LoggerAdapter):
        ib_logger = ib_logger.logger  # another manager's view of the IB's logger
    ib_logger.addHandler(catcher)

    def undo() -> None:
        ib_logger.removeHandler(catcher)

    return undo


class SocketWatch:
    """Relays the client's "socket closed" to the attempt that is connecting, if any.

    One per manager, connected to the client's connection once
    (:func:`watch_socket`), not per attempt: :func:`connect_session` only sets
    and clears :attr:`on_close` around its ``connectAsync``.

    Attributes:
        on_close: the running attempt's handler, or None between attempts.
    """

    def __init__(self) -> None:
        self.on_close: Callable[[str], None] | None = None

    def closed(self, message: str = "") -> None:
        """The client's ``conn.disconnected`` handler."""
        on_close = self.on_close
        if on_close is not None:
            on_close(message)


def watch_socket(ib: Any, watch: SocketWatch) -> Callable[[], None] | None:
    """Connect ``watch`` to ``ib``'s socket; return the undo (None: no socket to watch).

    The client builds its connection object once (``Client.__init__`` in
    ib_insync 0.9.86 and ib_async 2.1) and reuses it for every connect.
    """
    conn = getattr(getattr(ib, "client", None), "conn", None)
    if conn is None:
        return None
    conn.disconnected += watch.closed

    def undo() -> None:
        conn.disconnected -= watch.closed

    return undo


async def connect_session(
    ib: Any, *, host: str, port: int, client_id: int, timeout: float,
    readonly: bool, account: str, catcher: SyncTimeoutCatcher,
    handshake_timeout: float | None = None, watch: SocketWatch | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Connect ``ib`` and complete the startup sync, or raise.

    A socket of the last session that is still closing is waited for first
    (:func:`wait_transport_closed`).

    Args:
        timeout: seconds for the whole attempt (socket, handshake, sync).
        catcher: the catcher :func:`watch_sync_timeouts` attached to ``ib``.
        handshake_timeout: seconds the gateway has, once the socket is open,
            to answer the handshake with its server version; None: only
            ``timeout`` applies. Checked every ``handshake_timeout`` seconds
            from the start, so a socket that opens late gets up to twice that.
        watch: the manager's :class:`SocketWatch` (see :func:`watch_socket`);
            None: a handler is connected to the socket for this attempt only.
        loop: the running loop, when the caller has it at hand (CPython
            3.10-3.11 ask the kernel for the process id on every look-up of
            the running loop).

    Raises:
        HandshakeTimeoutError: the socket opened but no server version came.
        SyncIncompleteError: a startup request timed out.
        TimeoutError: the handshake or the executions request timed out.
        ConnectionRefusedError / OSError: the TCP connect failed.
        ConnectionError: the socket broke during the sync.
    """
    conn = ib.client.conn
    if getattr(conn, "transport", None) is not None:
        # The last session's socket is still closing (transport_open).
        await wait_transport_closed(ib)
    kwargs: dict[str, Any] = {
        "host": host, "port": port, "clientId": client_id, "timeout": timeout,
        "readonly": readonly, "account": account,
    }
    # _supports' cache read in place: a connect's path calls no function for it.
    raises = _SUPPORTS.get((type(ib), "connectAsync", "raiseSyncErrors"))
    if raises is None:
        raises = _supports(type(ib), "connectAsync", "raiseSyncErrors")
    if raises:
        kwargs["raiseSyncErrors"] = True  # ib_async raises on its own
    catcher.timed_out.clear()
    # ib_insync notices a socket closed by the gateway before the API is ready
    # (e.g. right after the handshake) only when its connect timeout expires:
    # watch the socket ourselves and cut the connect short at once.
    if loop is None:
        loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)
    closed: list[str] = []

    def on_closed(message: str = "") -> None:
        if not closed and task is not None:
            closed.append(message)
            task.cancel()

    # A wedged gateway accepts the socket and never answers: without a
    # deadline of its own, the handshake waits out the whole connect timeout.
    silent: list[float] = []
    timer: asyncio.TimerHandle | None = None

    def check_handshake(limit: float) -> None:
        nonlocal timer
        timer = None
        if task is None or task.done() or ib.client.serverVersion() or closed:
            return
        if getattr(conn, "transport", None) is None:
            # The socket is not open yet: that is the connect timeout's business.
            timer = loop.call_later(limit, check_handshake, limit)
            return
        silent.append(limit)
        task.cancel()

    if handshake_timeout is not None and handshake_timeout < timeout:
        timer = loop.call_later(handshake_timeout, check_handshake, handshake_timeout)
    if watch is not None:
        watch.on_close = on_closed
    else:
        conn.disconnected += on_closed
    try:
        await ib.connectAsync(**kwargs)
    except asyncio.CancelledError:
        if silent:
            raise HandshakeTimeoutError(
                f"no handshake within {silent[0]:g}s: the gateway accepted the socket "
                "but did not send its server version") from None
        if not closed:
            raise
        raise ConnectionError(
            "the gateway closed the socket during the handshake"
            + (f": {closed[0]}" if closed[0] else "")
        ) from None
    finally:
        if timer is not None:
            timer.cancel()
        if watch is None:
            conn.disconnected -= on_closed
        elif watch.on_close is on_closed:
            # Not the handler of an attempt that replaced this cancelled one.
            watch.on_close = None
    if catcher.timed_out:
        safe_disconnect(ib)
        raise SyncIncompleteError("; ".join(catcher.timed_out))


def session_ready(ib: Any, read_size: int | None) -> tuple[int, tuple[str, ...]]:
    """What a session that just came up needs at once, in one call.

    Limits the socket's reads to ``read_size`` (None: left as asyncio has it;
    see :func:`limit_socket_reads`) and returns the client's next request id
    (:func:`next_request_id`) and the accounts the login manages
    (:func:`managed_accounts`). One function rather than three: every connect
    runs it, and each function it would call is one more met cold.
    """
    if read_size is not None:
        limit_socket_reads(ib, read_size)
    return int(getattr(ib.client, "_reqIdSeq", 0)), tuple(ib.managedAccounts())


def limit_socket_reads(ib: Any, size: int) -> bool:
    """Make ``ib``'s socket read at most ``size`` bytes at a time; True if it could.

    asyncio's socket transport reads into a new buffer of its ``max_size``
    (256 KiB in CPython 3.10-3.13, ``selector_events._SelectorSocketTransport``)
    and shrinks it to what came. With glibc a block that large is mapped on
    its own until one is freed; after that glibc raises its threshold above
    it, and every later read's buffer is carved from the main heap, which
    grows in steps over weeks and is not given back (benchmarks/README.md,
    section 10). The attribute is the transport's own, not API: a transport
    without an integer ``max_size`` (another loop's) is left as it is.
    """
    transport = getattr(getattr(getattr(ib, "client", None), "conn", None), "transport", None)
    current = getattr(transport, "max_size", None)
    if transport is None or isinstance(current, bool) or not isinstance(current, int):
        return False
    transport.max_size = size
    return True


def safe_disconnect(ib: Any) -> None:
    """Disconnect ``ib`` whatever state its socket is in.

    ``IB.disconnect()`` raises ``ConnectionError`` after the handshake but
    before the API is ready, and ``OSError`` when the peer already reset the
    socket; both mean the socket is going away, which is what we want.
    """
    try:
        ib.disconnect()
    except (ConnectionError, OSError) as exc:
        logger.debug("disconnect raised %r; closing the transport directly", exc)
    conn = getattr(ib.client, "conn", None)
    transport = getattr(conn, "transport", None)
    if transport is not None and not transport.is_closing():
        # IB.disconnect() does nothing while the handshake is still running.
        transport.close()


def transport_open(ib: Any) -> bool:
    """Return True while ``ib``'s socket (open or still closing) exists."""
    return getattr(getattr(ib.client, "conn", None), "transport", None) is not None


async def wait_transport_closed(ib: Any, timeout: float = 1.0) -> None:
    """Wait until the previous socket is really closed (ib_insync issue 376).

    Reusing the client id while the old socket is still closing meets a 326.
    """
    conn = getattr(ib.client, "conn", None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while getattr(conn, "transport", None) is not None and loop.time() < deadline:
        await asyncio.sleep(0.001)


def received_messages(ib: Any) -> int:
    """Return how many messages the client has received on this socket."""
    return int(getattr(ib.client, "_numMsgRecv", 0))


def next_request_id(ib: Any) -> int:
    """Return the next request / order id the client would hand out."""
    return int(getattr(ib.client, "_reqIdSeq", 0))


def watch_request_ids(ib: Any, on_reset: Callable[[int], None]) -> Callable[[], None]:
    """Call ``on_reset(next_id)`` with the client's id counter just before it is zeroed.

    ib_insync and ib_async zero the request / order id counter in
    ``Client.reset()``, which a dropped socket runs before ``disconnectedEvent``
    fires: sampling the counter from that event (or on a timer) misses the ids
    drawn last. The hook shadows ``reset`` on this client only (an instance
    attribute), so nothing else changes and nothing on the hot path pays.

    Returns:
        The undo, which puts the client's own ``reset`` back.
    """
    client = ib.client
    original = client.reset

    def reset() -> None:
        on_reset(int(getattr(client, "_reqIdSeq", 0)))
        original()

    client.reset = reset

    def undo() -> None:
        if vars(client).get("reset") is reset:
            del client.reset

    return undo


def forget_trades(ib: Any, trades: list[Any]) -> None:
    """Drop ``trades`` from the client's own record of orders.

    ib_insync 0.9.86 resets its trades when the gateway closes the socket, but
    not when it closes the socket itself (``IB.disconnect()`` resets the client
    first, so the wrapper's ``connectionClosed`` is skipped). A trade of the
    ended session would then stand in the next session's ``ib.trades()`` as if
    the gateway had listed it, and the next startup sync would update it in
    place (or, for a completed order, skip it). Dropping the uncertain ones
    makes the next sync rebuild them from the gateway's word alone, as after a
    drop. (ib_async resets its wrapper in both cases.)
    """
    wrapper = getattr(ib, "wrapper", None)
    if wrapper is None or not trades:
        return
    doomed = {id(trade) for trade in trades}
    for table in (wrapper.trades, wrapper.permId2Trade):
        for key in [k for k, trade in table.items() if id(trade) in doomed]:
            del table[key]


def raise_request_id(ib: Any, minimum: int) -> None:
    """Make the client's next request / order id at least ``minimum``."""
    ib.client.updateReqId(minimum)


def managed_accounts(ib: Any) -> list[str]:
    """Return the accounts the gateway said this login manages."""
    return list(ib.managedAccounts())


def request_account_updates(ib: Any, account: str) -> None:
    """Subscribe to account and portfolio updates for ``account`` (no waiting)."""
    ib.client.reqAccountUpdates(True, account)


#: The client's per-attempt error lines, which the manager's transitions say better.
_ATTEMPT_NOISE = ("API connection failed", "Make sure API port on TWS/IBG is open",
                  "Peer closed connection")
#: The client's copy of an IB message: ``Error 1100, reqId -1: ...`` (ib_insync and
#: ib_async log codes 2100-2199 and a few others as ``Warning``, at INFO).
_CODE_LINE = re.compile(r"(?:Error|Warning) (\d+), reqId (-?\d+):")
#: What an IB account id looks like: one or two capital letters and digits
#: (``U1234567``, paper ``DU1234567``, advisor ``F1234567`` / ``DF1234567``), as a
#: word of its own. It catches an account before the client has learnt it (the
#: raw ``managedAccounts`` message itself, logged at DEBUG as ``<<< 15,1,DU...``).
_ACCOUNT_SHAPE = r"[A-Z]{1,2}\d{5,}"
#: A digit: a text without one names no account.
_DIGIT = re.compile(r"\d")
#: Where a match may start and end: not inside a longer word (``DU1`` in ``DU12``).
_WORD = r"(?<![A-Za-z0-9])(?:{})(?![A-Za-z0-9])"
#: The attributes holding a client's loggers, on the IB, its client, wrapper and decoder.
_LOGGER_ATTRIBUTES = ("_logger", "logger")
#: The record attribute carrying a managed client's :class:`_ClientLogPolicy`.
_POLICY_ATTRIBUTE = "ibkr_connection_client_logs"


@dataclass
class _ClientLogPolicy:
    """How one managed ``IB`` object's log lines are treated (see :class:`_ManagedClientLogs`).

    Attributes:
        known_code: True for the IB codes the manager logs itself.
        accounts: the accounts the client knows now; None: no masking.
        learnt: every account seen so far (a closed session's lines may
            still name its accounts).
    """

    known_code: Callable[[int], bool]
    accounts: Callable[[], list[str]] | None
    learnt: set[str] = field(default_factory=set)
    pattern: tuple[frozenset[str], re.Pattern[str]] | None = None

    def mask(self, message: str) -> str:
        """Return ``message`` with every account id (known, or shaped like one) masked."""
        assert self.accounts is not None
        self.learnt.update(a for a in self.accounts() if a)
        key = frozenset(self.learnt)
        if self.pattern is None or self.pattern[0] != key:
            names = sorted(key, key=len, reverse=True)  # the longest first
            alternatives = "|".join([*map(re.escape, names), _ACCOUNT_SHAPE])
            self.pattern = (key, re.compile(_WORD.format(alternatives)))
        return self.pattern[1].sub(lambda m: mask_account(m.group(0)), message)


if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class _ManagedLogger(_LoggerAdapter):
    """A managed client's logger: ``<logger>.managed``, each record stamped with its policy.

    The policy travels on the record (an ``extra`` attribute), so the one
    filter on the shared ``.managed`` logger treats every ``IB`` object by
    its own manager's settings, with no registry to leak.
    """

    def __init__(self, logger: logging.Logger, policy: _ClientLogPolicy) -> None:
        super().__init__(logger, {_POLICY_ATTRIBUTE: policy})
        # The client asks isEnabledFor on every socket read and send, and logs
        # at INFO per order status, open order, position and execution: those
        # calls go straight to the logger, so while the level is off they cost
        # what an unmanaged client's do (an adapter adds two or three Python
        # calls to each). The policy still rides on the record as ``extra``;
        # ib_insync 0.9.86 and ib_async 2.x pass no ``extra`` of their own.
        self.isEnabledFor = logger.isEnabledFor  # type: ignore[method-assign]
        self.debug = partial(logger.debug, extra=self.extra)  # type: ignore[method-assign]
        self.info = partial(logger.info, extra=self.extra)  # type: ignore[method-assign]

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        # A refused attempt writes two of these (ERROR), which the filter
        # demotes to INFO and drops when INFO is off: a record made, its caller
        # found and its text matched, ~45 us each, for nothing. A day's wait
        # for a weekly login is ~41,000 attempts (issue 21's month). With INFO
        # off the same drop happens here, before a record is made; with INFO on,
        # the record goes to the filter as before.
        if (level >= logging.WARNING and isinstance(msg, str) and msg.startswith(_ATTEMPT_NOISE)
                and not self.logger.isEnabledFor(logging.INFO)):
            return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return msg, kwargs


class _ManagedClientLogs(logging.Filter):
    """Masks account ids in, and demotes, what a managed client logs.

    One filter sits on each ``<client logger>.managed`` logger; each record a
    managed ``IB`` object writes there carries its manager's
    :class:`_ClientLogPolicy`. With masking on, the account ids in the
    message (the known ones, and anything shaped like one) are replaced by
    :func:`~ibkr_connection.config.mask_account`'s mask, at every level. Then
    what the manager reports itself is demoted: the per-attempt errors to
    INFO, the copy of an IB code the manager logs (a request-less one,
    ``reqId -1``) to DEBUG, whatever level the client gave it. A demoted
    record is dropped if its logger is not enabled for the new level; nothing
    else is ever dropped, and a record without a policy passes untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        policy = getattr(record, _POLICY_ATTRIBUTE, None)
        if not isinstance(policy, _ClientLogPolicy):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed logging call: the handler reports it, not us
            return True
        if policy.accounts is not None:
            masked = policy.mask(message)
            if masked != message:
                record.msg, record.args, message = masked, None, masked
        level: int | None = None
        if record.levelno >= logging.WARNING and message.startswith(_ATTEMPT_NOISE):
            level = logging.INFO
        elif record.levelno > logging.DEBUG:
            match = _CODE_LINE.match(message)
            if match and int(match.group(2)) < 0 and policy.known_code(int(match.group(1))):
                level = logging.DEBUG
        if level is None:
            return True
        record.levelno = level
        record.levelname = logging.getLevelName(level)
        return logging.getLogger(record.name).isEnabledFor(level)


def _accounts_of(ib: Any) -> Callable[[], list[str]]:
    """The accounts ``ib`` manages, read when called (a weak reference: a manager never
    stopped must not keep its IB alive)."""
    alive = weakref.ref(ib)

    def accounts() -> list[str]:
        target = alive()
        return managed_accounts(target) if target is not None else []

    return accounts


def account_masker(ib: Any) -> Callable[[str], str]:
    """Return a function masking the account ids in a text as ``ib``'s own log lines are.

    The same masking as :func:`manage_client_logs` (the accounts ``ib`` manages,
    and anything shaped like an account id), for the manager's lines quoting IB's
    message text, which may name an account (e.g. an order rejection's "account
    DU...").
    """
    mask = _ClientLogPolicy(lambda code: False, _accounts_of(ib)).mask

    def masked(text: str) -> str:
        # Every IB account id has digits; the farm notices of each connect have
        # none: they skip the masking's work (a few microseconds each).
        return mask(text) if _DIGIT.search(text) else text

    return masked


def manage_client_logs(ib: Any, known_code: Callable[[int], bool], *,
                       mask_accounts: bool = True) -> Callable[[], None]:
    """Route ``ib``'s own log lines through ``<logger>.managed``, masked and demoted.

    ib_insync and ib_async keep their loggers as instance attributes
    (``_logger`` on the ``IB``, its client and its wrapper, ``logger`` on the
    client's decoder); only this object's are swapped, for a view of a child
    logger that propagates to the original (so its handlers and levels still
    apply). The application's logging configuration is never changed.

    Args:
        ib: the managed ``IB`` object.
        known_code: True for the IB codes the manager logs itself.
        mask_accounts: mask the account ids in every line (see
            :class:`_ManagedClientLogs`).

    Returns:
        The undo, which puts the original loggers back.
    """
    policy = _ClientLogPolicy(known_code, _accounts_of(ib) if mask_accounts else None)
    swapped: list[tuple[Any, str, logging.Logger, _ManagedLogger]] = []
    client = getattr(ib, "client", None)
    owners: tuple[Any, ...] = (ib, client, getattr(ib, "wrapper", None),
                               getattr(client, "decoder", None))
    for owner in owners:
        for attribute in _LOGGER_ATTRIBUTES:
            original = getattr(owner, attribute, None)
            if isinstance(original, logging.Logger):
                break
        else:
            continue  # no logger, or another manager's view of it already
        managed = logging.getLogger(original.name + ".managed")
        if not any(isinstance(f, _ManagedClientLogs) for f in managed.filters):
            managed.addFilter(_ManagedClientLogs())
        view = _ManagedLogger(managed, policy)
        setattr(owner, attribute, view)
        swapped.append((owner, attribute, original, view))

    def undo() -> None:
        for owner, attribute, original, view in swapped:
            if getattr(owner, attribute, None) is view:
                setattr(owner, attribute, original)
        swapped.clear()

    return undo


#: The ``IB`` methods that send orders or change them at the gateway.
ORDER_METHODS = ("placeOrder", "cancelOrder", "reqGlobalCancel", "exerciseOptions")


#: Where the guard's bookkeeping lives on a guarded ``IB`` object.
_GUARD_ATTRIBUTE = "_ibkr_connection_order_guard"


class _OrderGuard:
    """How many read-only managers hold an ``IB``, and what the guards shadowed."""

    def __init__(self, saved: dict[str, Any]) -> None:
        self.owners = 0
        self.saved = saved


def refuse_orders(ib: Any, why: str) -> Callable[[], None]:
    """Make ``ib``'s order methods raise :class:`OrderRejectedError`; return the undo.

    TWS enforces its own "Read-Only API" setting, and ib_insync's ``readonly``
    only skips the open-orders sync; this makes the library refuse too. The
    guards are instance attributes shadowing the class's methods, so nothing
    else about the client changes. They sit on the ``IB`` object: while any
    holder has not called its undo, every order through that object is
    refused. The last undo puts back whatever the object had before (its class
    methods, or instance attributes the application had set). Each undo
    counts once.
    """
    guard: _OrderGuard | None = vars(ib).get(_GUARD_ATTRIBUTE)
    if guard is None:
        guard = _OrderGuard({name: vars(ib)[name] for name in ORDER_METHODS if name in vars(ib)})
        for name in ORDER_METHODS:
            setattr(ib, name, _refusal(name, why))
        setattr(ib, _GUARD_ATTRIBUTE, guard)
    guard.owners += 1
    undone = False

    def undo() -> None:
        nonlocal undone
        if undone:
            return
        undone = True
        assert guard is not None
        guard.owners -= 1
        if guard.owners > 0:
            return
        vars(ib).pop(_GUARD_ATTRIBUTE, None)
        for name in ORDER_METHODS:
            if name in guard.saved:
                setattr(ib, name, guard.saved[name])
            else:
                vars(ib).pop(name, None)

    return undo


def _refusal(name: str, why: str) -> Callable[..., None]:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OrderRejectedError(f"IB.{name} refused: {why}")

    refuse.__name__ = name
    return refuse
