"""A contract of the other client library is refused before anything is sent (issue 18, item 4)."""

from __future__ import annotations

import importlib

import pytest

from ibkr_connection import ConnectionConfig, ConnectionManager, UsageError
from ibkr_connection.simulator import FakeGateway


@pytest.mark.parametrize(("ib_library", "contract_library"), [
    ("ib_insync", "ib_async"),
    ("ib_async", "ib_insync"),
])
async def test_subscribe_market_data_refuses_the_other_librarys_contract(
        ib_library: str, contract_library: str) -> None:
    """subscribe_market_data raises UsageError naming both libraries; the gateway gets nothing."""
    ib = importlib.import_module(ib_library).IB()
    contract = importlib.import_module(contract_library).Stock("AAPL", "SMART", "USD")
    async with FakeGateway(accounts=["DU1234567"], prices={"AAPL": 150.0}) as gw:
        manager = ConnectionManager(ib, ConnectionConfig(port=gw.port, client_id=4))
        await manager.start(timeout=10)
        try:
            with pytest.raises(UsageError) as refused:
                manager.subscribe_market_data(contract)
            assert str(refused.value) == (
                f"Stock comes from {contract_library} but the IB object is {ib_library}'s: "
                f"import contracts and orders from {ib_library}, or pass {contract_library}'s "
                "IB()")
            assert len(manager.subscriptions) == 0
            # Barrier: a request answered after any market data or contract lookup would
            # have reached the gateway.
            await manager.ib.reqCurrentTimeAsync()
            assert gw.requests_named("reqMktData") == []
            assert gw.requests_named("reqContractData") == []
            # The refusal left the session alone: a contract of the right library streams.
            own = importlib.import_module(ib_library).Stock("AAPL", "SMART", "USD")
            handle = manager.subscribe_market_data(own)
            await handle.wait_ready(timeout=10)
            assert handle.error is None
        finally:
            await manager.stop()
