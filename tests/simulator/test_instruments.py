"""The simulator's instrument list: known contracts answer, unknown ones get error 200.

Real clients (ib_insync and ib_async) against the simulator over loopback.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ibkr_connection import (
    ConnectionConfig,
    ConnectionManager,
    ConnectionState,
    SubscriptionError,
)
from ibkr_connection.simulator import FakeGateway

from conftest import start_sim

LIBS = ["ib_insync", "ib_async"]


@pytest.fixture(params=LIBS)
def lib(request: pytest.FixtureRequest) -> ModuleType:
    """ib_insync, then ib_async."""
    return importlib.import_module(request.param)


async def _connected(lib: ModuleType, port: int) -> Any:
    ib = lib.IB()
    ib.RaiseRequestErrors = False
    await ib.connectAsync("127.0.0.1", port, clientId=3, timeout=10)
    return ib


async def _errors_after_barrier(ib: Any, errors: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The errors so far, once a reqCurrentTime round trip shows nothing more is in flight."""
    await ib.reqCurrentTimeAsync()
    return list(errors)


@pytest.mark.parametrize(("symbol", "con_id"), [("AAPL", 265598), ("MSFT", 272093),
                                               ("IBM", 8314), ("SPY", 756733)])
async def test_default_instruments_qualify(lib: ModuleType, symbol: str, con_id: int) -> None:
    """Every default instrument qualifies to IB's own conId on a fresh simulator."""
    async with FakeGateway() as gw:
        ib = await _connected(lib, gw.port)
        try:
            [contract] = await ib.qualifyContractsAsync(lib.Stock(symbol, "SMART", "USD"))
            assert (contract.conId, contract.symbol) == (con_id, symbol)
        finally:
            ib.disconnect()


async def test_unknown_contract_details_is_error_200_and_nothing_else(lib: ModuleType) -> None:
    """qualifyContracts of an unknown symbol: error 200, no details, no conId made up."""
    async with FakeGateway() as gw:
        ib = await _connected(lib, gw.port)
        errors: list[tuple[int, int]] = []
        ib.errorEvent += lambda req_id, code, *_: errors.append((req_id, code))
        try:
            # A stream asked first must not make the symbol known either (issue 18's repro).
            ib.reqMktData(lib.Stock("NOSUCHSYM", "SMART", "USD", conId=999999))
            contract = lib.Stock("NOSUCHSYM", "SMART", "USD")
            # ib_insync leaves the unknown one out; ib_async puts None in its place.
            assert [c for c in await ib.qualifyContractsAsync(contract) if c] == []
            assert contract.conId == 0
            details = await ib.reqContractDetailsAsync(lib.Stock("NOSUCHSYM", "SMART", "USD"))
            assert details == []
            said = await _errors_after_barrier(ib, errors)
            assert [code for _, code in said] == [200, 200, 200]
            assert "NOSUCHSYM" not in gw.instruments
        finally:
            ib.disconnect()


async def test_unknown_market_data_is_error_200_and_no_ticks(lib: ModuleType) -> None:
    """reqMktData on an unknown contract: error 200 on its request id, and no tick ever."""
    async with FakeGateway() as gw:
        ib = await _connected(lib, gw.port)
        errors: list[tuple[int, int]] = []
        ib.errorEvent += lambda req_id, code, *_: errors.append((req_id, code))
        try:
            # A conId the gateway does not know either (ib_async needs one to stream).
            ticker = ib.reqMktData(lib.Stock("NOSUCHSYM", "SMART", "USD", conId=999999))
            said = await _errors_after_barrier(ib, errors)
            assert [code for _, code in said] == [200]
            assert gw.push_tick("AAPL", 101.0) == 0  # nobody subscribed to anything
            await ib.reqCurrentTimeAsync()
            assert ticker.ticks == []
        finally:
            ib.disconnect()


async def test_unknown_contract_order_is_error_200_and_cancelled(lib: ModuleType) -> None:
    """placeOrder on an unknown contract: error 200 on the order id; the trade ends Cancelled."""
    async with FakeGateway() as gw:
        ib = await _connected(lib, gw.port)
        try:
            trade = ib.placeOrder(lib.Stock("NOSUCHSYM", "SMART", "USD", conId=999999),
                                  lib.MarketOrder("BUY", 1))
            await ib.reqCurrentTimeAsync()
            assert trade.orderStatus.status == "Cancelled"
            assert [entry.errorCode for entry in trade.log if entry.errorCode] == [200]
            assert gw.orders == {}
        finally:
            ib.disconnect()


async def test_add_instrument_makes_a_contract_known(lib: ModuleType) -> None:
    """FakeGateway.add_instrument: the new symbol qualifies and streams its price."""
    async with FakeGateway() as gw:
        gw.add_instrument("TSLA", 250.0, con_id=76792991)
        ib = await _connected(lib, gw.port)
        try:
            [contract] = await ib.qualifyContractsAsync(lib.Stock("TSLA", "SMART", "USD"))
            assert contract.conId == 76792991
            ticker = ib.reqMktData(contract)
            deadline = asyncio.get_running_loop().time() + 10
            while ticker.last != 250.0:
                assert asyncio.get_running_loop().time() < deadline, ticker
                await asyncio.sleep(0.01)
        finally:
            ib.disconnect()


async def test_unknown_contract_raises_subscription_error_through_the_manager() -> None:
    """The README's promise: a subscription that cannot be issued raises from wait_ready().

    ib_async only: the manager qualifies a contract without a conId there, and
    the simulator's 200 fails it. With ib_insync the manager streams the
    contract as it is, and nothing of the manager's listens for the 200 that
    TWS (and now the simulator) answers a stream of an unknown contract with.
    """
    lib = importlib.import_module("ib_async")
    async with FakeGateway() as gw:
        manager = ConnectionManager(lib.IB(), ConnectionConfig(port=gw.port, client_id=7))
        try:
            await manager.start(timeout=10)
            handle = manager.subscribe_market_data(lib.Stock("NOSUCHSYM", "SMART", "USD"))
            with pytest.raises(SubscriptionError):
                await handle.wait_ready(timeout=5.0)
            assert isinstance(handle.error, SubscriptionError)
            assert manager.state is ConnectionState.CONNECTED
        finally:
            await manager.stop()


async def test_a_scenario_adds_instruments_to_the_sim_command(tmp_path: Path) -> None:
    """``[[gateway.instruments]]`` in a scenario: ``sim`` knows that symbol at that price."""
    import signal

    from ib_insync import IB, Stock

    scenario = tmp_path / "s.toml"
    scenario.write_text('[[gateway.instruments]]\nsymbol = "TSLA"\nprice = 250.0\n'
                        "con_id = 76792991\n")
    child, port, _ = await start_sim("--scenario", str(scenario), "--duration", "60")
    try:
        ib = IB()
        await ib.connectAsync("127.0.0.1", port, clientId=5, timeout=10)
        [contract] = await ib.qualifyContractsAsync(Stock("TSLA", "SMART", "USD"))
        assert contract.conId == 76792991
        ib.disconnect()
    finally:
        child.send_signal(signal.SIGINT)
        await asyncio.wait_for(child.communicate(), 60)
