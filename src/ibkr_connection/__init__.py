"""ibkr-connection: keep a bot's link to TWS / IB Gateway alive, as a state machine.

What a bot imports from here, by what it is for::

    # keep one IB connected (asyncio)
    ConnectionManager      start()/stop(), wait_for(), subscribe_*(), stateChangeEvent, transcript
    ConnectionConfig       where and how to connect; ConnectionConfig.from_env() reads IBKR_*
    ConnectionState        the states; USABLE_STATES: those in which requests and orders go out
    Transition             one change of state, as in stateChangeEvent and the transcript
    RecoveryPolicy, BackoffPolicy, ResetWindow       how and when to retry

    # restart a wedged gateway when reconnecting cannot help (ConnectionManager(controller=...))
    Controller             the protocol: restart(), reconnect_data(), reconnect_account()
    IBCController          IBC's command server (RESTART, RECONNECTDATA, RECONNECTACCOUNT)
    CommandController      a command of yours, e.g. ["docker", "restart", "ib-gateway"]

    # requests re-issued after every reconnect (and after a 1101)
    Subscription, MarketDataSubscription, AccountUpdatesSubscription, PnLSubscription,
    CallableSubscription

    # a sync bot: the seed's wrapper, kept as it was (a contract)
    IBKRIBInsyncApi, Config

    # errors: one base; the caller's misuse apart from the gateway's failures
    IBKRConnectionError
        UsageError: ConfigError, ManagerStoppedError
        GatewayError: ConnectFailedError, FatalConnectError (AccountError), ControllerError
        OrderRejectedError, SubscriptionError, JournalError

    # injected time (ManualClock for tests and replays); account masking for logs
    Clock, SystemClock, ManualClock, mask_account

Blocking twins, one convention: a blocking call ``name()`` runs its coroutine
twin ``name_async()`` in the event loop, and raises
:class:`~ibkr_connection.errors.UsageError` when called while the loop runs::

    ConnectionManager.connect()      / connect_async()     (also start(); async with)
    ConnectionManager.disconnect()   / disconnect_async()  (also stop())
    IBKRIBInsyncApi.connect()        / connect_async()
    IBKRIBInsyncApi.disconnect()     / disconnect_async()

The machine layer, for reviewers and tools (``ConnectionMachine``, ``Input``
and ``InputKind`` are importable here too, as before)::

    ibkr_connection.table      every decision as data: states, TABLE, ENTRY, EXIT,
                               ACTIONS, GUARDS
    ibkr_connection.machine    ConnectionMachine, the table run by transitions: handle()
                               returns a Step
    ibkr_connection.inputs     Input, InputKind: what goes in
    ibkr_connection.outputs    Step, Effect, Effects, Transition, Transcript, JournalEntry:
                               what comes out
    ibkr_connection.codes      CODES (IB codes) and FAILURES (attempt failures) -> inputs
    ibkr_connection.driver     Driver: the effects on asyncio, IB's callbacks -> inputs
    ibkr_connection.journal    JournalWriter, replay, replay_journal

How it fits together, and where each kind of change goes: ``docs/architecture.md``.
"""

from typing import TYPE_CHECKING, Any

from ibkr_connection.clock import Clock, ManualClock, SystemClock
from ibkr_connection.config import ConnectionConfig, mask_account
from ibkr_connection.controller import CommandController, Controller, IBCController
from ibkr_connection.errors import (
    AccountError,
    ConfigError,
    ConnectFailedError,
    ControllerError,
    FatalConnectError,
    GatewayError,
    IBKRConnectionError,
    JournalError,
    ManagerStoppedError,
    OrderRejectedError,
    SubscriptionError,
    UsageError,
)
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.outputs import Transition
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy, ResetWindow
from ibkr_connection.table import USABLE_STATES, ConnectionState

if TYPE_CHECKING:
    from ibkr_connection.broker import Config, IBKRIBInsyncApi
    from ibkr_connection.manager import ConnectionManager
    from ibkr_connection.subscriptions import (
        AccountUpdatesSubscription,
        CallableSubscription,
        MarketDataSubscription,
        PnLSubscription,
        Subscription,
    )

#: Names whose modules import eventkit (and through it numpy, most of a bare
#: import's time), loaded on first use: ``ibkr-connection sim``, ``proxy``,
#: ``replay`` and ``diagram`` never touch them and start in a third of the time.
_LAZY = {
    "Config": "ibkr_connection.broker",
    "IBKRIBInsyncApi": "ibkr_connection.broker",
    "ConnectionManager": "ibkr_connection.manager",
    "AccountUpdatesSubscription": "ibkr_connection.subscriptions",
    "CallableSubscription": "ibkr_connection.subscriptions",
    "MarketDataSubscription": "ibkr_connection.subscriptions",
    "PnLSubscription": "ibkr_connection.subscriptions",
    "Subscription": "ibkr_connection.subscriptions",
}


if not TYPE_CHECKING:
    # Hidden from type checkers: a module-level __getattr__ makes mypy and IDEs accept any
    # name imported from the root as Any, a typo included; they see the lazy names
    # through the TYPE_CHECKING imports above instead.
    def __getattr__(name: str) -> Any:
        """Import a name of :data:`_LAZY` from its module the first time it is asked for."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # asked once: later lookups find it as a plain attribute
        return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included before their first use (for IDEs, help())."""
    return sorted([*globals(), *_LAZY])


__version__ = "0.1.0"

__all__ = [
    "USABLE_STATES",
    "AccountError",
    "AccountUpdatesSubscription",
    "BackoffPolicy",
    "CallableSubscription",
    "Clock",
    "CommandController",
    "Config",
    "ConfigError",
    "ConnectFailedError",
    "ConnectionConfig",
    "ConnectionMachine",
    "ConnectionManager",
    "ConnectionState",
    "Controller",
    "ControllerError",
    "FatalConnectError",
    "GatewayError",
    "IBCController",
    "IBKRConnectionError",
    "IBKRIBInsyncApi",
    "Input",
    "InputKind",
    "JournalError",
    "ManagerStoppedError",
    "ManualClock",
    "MarketDataSubscription",
    "OrderRejectedError",
    "PnLSubscription",
    "RecoveryPolicy",
    "ResetWindow",
    "Subscription",
    "SubscriptionError",
    "SystemClock",
    "Transition",
    "UsageError",
    "mask_account",
]
