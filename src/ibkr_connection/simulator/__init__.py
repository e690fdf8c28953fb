"""Fault-injecting IB gateway simulator speaking the real TWS wire protocol.

Example::

    async with FakeGateway(accounts=["DU1234567"], port=0) as gw:
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1)
        await gw.send_error(1100)
"""

from ibkr_connection.simulator.gateway import (
    SYNC_REQUESTS,
    ApiClient,
    FakeGateway,
    FillMode,
    Instrument,
    Request,
    SimExecution,
    SimOrder,
    SimPosition,
)
from ibkr_connection.simulator.protocol import SERVER_VERSION, default_message, farm_codes

__all__ = [
    "SERVER_VERSION",
    "SYNC_REQUESTS",
    "ApiClient",
    "FakeGateway",
    "FillMode",
    "Instrument",
    "Request",
    "SimExecution",
    "SimOrder",
    "SimPosition",
    "default_message",
    "farm_codes",
]
