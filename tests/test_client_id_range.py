"""One client id range everywhere: 0 to 2**31-2 (issue 18, item 14).

TWS reads the client id as a Java int, and 2**31-1 is the API's UNSET_INTEGER
(see ``MAX_CLIENT_ID`` in ``ibkr_connection.config``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from unittest.mock import MagicMock

import pytest

from ibkr_connection import Config, ConfigError, ConnectionConfig, IBKRIBInsyncApi, cli

#: Client ids every entry point refuses: negative, the API's unset marker, beyond int32.
REFUSED = [-1, 2**31 - 1, 2**31, 99999999999999]
#: The ends of the range, which every entry point takes.
ACCEPTED = [0, 2**31 - 2]


@pytest.mark.parametrize("client_id", REFUSED)
def test_connection_config_refuses_the_client_id(client_id: int) -> None:
    """ConnectionConfig(client_id=...) outside 0..2147483646 names client_id."""
    with pytest.raises(ConfigError) as caught:
        ConnectionConfig(client_id=client_id)
    assert caught.value.field == "client_id"
    assert str(caught.value) == (
        f"client_id: must be a client id from 0 to 2147483646, got {client_id}")


@pytest.mark.parametrize("client_id", REFUSED)
def test_connection_config_refuses_the_fallback_id(client_id: int) -> None:
    """A fallback id outside the range names fallback_client_ids."""
    with pytest.raises(ConfigError) as caught:
        ConnectionConfig(fallback_client_ids=(2, client_id))
    assert caught.value.field == "fallback_client_ids"


@pytest.mark.parametrize("variable", ["IBKR_CLIENT_ID", "IBKR_FALLBACK_CLIENT_IDS"])
@pytest.mark.parametrize("client_id", REFUSED)
def test_environment_refuses_the_client_id(variable: str, client_id: int) -> None:
    """From the environment, through either config, the variable is named."""
    for read in (ConnectionConfig.from_env, Config.from_env):
        with pytest.raises(ConfigError) as caught:
            read({variable: str(client_id)})
        assert caught.value.field == variable


@pytest.mark.parametrize("client_id", REFUSED)
def test_seed_config_refuses_the_client_id(client_id: int) -> None:
    """Config(IBKR_CLIENT_ID=...) and a seed-style mock are refused naming IBKR_CLIENT_ID."""
    with pytest.raises(ConfigError) as caught:
        Config(IBKR_CLIENT_ID=client_id)
    assert caught.value.field == "IBKR_CLIENT_ID"
    mock = MagicMock(spec=Config)
    mock.IBKR_CLIENT_ID = client_id
    with pytest.raises(ConfigError) as caught:
        IBKRIBInsyncApi(mock, ib=MagicMock())
    assert caught.value.field == "IBKR_CLIENT_ID"


@pytest.mark.parametrize("client_id", ACCEPTED)
def test_the_ends_of_the_range_are_taken_everywhere(client_id: int) -> None:
    """0 and 2147483646 pass every entry point."""
    config = ConnectionConfig(client_id=client_id, fallback_client_ids=(client_id,))
    assert config.client_ids == (client_id, client_id)
    from_env = ConnectionConfig.from_env({"IBKR_CLIENT_ID": str(client_id)})
    assert from_env.client_id == client_id
    seed = Config.from_env({"IBKR_FALLBACK_CLIENT_IDS": str(client_id)})
    fallbacks = seed.IBKR_FALLBACK_CLIENT_IDS
    assert fallbacks == (client_id,)
    api = IBKRIBInsyncApi(Config(IBKR_CLIENT_ID=client_id), ib=MagicMock())
    assert api.client_id == client_id


def _environ() -> dict[str, str]:
    """This process's environment without IBKR_* variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IBKR_")}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("client_id", ["99999999999999", "2147483647", "-1"])
def test_watch_refuses_the_client_id_flag_in_one_line(
    client_id: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """watch --client-id outside the range: one line naming the flag, exit 2, no attempt."""
    for name in [name for name in os.environ if name.startswith("IBKR_")]:
        monkeypatch.delenv(name)
    status = cli.main(["watch", "-q", "--port", str(_closed_port()), f"--client-id={client_id}"])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert err.splitlines() == [
        f"ibkr-connection watch: --client-id: must be a client id from 0 to 2147483646, "
        f"got {client_id}"]
    assert out == ""


def test_watch_refuses_the_client_id_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """IBKR_CLIENT_ID beyond int32 for watch: one line naming the variable, exit 2."""
    for name in [name for name in os.environ if name.startswith("IBKR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IBKR_CLIENT_ID", "2147483648")
    status = cli.main(["watch", "-q", "--port", str(_closed_port())])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert err.splitlines() == [
        "ibkr-connection watch: IBKR_CLIENT_ID: must be a client id from 0 to 2147483646, "
        "got 2147483648"]
    assert out == ""


def test_the_watch_process_refuses_the_client_id_in_one_line() -> None:
    """The same refusal as a user meets it: the real command, one line, exit 2, nothing run."""
    done = subprocess.run(
        [sys.executable, "-m", "ibkr_connection.cli", "watch", "-q",
         "--port", str(_closed_port()), "--client-id=99999999999999"],
        capture_output=True, text=True, timeout=30, check=False, env=_environ())
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "ibkr-connection watch: --client-id: must be a client id from 0 to 2147483646, "
        "got 99999999999999"]
    assert done.stdout == ""
