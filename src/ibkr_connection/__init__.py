"""ibkr-connection: keep a bot's link to TWS / IB Gateway alive, as a state machine.

Public surface::

    from ibkr_connection import ConnectionManager, ConnectionConfig, ConnectionState
"""

from ibkr_connection.broker import Config, IBKRIBInsyncApi
from ibkr_connection.clock import Clock, ManualClock, SystemClock
from ibkr_connection.config import ConnectionConfig, mask_account
from ibkr_connection.errors import (
    AccountError,
    ConfigError,
    ConnectFailedError,
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
from ibkr_connection.machine import ConnectionMachine, ConnectionState, Transition
from ibkr_connection.manager import USABLE_STATES, ConnectionManager
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy, ResetWindow
from ibkr_connection.subscriptions import (
    AccountUpdatesSubscription,
    CallableSubscription,
    MarketDataSubscription,
    PnLSubscription,
    Subscription,
)

__version__ = "0.1.0"

__all__ = [
    "USABLE_STATES",
    "AccountError",
    "AccountUpdatesSubscription",
    "BackoffPolicy",
    "CallableSubscription",
    "Clock",
    "Config",
    "ConfigError",
    "ConnectFailedError",
    "ConnectionConfig",
    "ConnectionMachine",
    "ConnectionManager",
    "ConnectionState",
    "FatalConnectError",
    "GatewayError",
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
