"""The simulator's request record stays bounded over a long run (the month's heartbeat probes)."""

from __future__ import annotations

from ib_insync import IB

from ibkr_connection.simulator import FakeGateway


async def test_request_log_keeps_the_most_recent_requests_and_counts_all() -> None:
    """60 probes against a log limited to 20: at most 22 kept, the newest last, all counted."""
    async with FakeGateway(request_log_limit=20) as gw:
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=5)
        try:
            startup = gw.requests.counts.total()
            for _ in range(60):
                await ib.reqCurrentTimeAsync()
        finally:
            ib.disconnect()
        assert 20 <= len(gw.requests) <= 22
        assert gw.requests.counts["reqCurrentTime"] == 60
        assert gw.requests.counts.total() == startup + 60
        assert [r.name for r in gw.requests] == ["reqCurrentTime"] * len(gw.requests)
        assert len(gw.requests_named("reqCurrentTime")) == len(gw.requests)


async def test_request_log_keeps_every_request_of_a_test_by_default() -> None:
    """With the default limit nothing a test sends is dropped: 50 probes, all kept."""
    async with FakeGateway() as gw:
        ib = IB()
        await ib.connectAsync("127.0.0.1", gw.port, clientId=1, timeout=5)
        try:
            for _ in range(50):
                await ib.reqCurrentTimeAsync()
        finally:
            ib.disconnect()
        assert len(gw.requests_named("reqCurrentTime")) == 50
