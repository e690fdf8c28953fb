"""The wrapper's configs: the seed's Config, a ConnectionConfig, and nothing else."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
from ib_insync import IB, MarketOrder, Stock

import broker_support
from ibkr_connection import (
    BackoffPolicy,
    Config,
    ConfigError,
    ConnectionConfig,
    IBKRIBInsyncApi,
    OrderRejectedError,
    RecoveryPolicy,
)
from ibkr_connection.simulator import FakeGateway

# The shared fixtures, taken into this module so pytest finds them.
gw = broker_support.gw
loop = broker_support.loop

#: Quick retries, so a 326 moves on to the fallback id at once.
QUICK = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2),
                       same_client_id_retries=0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IBKR_PORT", "abc"),
        ("IBKR_PORT", "70000"),
        ("IBKR_PORT", "0"),
        ("IBKR_CLIENT_ID", "-1"),
        ("IBKR_CLIENT_ID", "one"),
        ("IBKR_READONLY", "maybe"),
    ],
)
def test_from_env_rejects_bad_values_naming_the_variable(variable: str, value: str) -> None:
    """A bad value in the environment gives a ConfigError that names the variable."""
    with pytest.raises(ConfigError) as caught:
        Config.from_env({variable: value})
    assert caught.value.field == variable
    assert variable in str(caught.value)


def test_from_env_reads_the_seed_names() -> None:
    """Every seed variable is read, with its type."""
    config = Config.from_env({
        "IBKR_HOST": "gateway.local", "IBKR_PORT": "4001", "IBKR_CLIENT_ID": "7",
        "IBKR_ACCOUNT": "DU7654321", "IBKR_READONLY": "true",
    })
    assert config == Config(IBKR_HOST="gateway.local", IBKR_PORT=4001, IBKR_CLIENT_ID=7,
                            IBKR_ACCOUNT="DU7654321", IBKR_READONLY=True)


def test_from_env_defaults_when_unset() -> None:
    """With nothing set the defaults are the local paper gateway."""
    assert Config.from_env({}) == Config()


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("IBKR_PORT", {"IBKR_PORT": 70000}),
        ("IBKR_PORT", {"IBKR_PORT": "abc"}),
        ("IBKR_CLIENT_ID", {"IBKR_CLIENT_ID": -3}),
        ("IBKR_HOST", {"IBKR_HOST": ""}),
    ],
)
def test_config_validates_on_construction(field: str, kwargs: dict[str, object]) -> None:
    """A Config built in code is validated too, naming the attribute."""
    with pytest.raises(ConfigError) as caught:
        Config(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_seed_mock_config_defaults_account_and_readonly() -> None:
    """The seed's MagicMock(spec=Config) with three attributes: read-write, any account."""
    config = MagicMock(spec=Config)
    config.IBKR_HOST = "127.0.0.1"
    config.IBKR_PORT = 7497
    config.IBKR_CLIENT_ID = 1
    api = IBKRIBInsyncApi(config, ib=MagicMock())
    assert api.readonly is False and api.account_id == ""
    assert (api.config.host, api.config.port, api.config.client_id) == ("127.0.0.1", 7497, 1)
    assert api.config.account_fallback == "first"


def test_mock_config_with_bad_port_names_the_field() -> None:
    """An object carrying an out-of-range port is refused, naming IBKR_PORT."""
    config = MagicMock(spec=Config)
    config.IBKR_HOST = "127.0.0.1"
    config.IBKR_PORT = 99999
    config.IBKR_CLIENT_ID = 1
    with pytest.raises(ConfigError, match="IBKR_PORT"):
        IBKRIBInsyncApi(config, ib=MagicMock())


def test_readonly_and_account_are_carried_over() -> None:
    """IBKR_READONLY and IBKR_ACCOUNT reach the manager's ConnectionConfig."""
    api = IBKRIBInsyncApi(Config(IBKR_ACCOUNT="DU1", IBKR_READONLY=True), ib=MagicMock())
    assert api.config.readonly is True and api.config.account == "DU1"
    assert api.readonly is True and api.account_id == "DU1"


def test_read_only_is_an_alias_of_readonly() -> None:
    """The seed's name read_only reads the same setting as readonly."""
    for readonly in (True, False):
        api = IBKRIBInsyncApi(Config(IBKR_READONLY=readonly), ib=MagicMock())
        assert api.readonly is readonly and api.read_only is readonly


@pytest.fixture
def api_cleanup(loop: asyncio.AbstractEventLoop) -> Iterator[list[IBKRIBInsyncApi]]:
    """Wrappers appended here are disconnected after the test."""
    made: list[IBKRIBInsyncApi] = []
    yield made
    for api in made:
        api.disconnect()


def test_connection_config_connects_where_it_says(
    gw: FakeGateway, api_cleanup: list[IBKRIBInsyncApi],
) -> None:
    """A ConnectionConfig's port and client id are the ones the gateway sees."""
    api = IBKRIBInsyncApi(ConnectionConfig(port=gw.port, client_id=32, connect_timeout=2.0),
                          IB())
    api_cleanup.append(api)
    assert api.connect() is True
    assert [c.client_id for c in gw.clients] == [32]
    assert (api.host, api.port, api.client_id) == ("127.0.0.1", gw.port, 32)


def test_connection_config_fallback_ids_and_readonly_are_used(
    gw: FakeGateway, loop: asyncio.AbstractEventLoop, api_cleanup: list[IBKRIBInsyncApi],
) -> None:
    """With client id 32 taken, the config's fallback id 33 is used; readonly holds."""
    squatter = IB()
    loop.run_until_complete(squatter.connectAsync("127.0.0.1", gw.port, clientId=32))
    try:
        config = ConnectionConfig(port=gw.port, client_id=32, fallback_client_ids=(33,),
                                  readonly=True, connect_timeout=2.0, policy=QUICK)
        api = IBKRIBInsyncApi(config, IB())
        api_cleanup.append(api)
        assert api.connect() is True
        assert sorted(c.client_id for c in gw.clients) == [32, 33]
        with pytest.raises(OrderRejectedError, match="read-only"):
            api.place_order(Stock("AAPL", "SMART", "USD"), MarketOrder("BUY", 1))
        broker_support.round_trip(api)
        assert gw.requests_named("placeOrder") == []
    finally:
        squatter.disconnect()


def test_connection_config_fields_are_kept_as_given() -> None:
    """Every field of a ConnectionConfig reaches the manager unchanged."""
    config = ConnectionConfig(
        host="10.0.0.5", port=4001, client_id=9, fallback_client_ids=(10, 11),
        account="DU7654321", account_fallback="error", readonly=True, connect_timeout=3.5,
        heartbeat_idle=4.0, heartbeat_timeout=1.5, policy=QUICK, mask_accounts=False,
    )
    api = IBKRIBInsyncApi(config, ib=MagicMock())
    assert api.config == config and api.manager.config == config
    assert api.account_id == "DU7654321"


def test_connection_config_with_explicit_overrides() -> None:
    """connect_timeout= and policy= given to the wrapper replace the config's fields."""
    config = ConnectionConfig(port=4001, connect_timeout=3.5)
    api = IBKRIBInsyncApi(config, ib=MagicMock(), connect_timeout=1.25, policy=QUICK)
    assert api.config == config.replace(connect_timeout=1.25, policy=QUICK)


@pytest.mark.parametrize(
    "config",
    [
        object(),
        {"IBKR_PORT": 4002},
        "127.0.0.1:4002",
        None,
        SimpleNamespace(host="127.0.0.1", port=4002),
    ],
    ids=["object", "dict", "string", "None", "look-alike"],
)
def test_an_unrecognised_config_is_refused(config: object) -> None:
    """An object with neither ConnectionConfig's type nor any IBKR_* attribute is refused."""
    with pytest.raises(ConfigError) as caught:
        IBKRIBInsyncApi(config, ib=MagicMock())
    assert caught.value.field == "config"
    assert "ConnectionConfig" in str(caught.value) and "IBKR_PORT" in str(caught.value)


# -- every IBKR_* variable through the seed's Config (issue 18, item 2) -------------------

#: (variable, text, what the manager's ConnectionConfig must then say): every variable
#: ConnectionConfig.from_env reads, with a value that is not its default.
EVERY_VARIABLE = [
    ("IBKR_HOST", "gateway.example", lambda c: c.host, "gateway.example"),
    ("IBKR_PORT", "4001", lambda c: c.port, 4001),
    ("IBKR_CLIENT_ID", "17", lambda c: c.client_id, 17),
    ("IBKR_FALLBACK_CLIENT_IDS", "18, 19", lambda c: c.fallback_client_ids, (18, 19)),
    ("IBKR_ACCOUNT", "DU7654321", lambda c: c.account, "DU7654321"),
    ("IBKR_ACCOUNT_FALLBACK", "error", lambda c: c.account_fallback, "error"),
    ("IBKR_READONLY", "yes", lambda c: c.readonly, True),
    ("IBKR_CONNECT_TIMEOUT", "3.5", lambda c: c.connect_timeout, 3.5),
    ("IBKR_HANDSHAKE_TIMEOUT", "0.75", lambda c: c.handshake_timeout, 0.75),
    ("IBKR_MAX_ATTEMPTS", "5", lambda c: c.policy.backoff.max_attempts, 5),
    ("IBKR_IBC_HOST", "10.0.0.5", lambda c: repr(c.controller()),
     "IBCController(host='10.0.0.5', port=7462)"),
    ("IBKR_IBC_PORT", "7463", lambda c: repr(c.controller()),
     "IBCController(host='127.0.0.1', port=7463)"),
]


@pytest.mark.parametrize(("variable", "text", "read", "expected"), EVERY_VARIABLE,
                         ids=[row[0] for row in EVERY_VARIABLE])
def test_every_connection_config_variable_is_honoured_through_config(
    variable: str, text: str, read: Any, expected: object,
) -> None:
    """IBKRIBInsyncApi(Config.from_env()) runs on each IBKR_* variable as ConnectionConfig does."""
    environ = {variable: text}
    assert read(ConnectionConfig.from_env(environ)) == expected
    api = IBKRIBInsyncApi(Config.from_env(environ), ib=MagicMock())
    assert read(api.config) == expected
    assert read(api.manager.config) == expected


def test_the_table_above_names_every_variable_connection_config_reads() -> None:
    """A variable added to ConnectionConfig.from_env without a row above fails here."""
    source = inspect.getsource(ConnectionConfig.from_env)
    read = set(re.findall(r'"(IBKR_[A-Z_]+)"', source))
    assert read == {row[0] for row in EVERY_VARIABLE}


def test_config_from_env_with_an_ibc_port_gives_the_manager_a_controller() -> None:
    """The documented sync set-up with IBKR_IBC_PORT builds the IBC controller."""
    api = IBKRIBInsyncApi(Config.from_env({"IBKR_IBC_PORT": "7462"}), ib=MagicMock())
    assert repr(api.manager.controller) == "IBCController(host='127.0.0.1', port=7462)"


def test_config_unset_keeps_the_seed_defaults() -> None:
    """With nothing set: first managed account, 10 s attempts, unbounded recovery, no IBC."""
    api = IBKRIBInsyncApi(Config.from_env({}), ib=MagicMock())
    assert api.config.account_fallback == "first"
    assert api.config.connect_timeout == 10.0
    assert api.config.policy.backoff.max_attempts is None
    assert api.manager.controller is None


def test_config_in_code_carries_the_other_settings() -> None:
    """Config built in code takes the same settings, as typed values."""
    config = Config(IBKR_FALLBACK_CLIENT_IDS=(2, 3), IBKR_ACCOUNT_FALLBACK="error",
                    IBKR_CONNECT_TIMEOUT=4.0, IBKR_HANDSHAKE_TIMEOUT=0.5, IBKR_MAX_ATTEMPTS=2,
                    IBKR_IBC_HOST="ibc.local", IBKR_IBC_PORT=7470)
    api = IBKRIBInsyncApi(config, ib=MagicMock())
    assert api.config.fallback_client_ids == (2, 3)
    assert api.config.account_fallback == "error"
    assert (api.config.connect_timeout, api.config.handshake_timeout) == (4.0, 0.5)
    assert api.config.policy.backoff.max_attempts == 2
    assert repr(api.manager.controller) == "IBCController(host='ibc.local', port=7470)"


def test_seed_mock_config_with_an_ibc_port() -> None:
    """A MagicMock(spec=Config) given IBKR_IBC_PORT gets the controller; the rest defaults."""
    config = MagicMock(spec=Config)
    config.IBKR_PORT = 4002
    config.IBKR_IBC_PORT = 7462
    api = IBKRIBInsyncApi(config, ib=MagicMock())
    assert repr(api.manager.controller) == "IBCController(host='127.0.0.1', port=7462)"
    assert api.config.fallback_client_ids == ()
    assert api.config.handshake_timeout == 2.0


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("IBKR_IBC_PORT", {"IBKR_IBC_PORT": 0}),
        ("IBKR_IBC_PORT", {"IBKR_IBC_PORT": "seventy"}),
        ("IBKR_IBC_HOST", {"IBKR_IBC_HOST": " "}),
        ("IBKR_FALLBACK_CLIENT_IDS", {"IBKR_FALLBACK_CLIENT_IDS": (2, -1)}),
        ("IBKR_ACCOUNT_FALLBACK", {"IBKR_ACCOUNT_FALLBACK": "last"}),
        ("IBKR_CONNECT_TIMEOUT", {"IBKR_CONNECT_TIMEOUT": 0}),
        ("IBKR_HANDSHAKE_TIMEOUT", {"IBKR_HANDSHAKE_TIMEOUT": -1.0}),
        ("IBKR_MAX_ATTEMPTS", {"IBKR_MAX_ATTEMPTS": 0}),
        ("IBKR_READONLY", {"IBKR_READONLY": "maybe"}),
        ("IBKR_PORT", {"IBKR_PORT": [4002]}),
        ("IBKR_IBC_PORT", {"IBKR_IBC_PORT": object()}),
    ],
)
def test_config_refuses_a_bad_setting_naming_it(field: str, kwargs: dict[str, object]) -> None:
    """Every setting of Config is validated as its variable would be, naming it."""
    with pytest.raises(ConfigError) as caught:
        Config(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
