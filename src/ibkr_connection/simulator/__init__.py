"""Fault-injecting IB gateway simulator speaking the real TWS wire protocol.

It speaks API server versions 157 to 178 (:data:`MIN_SERVER_VERSION`,
:data:`MAX_SERVER_VERSION`) and answers each client's ``v<min>..<max>`` as
TWS does: with the highest version in that range up to its cap,
``FakeGateway(server_version=N)`` (178 by default), so ib_insync 0.9.86 gets
176 and ib_async 2.x 178. Every message sent and every request read is laid
out for the negotiated version; :mod:`~ibkr_connection.wire.versions`
lists what changes at which version, with IB's ``ibapi`` as the source. A
range it cannot serve is answered with its own highest version and the socket
closed; a request whose fields do not fit the version gets error 320 ("Error
reading request"), and the session goes on.

Example::

    async with FakeGateway(accounts=["DU1234567"], port=0) as gw:
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1)
        await gw.send_error(1100)
"""

from ibkr_connection.simulator.brokerage import (
    FillMode,
    Instrument,
    SimExecution,
    SimOrder,
    SimPosition,
)
from ibkr_connection.simulator.gateway import FakeGateway
from ibkr_connection.simulator.transport import ApiClient, Request
from ibkr_connection.wire.protocol import SERVER_VERSION, default_message, farm_codes
from ibkr_connection.wire.scenario import SYNC_REQUESTS
from ibkr_connection.wire.versions import MAX_SERVER_VERSION, MIN_SERVER_VERSION

__all__ = [
    "MAX_SERVER_VERSION",
    "MIN_SERVER_VERSION",
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
