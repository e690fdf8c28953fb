"""What the sync wrapper's log lines say to a new user, against the simulator over real sockets."""

from __future__ import annotations

import logging

from ib_insync import IB

import broker_support
from ibkr_connection import BackoffPolicy, Config, IBKRIBInsyncApi, RecoveryPolicy

loop = broker_support.loop
gw = broker_support.gw
make_api = broker_support.make_api


def test_retry_line_after_a_326_has_one_full_stop(make_api, gw, caplog) -> None:  # type: ignore[no-untyped-def]
    """After a 326 the retry line has one full stop before "Retrying", not two."""
    holder = make_api(client_id=5)
    assert holder.connect()
    caplog.set_level(logging.WARNING, logger="ibkr_connection.broker")
    quick = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.01, max_costly_delay=0.02))
    api = IBKRIBInsyncApi(Config(IBKR_PORT=gw.port, IBKR_CLIENT_ID=5), IB(), policy=quick,
                          connect_timeout=2.0)
    try:
        assert api.connect() is False
    finally:
        api.disconnect()
        holder.disconnect()
    retries = [r.getMessage() for r in caplog.records if "Retrying" in r.getMessage()]
    assert retries[0] == ("Connection attempt 1 failed: Unable to connect as the client id is "
                          "already in use. Retry with a unique client id. Retrying...")
    assert not any(".. Retrying" in line for line in retries)
