"""The TWS API wire layer that the simulator and the proxy share.

It imports neither of them (and nothing of the connection manager): the
simulator serves this protocol, the proxy relays and records it.

* :mod:`~ibkr_connection.wire.versions`: the server versions spoken and what
  each changes in the messages;
* :mod:`~ibkr_connection.wire.protocol`: framing, field encoding, message ids,
  IB's texts, and the error / system message laid out per version;
* :mod:`~ibkr_connection.wire.framing`: a relay's view of a stream: frames
  split as they come, decoded, re-encoded, injected;
* :mod:`~ibkr_connection.wire.recording`: the recording format (written by
  the proxy, served by ``sim --replay``);
* :mod:`~ibkr_connection.wire.nightly`: IB's nightly reset, played by both;
* :mod:`~ibkr_connection.wire.scenario`: the scenario file both play.
"""
