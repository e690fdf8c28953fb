"""The seed's Config: environment reading, validation naming the field, translation."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from ibkr_connection import Config, ConfigError, IBKRIBInsyncApi


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
    assert api.read_only is False and api.account_id == ""
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
    assert api.read_only is True and api.account_id == "DU1"
