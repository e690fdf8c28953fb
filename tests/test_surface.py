"""The public surface: what the package root exports, and where the machine layer lives."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import ibkr_connection
from ibkr_connection import broker, inputs, journal, machine, manager, outputs, table

#: The package root's names, as its docstring groups them.
ROOT = {
    "connect": ["ConnectionManager", "ConnectionConfig", "ConnectionState", "USABLE_STATES",
                "Transition", "RecoveryPolicy", "BackoffPolicy", "ResetWindow"],
    "subscriptions": ["Subscription", "MarketDataSubscription", "AccountUpdatesSubscription",
                      "PnLSubscription", "CallableSubscription"],
    "controller": ["Controller", "IBCController", "CommandController"],
    "seed": ["IBKRIBInsyncApi", "Config"],
    "errors": ["IBKRConnectionError", "UsageError", "ConfigError", "ManagerStoppedError",
               "GatewayError", "ConnectFailedError", "FatalConnectError", "AccountError",
               "OrderRejectedError", "SubscriptionError", "JournalError", "ControllerError"],
    "time": ["Clock", "SystemClock", "ManualClock", "mask_account"],
    "machine layer, kept for compatibility": ["ConnectionMachine", "Input", "InputKind"],
}


def test_root_exports_exactly_the_grouped_names() -> None:
    """__all__ is the union of the groups, and every name resolves."""
    names = [name for group in ROOT.values() for name in group]
    assert sorted(ibkr_connection.__all__) == sorted(names)
    for name in names:
        assert getattr(ibkr_connection, name) is not None


def test_root_docstring_names_every_export() -> None:
    """The package docstring documents each exported name (it no longer says three)."""
    doc = ibkr_connection.__doc__ or ""
    for name in ibkr_connection.__all__:
        assert name in doc, name


def test_the_seed_names_are_the_wrapper_and_its_config() -> None:
    """IBKRIBInsyncApi and Config come from the package root, as in the seed."""
    assert ibkr_connection.IBKRIBInsyncApi is broker.IBKRIBInsyncApi
    assert ibkr_connection.Config is broker.Config


def test_each_name_has_one_home() -> None:
    """The machine module serves only its own names: no re-export of table, inputs, outputs."""
    assert sorted(machine.__all__) == ["ACTION_FUNCTIONS", "ConnectionMachine", "GUARD_FUNCTIONS"]
    for name in ("Effects", "ACTIONS", "GUARDS", "replay_journal", "USABLE_STATES",
                 "SESSION_STATES", "check_table", "outcome"):
        assert not hasattr(machine, name), name
    assert outputs.Step is not None and outputs.Effect is not None
    assert inputs.Input is ibkr_connection.Input
    assert journal.replay_journal is not None


def test_state_sets_are_defined_once() -> None:
    """One SESSION_STATES and one USABLE_STATES, wherever they are imported from."""
    from ibkr_connection import health, metrics

    assert manager.USABLE_STATES is table.USABLE_STATES
    assert ibkr_connection.USABLE_STATES is table.USABLE_STATES
    assert metrics.USABLE_STATES is table.USABLE_STATES
    assert health.USABLE_STATES is table.USABLE_STATES
    assert broker.SESSION_STATES is table.SESSION_STATES
    assert [s.value for s in table.USABLE_STATES] == ["connected", "degraded"]
    assert [s.value for s in table.SESSION_STATES] == ["connected", "degraded", "lost"]


def test_blocking_twins_follow_one_convention() -> None:
    """Each blocking name() has a coroutine name_async(); the manager's are start()/stop() too."""
    cm = manager.ConnectionManager
    api = broker.IBKRIBInsyncApi
    for cls in (cm, api):
        for name in ("connect", "disconnect"):
            assert not inspect.iscoroutinefunction(getattr(cls, name)), (cls, name)
            assert inspect.iscoroutinefunction(getattr(cls, f"{name}_async")), (cls, name)
    assert cm.connect_async is cm.start and cm.disconnect_async is cm.stop
    assert manager.refuse_inside_loop is not None


def test_every_exception_of_the_core_lives_in_errors() -> None:
    """No core module defines an exception class of its own: errors.py is their one home."""
    from ibkr_connection import (
        adapter,
        clock,
        codes,
        controller,
        driver,
        errors,
        inflight,
        policy,
        subscriptions,
    )

    core = (adapter, clock, codes, controller, driver, inflight, inputs, journal, machine,
            manager, outputs, policy, subscriptions, table)
    for module in core:
        defined = [name for name, value in vars(module).items()
                   if isinstance(value, type) and issubclass(value, BaseException)
                   and value.__module__ == module.__name__]
        assert defined == [], (module.__name__, defined)
    for name in ("ControllerError", "HandshakeTimeoutError", "SyncIncompleteError",
                 "ReentrantHandleError", "JournalError"):
        assert getattr(errors, name).__module__ == "ibkr_connection.errors"


def test_a_bare_import_of_the_root_leaves_eventkit_unloaded() -> None:
    """`import ibkr_connection` loads no eventkit nor numpy; every exported name resolves."""
    # In a fresh interpreter: this one has loaded everything already. The CLI's
    # children (sim, proxy, replay, diagram) start without eventkit's imports.
    probe = ("import sys, ibkr_connection\n"
             "print(sorted(m for m in ('eventkit', 'numpy', 'ib_insync') if m in sys.modules))\n"
             "print(sorted(set(ibkr_connection.__all__) - set(dir(ibkr_connection))))\n"
             "print(ibkr_connection.ConnectionManager.__module__)\n"
             "print('eventkit' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[]", "ibkr_connection.manager", "True"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        ibkr_connection.NoSuchName  # noqa: B018
