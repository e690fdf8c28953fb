"""A fault-injecting, recording TWS API relay in front of a real TWS / IB Gateway.

``ibkr-connection proxy --upstream HOST:PORT --port P`` relays bots to the
gateway byte for byte; ``--scenario FILE`` injects the simulator's scenario
actions that make sense for a relay; ``--record FILE`` writes every session
to a JSON Lines recording that ``ibkr-connection sim --replay FILE`` serves.

Example::

    async with FakeGateway() as gw, ProxyServer("127.0.0.1", gw.port) as proxy:
        await ib.connectAsync("127.0.0.1", proxy.port, clientId=1)
        await proxy.send_error(1100)
"""

from ibkr_connection.proxy.relay import ProxyServer
from ibkr_connection.proxy.session import RelaySession
from ibkr_connection.wire.framing import proxy_error_frame
from ibkr_connection.wire.recording import (
    FORMAT_VERSION,
    Recording,
    RecordingError,
    RecordingWriter,
    load_recording,
)

__all__ = [
    "FORMAT_VERSION",
    "ProxyServer",
    "Recording",
    "RecordingError",
    "RecordingWriter",
    "RelaySession",
    "load_recording",
    "proxy_error_frame",
]
