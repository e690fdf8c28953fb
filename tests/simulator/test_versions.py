"""Server versions: the handshake answers like TWS; requests are read per version, 320 if not."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import socket
import struct
from types import ModuleType
from typing import Any

import pytest

from ibkr_connection.simulator import FakeGateway, layouts
from ibkr_connection.simulator import cli as sim_cli
from ibkr_connection.wire import protocol as p

from conftest import round_trip

#: Highest version each client library offers in its handshake.
CLIENT_MAX = {"ib_insync": 176, "ib_async": 178}

CASES = [
    (lib, version) for lib in CLIENT_MAX for version in range(157, CLIENT_MAX[lib] + 1)
]
IDS = [f"{lib}-v{version}" for lib, version in CASES]

REJECT_JSON = '{"rejectReason":"size","options":["override"]}'


def client_fields(lib: str, version: int, request: str, *args: Any) -> list[str]:
    """The fields ``lib``'s Client writes for ``request(*args)`` at ``version``."""
    client = importlib.import_module(f"{lib}.client").Client(None)
    sent: list[str] = []
    client.isConnected = lambda: True
    client.sendMsg = sent.append
    client._serverVersion = version
    getattr(client, request)(*args)
    [message] = sent
    return message.split("\0")[:-1]


async def connect(lib: str, gw: FakeGateway, client_id: int) -> Any:
    """A client of ``lib`` connected to ``gw``."""
    ib = importlib.import_module(lib).IB()
    await ib.connectAsync("127.0.0.1", gw.port, clientId=client_id, timeout=2)
    return ib


def frame(text: bytes) -> bytes:
    """Length-prefix a payload."""
    return struct.pack(">I", len(text)) + text


async def read_frame(reader: asyncio.StreamReader) -> list[str]:
    """One framed message's fields."""
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    return p.split_fields(await reader.readexactly(size))


async def read_rest(reader: asyncio.StreamReader) -> bytes:
    """Whatever arrives until the gateway closes the socket."""
    with contextlib.suppress(ConnectionResetError):
        return await asyncio.wait_for(reader.read(), 2)
    return b""


# -- the handshake ------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [156, 179, 0, 200])
def test_cap_outside_157_to_178_is_refused(cap: int) -> None:
    """The simulator cannot be capped at a version it does not speak."""
    with pytest.raises(ValueError, match=r"157\.\.178"):
        FakeGateway(server_version=cap)
    gw = FakeGateway(server_version=170)
    with pytest.raises(ValueError, match=r"157\.\.178"):
        gw.server_version = cap
    assert gw.server_version == 170


@pytest.mark.parametrize(
    ("cap", "lib", "expected"),
    [
        (178, "ib_insync", 176),
        (178, "ib_async", 178),
        (177, "ib_async", 177),
        (176, "ib_async", 176),
        (170, "ib_insync", 170),
        (170, "ib_async", 170),
        (157, "ib_insync", 157),
        (157, "ib_async", 157),
    ],
)
async def test_client_gets_the_highest_version_of_its_range(
    cap: int, lib: str, expected: int
) -> None:
    """Each client is answered with the highest version in its range, up to the cap."""
    async with FakeGateway(server_version=cap) as gw:
        ib = await connect(lib, gw, 1)
        try:
            assert ib.client.serverVersion() == expected
            assert [c.version for c in gw.clients] == [expected]
        finally:
            ib.disconnect()


@pytest.mark.parametrize(
    ("cap", "offer", "answer"),
    [
        (178, b"v157..176", 176),
        (178, b"v100..200", 178),
        (178, b"v170", 170),
        (160, b"v157..178", 160),
        (157, b"v100..157 +PACEAPI", 157),
    ],
)
async def test_handshake_answer_on_the_wire(cap: int, offer: bytes, answer: int) -> None:
    """The answer to ``API\\0 v<min>..<max>`` is the version and the connection time."""
    async with FakeGateway(server_version=cap) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"API\0" + frame(offer))
        version, conn_time = await asyncio.wait_for(read_frame(reader), 2)
        assert int(version) == answer
        assert conn_time.endswith(" UTC") and len(conn_time) == len("20260105 15:04:05 UTC")
        writer.close()


@pytest.mark.parametrize(
    ("cap", "offer"),
    [(178, b"v100..156"), (170, b"v171..178"), (178, b"v179..190"), (157, b"v158..176")],
)
async def test_range_it_cannot_serve_is_refused_and_others_go_on(cap: int, offer: bytes) -> None:
    """A range outside the gateway's gets its own highest version, then the socket closes."""
    async with FakeGateway(server_version=cap) as gw:
        before = await connect("ib_async", gw, 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"API\0" + frame(offer))
        version, _ = await asyncio.wait_for(read_frame(reader), 2)
        assert int(version) == cap  # outside the client's range: the client must give up
        assert await read_rest(reader) == b""
        writer.close()
        assert gw.handshakes == 1
        after = await connect("ib_insync", gw, 2)
        try:
            await asyncio.wait_for(before.reqCurrentTimeAsync(), 1)
            await asyncio.wait_for(after.reqCurrentTimeAsync(), 1)
        finally:
            before.disconnect()
            after.disconnect()


async def test_empty_range_closes_without_an_answer() -> None:
    """``v178..157`` is not a range: the connection closes, nothing is answered."""
    async with FakeGateway() as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"API\0" + frame(b"v178..157"))
        assert await read_rest(reader) == b""
        writer.close()


# -- requests read per version --------------------------------------------------------------


def _orders(lib: ModuleType) -> list[tuple[Any, Any]]:
    """(contract, order) pairs through every optional part of placeOrder's layout."""
    stock = lib.Contract(conId=265598, symbol="AAPL", secType="STK", exchange="SMART",
                         currency="USD")
    ats = lib.Contract(symbol="AAPL", secType="STK", exchange="IBKRATS", currency="USD")
    bag = lib.Contract(symbol="AAPL", secType="BAG", exchange="SMART", currency="USD",
                       comboLegs=[lib.ComboLeg(conId=1, ratio=1, action="BUY", exchange="SMART"),
                                  lib.ComboLeg(conId=2, ratio=1, action="SELL",
                                               exchange="SMART")],
                       deltaNeutralContract=lib.DeltaNeutralContract(conId=3, delta=0.5,
                                                                     price=10.0))
    limit = lib.Order(action="SELL", totalQuantity=5, orderType="LMT", lmtPrice=151.25,
                      tif="GTC", account="DU1234567", orderRef="ref-1")
    hedged = lib.Order(action="BUY", totalQuantity=2, orderType="LMT", lmtPrice=1.5,
                       hedgeType="D", hedgeParam="0.5", deltaNeutralOrderType="MKT",
                       scalePriceIncrement=0.05, algoStrategy="Adaptive",
                       algoParams=[lib.TagValue("adaptivePriority", "Normal")],
                       orderComboLegs=[lib.OrderComboLeg(price=1.0)],
                       smartComboRoutingParams=[lib.TagValue("NonGuaranteed", "1")])
    conditional = lib.Order(action="BUY", totalQuantity=1, orderType="MKT", conditions=[
        lib.PriceCondition(price=150.0, conId=265598, exch="SMART"),
        lib.TimeCondition(time="20260105 15:00:00"),
        lib.ExecutionCondition(secType="STK", exch="SMART", symbol="MSFT"),
        lib.VolumeCondition(volume=1000, conId=265598, exch="SMART"),
    ])
    return [
        (stock, limit),
        (stock, lib.Order(action="BUY", totalQuantity=10, orderType="MKT")),
        (ats, lib.Order(action="BUY", totalQuantity=10, orderType="PEG MID")),
        (stock, lib.Order(action="BUY", totalQuantity=10, orderType="PEG BEST",
                          competeAgainstBestOffset=math.inf)),
        (stock, lib.Order(action="BUY", totalQuantity=10, orderType="PEG BEST",
                          competeAgainstBestOffset=0.01)),
        (stock, lib.Order(action="BUY", totalQuantity=10, orderType="PEG BENCH",
                          referenceContractId=1)),
        (stock, conditional),
        (bag, hedged),
    ]


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_layouts_read_every_order_the_clients_write(lib: str, version: int) -> None:
    """placeOrder as each client writes it at each version is read whole, terms intact."""
    module = importlib.import_module(lib)
    for n, (contract, order) in enumerate(_orders(module), start=100):
        fields = client_fields(lib, version, "placeOrder", n, contract, order)
        request = layouts.place_order(fields, version)
        assert request.order_id == n
        assert (request.action, request.total_quantity) == (order.action, order.totalQuantity)
        assert request.order_type == order.orderType
        assert (request.contract.symbol, request.contract.sec_type) == (
            contract.symbol, contract.secType)
    assert layouts.place_order(
        client_fields(lib, version, "placeOrder", 7, *_orders(module)[0]), version
    ) == layouts.OrderRequest(7, layouts.ContractRef(265598, "AAPL", "STK", "SMART", "USD"),
                              "SELL", 5.0, "LMT", 151.25, 0.0, "GTC", "DU1234567", "ref-1")


@pytest.mark.parametrize(("lib", "version"), CASES, ids=IDS)
def test_layouts_read_the_other_requests_the_clients_write(lib: str, version: int) -> None:
    """cancelOrder, reqContractDetails, reqMktData and the fixed ones are read whole."""
    module = importlib.import_module(lib)
    aapl = module.Contract(conId=265598, symbol="AAPL", secType="STK", exchange="SMART",
                           currency="USD")
    assert layouts.cancel_order(client_fields(lib, version, "cancelOrder", 42), version) == 42
    details = layouts.contract_details(
        client_fields(lib, version, "reqContractDetails", 5, aapl), version)
    assert (details.req_id, details.contract.con_id, details.contract.symbol) == (5, 265598,
                                                                                 "AAPL")
    market = layouts.mkt_data(
        client_fields(lib, version, "reqMktData", 6, aapl, "", True, False, []), version)
    assert (market.req_id, market.contract.symbol, market.snapshot) == (6, "AAPL", True)
    written = {
        "reqExecutions": client_fields(lib, version, "reqExecutions", 8,
                                       module.ExecutionFilter(clientId=7, symbol="AAPL")),
        "startApi": client_fields(lib, version, "startApi"),
        "reqAccountUpdates": client_fields(lib, version, "reqAccountUpdates", True, "DU1"),
        "reqAccountUpdatesMulti": client_fields(
            lib, version, "reqAccountUpdatesMulti", 3, "DU1", "", False),
        "reqPositionsMulti": client_fields(lib, version, "reqPositionsMulti", 3, "DU1", ""),
        "reqAccountSummary": client_fields(lib, version, "reqAccountSummary", 4, "All", "x"),
        "reqCompletedOrders": client_fields(lib, version, "reqCompletedOrders", False),
        "reqIds": client_fields(lib, version, "reqIds", 1),
        "cancelMktData": client_fields(lib, version, "cancelMktData", 6),
    }
    for name in ("reqCurrentTime", "reqManagedAccts", "reqPositions", "cancelPositions",
                 "reqOpenOrders", "reqAllOpenOrders", "reqGlobalCancel"):
        written[name] = client_fields(lib, version, name)
    assert set(written) == set(layouts.FIXED), "a fixed layout without a client check"
    for name, fields in written.items():
        # every field the client wrote is one the layout reads
        assert len(layouts.fixed(name, fields)) == len(fields) - 1, name
    executions = layouts.fixed("reqExecutions", written["reqExecutions"])
    assert (executions["reqId"], executions["clientId"], executions["symbol"]) == (
        "8", "7", "AAPL")


@pytest.mark.parametrize(
    ("request_name", "written_at", "read_at", "detail"),
    [
        # faProfile (before 177) shifts modelCode "M1" into the integer shortSaleSlot
        ("placeOrder", 176, 177, "Unable to parse field: 'shortSaleSlot' for input string: 'M1'"),
        ("placeOrder", 177, 176, "no more fields"),
        ("placeOrder", 157, 158, "Unable to parse field: 'duration': no more fields"),
        ("placeOrder", 166, 165, "1 unexpected field(s) after 'autoCancelParent'"),
        ("placeOrder", 169, 168, "1 unexpected field(s) after 'advancedErrorOverride'"),
        # PEG MID on IBKRATS: minTradeQty and the two mid offsets from 170 on
        ("pegMid", 170, 169, "3 unexpected field(s) after 'manualOrderTime'"),
        ("pegMid", 169, 170, "Unable to parse field: 'minTradeQty': no more fields"),
        ("cancelOrder", 169, 168, "1 unexpected field(s) after 'orderId'"),
        ("cancelOrder", 168, 169, "'manualOrderCancelTime': no more fields"),
        ("reqContractDetails", 176, 175, "1 unexpected field(s) after 'secId'"),
        ("reqContractDetails", 175, 176, "'issuerId': no more fields"),
    ],
)
def test_layout_of_another_version_is_refused(
    request_name: str, written_at: int, read_at: int, detail: str
) -> None:
    """A request laid out for another version is a LayoutError naming what did not fit."""
    ib_async = importlib.import_module("ib_async")
    aapl = ib_async.Contract(conId=265598, symbol="AAPL", secType="STK", exchange="SMART",
                             currency="USD")
    ats = ib_async.Contract(conId=265598, symbol="AAPL", secType="STK", exchange="IBKRATS",
                            currency="USD")
    calls: dict[str, tuple[Any, ...]] = {
        "placeOrder": ("placeOrder", 31, aapl,
                       ib_async.LimitOrder("BUY", 1, 150.0, modelCode="M1")),
        "pegMid": ("placeOrder", 31, ats, ib_async.Order(action="BUY", totalQuantity=1,
                                                         orderType="PEG MID")),
        "cancelOrder": ("cancelOrder", 31),
        "reqContractDetails": ("reqContractDetails", 31, aapl),
    }
    name, *args = calls[request_name]
    fields = client_fields("ib_async", written_at, name, *args)
    reader = {"placeOrder": layouts.place_order, "cancelOrder": layouts.cancel_order,
              "reqContractDetails": layouts.contract_details}[name]
    with pytest.raises(layouts.LayoutError) as raised:
        reader(fields, read_at)
    assert detail in raised.value.detail
    assert raised.value.req_id == 31
    assert raised.value.text.startswith("Error reading request. ")


@pytest.mark.parametrize(
    ("fields", "req_id", "detail"),
    [
        (["49", "1", "extra"], -1, "1 unexpected field(s) after 'version'"),
        (["7", "3", "x"], -1, "Unable to parse field: 'reqId' for input string: 'x'"),
        (["62", "1", "9", "All"], 9, "Unable to parse field: 'tags': no more fields"),
        (["71"], -1, "Unable to parse field: 'version': no more fields"),
        # the right count, a number that is not one: the id read before it is quoted
        (["49", "x"], -1, "Unable to parse field: 'version' for input string: 'x'"),
        (["76", "1", "9", "DU1", "", "x"], 9,
         "Unable to parse field: 'ledgerAndNLV' for input string: 'x'"),
    ],
)
def test_fixed_layouts_refuse_a_mismatch(fields: list[str], req_id: int, detail: str) -> None:
    """A fixed-layout request with a field too many, too few or unreadable is refused."""
    with pytest.raises(layouts.LayoutError) as raised:
        layouts.fixed(p.INCOMING[int(fields[0])], fields)
    assert (raised.value.req_id, raised.value.detail) == (req_id, detail)


def test_fixed_layouts_read_numbers_as_the_field_reader_does() -> None:
    """Integers are read as int() reads them (empty is 0, leading zeros go); text as sent."""
    fields = ["76", "01", "009", "DU1", "", ""]
    assert layouts.fixed("reqAccountUpdatesMulti", fields) == {
        "version": "1", "reqId": "9", "account": "DU1", "modelCode": "", "ledgerAndNLV": "0"}
    assert layouts.fixed("reqCurrentTime", ["49", "1"]) == {"version": "1"}


def test_fixed_layout_read_again_is_a_fresh_answer_and_a_mismatch_still_refused() -> None:
    """Reading the same fields again gives an equal, separate dict; changed fields are read anew."""
    first = layouts.fixed("reqIds", ["8", "1", "1"])
    first["numIds"] = "changed by its caller"
    assert layouts.fixed("reqIds", ["8", "1", "1"]) == {"version": "1", "numIds": "1"}
    assert layouts.fixed("reqIds", ["8", "1", "02"]) == {"version": "1", "numIds": "2"}
    with pytest.raises(layouts.LayoutError):
        layouts.fixed("reqIds", ["8", "1", "x"])
    fields = ["8", "1", "3"]
    assert layouts.fixed("reqIds", fields) == {"version": "1", "numIds": "3"}
    fields[2] = "y"  # the caller's list changes after a good read
    with pytest.raises(layouts.LayoutError):
        layouts.fixed("reqIds", fields)


# -- a mismatch on a live session ---------------------------------------------------------------


def _bad_requests() -> dict[str, tuple[list[str], int]]:
    """Requests a 178 session cannot read, and the id its 320 must carry."""
    ib_async = importlib.import_module("ib_async")
    aapl = ib_async.Contract(conId=265598, symbol="AAPL", secType="STK", exchange="SMART",
                             currency="USD")
    # modelCode makes the 176 layout (with faProfile) unreadable at 178, as in TWS
    order = ib_async.LimitOrder("BUY", 3, 150.0, modelCode="M1")
    at_178 = client_fields("ib_async", 178, "placeOrder", 501, aapl, order)
    return {
        "order laid out for 176": (
            client_fields("ib_async", 176, "placeOrder", 501, aapl, order), 501),
        "order one field short": (at_178[:-1], 501),
        "order one field long": ([*at_178, ""], 501),
        "details laid out for 175": (
            client_fields("ib_async", 175, "reqContractDetails", 502, aapl), 502),
        "cancel with a bad id": (["4", "1", "five"], -1),
        "market data one field long": (
            [*client_fields("ib_async", 178, "reqMktData", 503, aapl, "", False, False, []),
             "x"], 503),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
async def test_unreadable_request_gets_320_and_the_sessions_go_on(case: str) -> None:
    """TWS's answer to a request it cannot read: 320 with the request's id; nothing else."""
    fields, req_id = _bad_requests()[case]
    async with FakeGateway(prices={"AAPL": 150.0}) as gw:
        ib = await connect("ib_async", gw, 1)
        other = await connect("ib_insync", gw, 2)
        errors: list[tuple[int, int, str]] = []
        ib.errorEvent += lambda r, code, text, contract: errors.append((r, code, text))
        try:
            ib.client.sendMsg("\0".join(fields) + "\0")
            await round_trip(ib)
            assert [(r, code) for r, code, _ in errors] == [(req_id, 320)]
            assert errors[0][2].startswith("Error reading request. ")
            assert gw.orders == {} and gw.clients[0].mkt_data == {}
            await asyncio.wait_for(ib.reqCurrentTimeAsync(), 1)
            await asyncio.wait_for(other.reqCurrentTimeAsync(), 1)
            assert ib.isConnected() and other.isConnected()
        finally:
            ib.disconnect()
            other.disconnect()


# -- whole sessions at a version ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lib", "cap"),
    [("ib_insync", 157), ("ib_insync", 165), ("ib_insync", 166), ("ib_insync", 176),
     ("ib_async", 157), ("ib_async", 176), ("ib_async", 177), ("ib_async", 178)],
)
async def test_order_fill_and_reject_over_a_session(lib: str, cap: int) -> None:
    """Over a real socket: an order's terms, its fill, commission and a reject's JSON arrive."""
    module = importlib.import_module(lib)
    async with FakeGateway(prices={"AAPL": 150.0}, fill_mode="manual", server_version=cap) as gw:
        ib = await connect(lib, gw, 4)
        try:
            contract = module.Stock("AAPL", "SMART", "USD")
            await ib.qualifyContractsAsync(contract)
            trade = ib.placeOrder(contract, module.LimitOrder("BUY", 7, 149.5, orderRef="v"))
            await round_trip(ib)
            ex = gw.fill_order(trade.order.orderId, quantity=3)
            await round_trip(ib)
            [fill] = trade.fills
            assert (fill.execution.execId, fill.execution.price) == (ex.exec_id, 149.5)
            assert fill.execution.time == ex.time.replace(microsecond=0)
            assert (fill.execution.shares, fill.execution.lastLiquidity) == (3.0, 1)
            assert (fill.commissionReport.execId, fill.commissionReport.commission) == (
                ex.exec_id, 1.0)
            assert trade.orderStatus.filled == 3.0 and trade.order.orderRef == "v"
            await gw.send_error(201, 4, "Order rejected - reason: size",
                                req_id=trade.order.orderId, advanced_reject_json=REJECT_JSON)
            await round_trip(ib)
            assert trade.advancedError == (REJECT_JSON if cap >= 166 else "")
        finally:
            ib.disconnect()


# -- ibkr-connection sim --server-version ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [((), {"ib_insync": 176, "ib_async": 178}),
     (("--server-version", "170"), {"ib_insync": 170, "ib_async": 170}),
     (("--server-version", "157"), {"ib_insync": 157, "ib_async": 157})],
)
async def test_sim_command_answers_each_client(argv: tuple[str, ...],
                                               expected: dict[str, int]) -> None:
    """``ibkr-connection sim`` speaks 178 by default; ``--server-version`` caps it."""
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    port = _free_port()
    args = parser.parse_args(["sim", "--port", str(port), "--duration", "5", *argv])
    server = asyncio.ensure_future(sim_cli.serve(args))
    try:
        for attempt in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02 * attempt)
        for n, (lib, version) in enumerate(expected.items(), start=1):
            ib = importlib.import_module(lib).IB()
            await ib.connectAsync("127.0.0.1", port, clientId=n, timeout=2)
            assert ib.client.serverVersion() == version
            ib.disconnect()
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


@pytest.mark.parametrize("value", ["156", "179", "latest"])
def test_sim_command_refuses_a_version_it_does_not_speak(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--server-version`` outside 157..178 is a usage error (exit 2) naming the range."""
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["sim", "--server-version", value])
    assert raised.value.code == 2
    assert "157..178" in capsys.readouterr().err
