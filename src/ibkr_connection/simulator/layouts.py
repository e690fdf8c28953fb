"""Incoming request layouts: the fields of each request at a negotiated server version.

TWS reads a request field by field, in the order IB's clients write it for the
version both sides agreed on. This module holds those layouts for every
request the simulator acts on, written from IB's ``ibapi`` ``client.py`` and
checked against ib_insync 0.9.86's and ib_async 2.1's ``client.py`` (which
send the same fields). Requests whose layout is the same at every version
157..178 are rows of :data:`FIXED`; ``placeOrder``, ``cancelOrder``,
``reqContractDetails`` (which change with the version, see
:mod:`~ibkr_connection.wire.versions`) and ``reqMktData`` (whose combo
legs make its length vary) have a reader each.

A request that does not match its layout (a field missing, a field left
over, a number that is not one) raises :class:`LayoutError`; the gateway
answers it as TWS does, with error 320 "Error reading request", and the
session goes on. Numeric fields are checked for their type, as TWS parses
them; a text field takes anything. Like TWS, a reader cannot see every
misplaced field: a layout shifted by one field can happen to read as another
valid request (empty fields parse as anything), and is then caught, if at
all, by the count at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ibkr_connection.wire import versions as v

#: Largest finite double, IB's "unset" price (clients send it when not
#: told to send an empty field instead).
UNSET_DOUBLE = 1.7976931348623157e308

#: Fields after the type of each order condition, by condition type (ibapi
#: order_condition.py: price 1, time 3, margin 4, execution 5, volume 6,
#: percent change 7; the counts equal ib_async's condition dataclasses less
#: their ``condType``).
CONDITION_FIELDS: dict[int, int] = {1: 6, 3: 3, 4: 3, 5: 4, 6: 5, 7: 5}

#: Requests with one layout at every version 157..178: the names of their
#: fields after the message id, a ``#`` prefix on the integers that are checked.
#: (ibapi client.py, e.g. reqExecutions writes VERSION = 3, reqId, the filter's
#: clientId, acctCode, time, symbol, secType, exchange, side.)
FIXED: dict[str, tuple[str, ...]] = {
    "startApi": ("#version", "#clientId", "optionalCapabilities"),
    "reqCurrentTime": ("#version",),
    "reqIds": ("#version", "#numIds"),
    "reqManagedAccts": ("#version",),
    "reqPositions": ("#version",),
    "cancelPositions": ("#version",),
    "reqOpenOrders": ("#version",),
    "reqAllOpenOrders": ("#version",),
    "reqCompletedOrders": ("#apiOnly",),
    "reqGlobalCancel": ("#version",),
    "reqAccountUpdates": ("#version", "#subscribe", "acctCode"),
    "reqAccountUpdatesMulti": ("#version", "#reqId", "account", "modelCode", "#ledgerAndNLV"),
    "reqPositionsMulti": ("#version", "#reqId", "account", "modelCode"),
    "reqAccountSummary": ("#version", "#reqId", "groupName", "tags"),
    "reqExecutions": (
        "#version",
        "#reqId",
        "#clientId",
        "acctCode",
        "time",
        "symbol",
        "secType",
        "exchange",
        "side",
    ),
    "cancelMktData": ("#version", "#reqId"),
}


class LayoutError(Exception):
    """A request whose fields do not match its layout at the negotiated version.

    Attributes:
        request: The request's name, e.g. ``"placeOrder"``.
        detail: What could not be read.
        req_id: The request's (or order's) id if it was read, else -1.
    """

    def __init__(self, request: str, detail: str, req_id: int = -1) -> None:
        super().__init__(f"{request}: {detail}")
        self.request = request
        self.detail = detail
        self.req_id = req_id

    @property
    def text(self) -> str:
        """The error 320 text, worded as TWS starts it."""
        return f"Error reading request. {self.detail}"


class FieldReader:
    """Reads a request's fields in order, raising :class:`LayoutError` on a mismatch.

    Args:
        request: The request's name (for the error).
        fields: All fields, the message id first (it is skipped).
    """

    def __init__(self, request: str, fields: list[str]) -> None:
        self._request = request
        self._fields = fields
        self._pos = 1
        self._last = "message id"
        self.req_id = -1

    def fail(self, detail: str) -> LayoutError:
        """The error for this request, quoting its id once read."""
        return LayoutError(self._request, detail, self.req_id)

    def text(self, name: str) -> str:
        """Read one field as text."""
        if self._pos >= len(self._fields):
            raise self.fail(f"Unable to parse field: '{name}': no more fields")
        value = self._fields[self._pos]
        self._pos += 1
        self._last = name
        return value

    def skip(self, *names: str) -> None:
        """Read fields the simulator does not use (they only count)."""
        for name in names:
            self.text(name)

    def integer(self, name: str, *, is_id: bool = False) -> int:
        """Read an integer field (empty reads as 0).

        Args:
            name: The field's name.
            is_id: The request's (or order's) id, quoted by a later error.

        Returns:
            The value.
        """
        value = self.text(name)
        try:
            number = int(value) if value else 0
        except ValueError:
            raise self.fail(
                f"Unable to parse field: '{name}' for input string: '{value}'"
            ) from None
        if is_id:
            self.req_id = number
        return number

    def number(self, name: str) -> float:
        """Read a decimal field (empty reads as 0; ``Infinite`` as infinity)."""
        value = self.text(name)
        if value == "Infinite":
            return math.inf
        try:
            return float(value) if value else 0.0
        except ValueError:
            raise self.fail(
                f"Unable to parse field: '{name}' for input string: '{value}'"
            ) from None

    def ints(self, *names: str) -> None:
        """Read integer fields the simulator does not use (counted and type-checked)."""
        for name in names:
            self.integer(name)

    def numbers(self, *names: str) -> None:
        """Read decimal fields the simulator does not use (counted and type-checked)."""
        for name in names:
            self.number(name)

    def count(self, name: str) -> int:
        """Read the count of a repeated group; a negative count is unreadable."""
        n = self.integer(name)
        if n < 0:
            raise self.fail(f"Unable to parse field: '{name}' for input string: '{n}'")
        return n

    def done(self) -> None:
        """Check that no field is left over."""
        extra = len(self._fields) - self._pos
        if extra > 0:
            raise self.fail(f"{extra} unexpected field(s) after '{self._last}'")


def fixed(name: str, fields: list[str]) -> dict[str, str]:
    """Read a request of :data:`FIXED`; the ``#`` fields must be integers.

    Args:
        name: The request's name.
        fields: Its fields, the message id first.

    Returns:
        Field name (without ``#``) -> text.

    Raises:
        LayoutError: If the fields do not match.
    """
    last = _LAST_READ.get(name)
    if last is not None and last[0] == fields:
        # The same fields as the last good one of its name (a heartbeat's
        # reqCurrentTime is always "49", "1"): read already.
        return dict(last[1])
    specs = _FIXED_KEYS[name]
    if len(fields) == len(specs) + 1:
        # The usual request matches: read it without a FieldReader (an idle
        # month reads ~837,000 reqCurrentTime, issue 21). Any mismatch, or a
        # number that is not one, goes the reader's way below, which words the error.
        values: dict[str, str] = {}
        for (key, numeric), value in zip(specs, fields[1:], strict=True):
            if numeric:
                try:
                    values[key] = str(int(value) if value else 0)
                except ValueError:
                    break
            else:
                values[key] = value
        else:
            _LAST_READ[name] = (fields.copy(), values.copy())
            return values
    reader = FieldReader(name, fields)
    values = {}
    for spec in FIXED[name]:
        key = spec.removeprefix("#")
        if spec.startswith("#"):
            values[key] = str(reader.integer(key, is_id=key == "reqId"))
        else:
            values[key] = reader.text(key)
    reader.done()
    return values


#: :data:`FIXED` read once: each request's (field name, is an integer) pairs.
_FIXED_KEYS: dict[str, tuple[tuple[str, bool], ...]] = {
    name: tuple((spec.removeprefix("#"), spec.startswith("#")) for spec in specs)
    for name, specs in FIXED.items()
}

#: The fields of the last request of each :data:`FIXED` name that read well,
#: and what they read as: one entry per name, so it stays small.
_LAST_READ: dict[str, tuple[list[str], dict[str, str]]] = {}


@dataclass(frozen=True)
class ContractRef:
    """The contract fields of a request that the simulator uses.

    Attributes:
        con_id: Contract id (0 if not given).
        symbol: Symbol.
        sec_type: Security type.
        exchange: Routing exchange.
        currency: Currency.
    """

    con_id: int
    symbol: str
    sec_type: str
    exchange: str
    currency: str


def _contract(r: FieldReader) -> ContractRef:
    """conId .. tradingClass, as every request writes a contract (12 fields)."""
    con_id = r.integer("conId")
    symbol, sec_type = r.text("symbol"), r.text("secType")
    r.skip("lastTradeDateOrContractMonth")
    r.number("strike")
    r.skip("right", "multiplier")
    exchange = r.text("exchange")
    r.skip("primaryExchange")
    currency = r.text("currency")
    r.skip("localSymbol", "tradingClass")
    return ContractRef(con_id, symbol, sec_type, exchange, currency)


@dataclass(frozen=True)
class OrderRequest:
    """The terms of a ``placeOrder`` that the simulator books.

    Attributes:
        order_id: Client order id.
        contract: The contract.
        action: ``BUY`` or ``SELL``.
        total_quantity: Quantity.
        order_type: Order type.
        lmt_price: Limit price (0 if empty).
        aux_price: Aux price (0 if empty).
        tif: Time in force.
        account: Account (may be empty).
        order_ref: Order reference.
    """

    order_id: int
    contract: ContractRef
    action: str
    total_quantity: float
    order_type: str
    lmt_price: float
    aux_price: float
    tif: str
    account: str
    order_ref: str


def place_order(fields: list[str], version: int) -> OrderRequest:
    """Read a ``placeOrder`` (ibapi client.py placeOrder; no version field since 145).

    Args:
        fields: Its fields, the message id first.
        version: The connection's server version.

    Returns:
        The order's terms.

    Raises:
        LayoutError: If the fields do not match the layout of ``version``.
    """
    r = FieldReader("placeOrder", fields)
    order_id = r.integer("orderId", is_id=True)
    contract = _contract(r)
    r.skip("secIdType", "secId")
    action = r.text("action")
    quantity = r.number("totalQuantity")
    order_type = r.text("orderType")
    lmt_price, aux_price = r.number("lmtPrice"), r.number("auxPrice")
    tif = r.text("tif")
    r.skip("ocaGroup")
    account = r.text("account")
    r.skip("openClose")
    r.ints("origin")
    order_ref = r.text("orderRef")
    # flags are integers on the wire, as TWS reads them
    r.ints("transmit", "parentId", "blockOrder", "sweepToFill", "displaySize")
    r.ints("triggerMethod", "outsideRth", "hidden")
    if contract.sec_type == "BAG":
        for _ in range(r.count("comboLegsCount")):
            r.ints("legConId", "legRatio")
            r.skip("legAction", "legExchange")
            r.ints("legOpenClose", "legShortSaleSlot")
            r.skip("legDesignatedLocation")
            r.ints("legExemptCode")
        for _ in range(r.count("orderComboLegsCount")):
            r.numbers("legPrice")
        for _ in range(r.count("smartComboRoutingParamsCount")):
            r.skip("tag", "value")
    r.skip("sharesAllocation")
    r.numbers("discretionaryAmt")
    r.skip("goodAfterTime", "goodTillDate", "faGroup", "faMethod", "faPercentage")
    if version < v.FA_PROFILE_DESUPPORT:
        r.skip("faProfile")
    r.skip("modelCode")
    r.ints("shortSaleSlot")
    r.skip("designatedLocation")
    r.ints("exemptCode", "ocaType")
    r.skip("rule80A", "settlingFirm")
    r.ints("allOrNone", "minQty")
    r.numbers("percentOffset")
    r.ints("eTradeOnly", "firmQuoteOnly")
    r.numbers("nbboPriceCap")
    r.ints("auctionStrategy")
    r.numbers("startingPrice", "stockRefPrice", "delta", "stockRangeLower", "stockRangeUpper")
    r.ints("overridePercentageConstraints")
    r.numbers("volatility")
    r.ints("volatilityType")
    dn_order_type = r.text("deltaNeutralOrderType")
    r.numbers("deltaNeutralAuxPrice")
    if dn_order_type:
        r.ints("deltaNeutralConId")
        r.skip("deltaNeutralSettlingFirm", "deltaNeutralClearingAccount")
        r.skip("deltaNeutralClearingIntent", "deltaNeutralOpenClose")
        r.ints("deltaNeutralShortSale", "deltaNeutralShortSaleSlot")
        r.skip("deltaNeutralDesignatedLocation")
    r.ints("continuousUpdate", "referencePriceType")
    r.numbers("trailStopPrice", "trailingPercent")
    r.ints("scaleInitLevelSize", "scaleSubsLevelSize")
    if 0.0 < r.number("scalePriceIncrement") < UNSET_DOUBLE:
        r.numbers("scalePriceAdjustValue")
        r.ints("scalePriceAdjustInterval")
        r.numbers("scaleProfitOffset")
        r.ints("scaleAutoReset", "scaleInitPosition", "scaleInitFillQty", "scaleRandomPercent")
    r.skip("scaleTable", "activeStartTime", "activeStopTime")
    if r.text("hedgeType"):
        r.skip("hedgeParam")
    r.ints("optOutSmartRouting")
    r.skip("clearingAccount", "clearingIntent")
    r.ints("notHeld")
    if r.integer("deltaNeutralContractPresent"):
        r.ints("deltaNeutralContractConId")
        r.numbers("deltaNeutralContractDelta", "deltaNeutralContractPrice")
    if r.text("algoStrategy"):
        for _ in range(r.count("algoParamsCount")):
            r.skip("tag", "value")
    r.skip("algoId")
    r.ints("whatIf")
    r.skip("orderMiscOptions")
    r.ints("solicited", "randomizeSize", "randomizePrice")
    if order_type in ("PEG BENCH", "PEGBENCH"):
        r.ints("referenceContractId", "isPeggedChangeAmountDecrease")
        r.numbers("peggedChangeAmount", "referenceChangeAmount")
        r.skip("referenceExchangeId")
    _conditions(r)
    r.skip("adjustedOrderType")
    r.numbers("triggerPrice", "lmtPriceOffset", "adjustedStopPrice", "adjustedStopLimitPrice")
    r.numbers("adjustedTrailingAmount")
    r.ints("adjustableTrailingUnit")
    r.skip("extOperator", "softDollarTierName", "softDollarTierValue")
    r.numbers("cashQty")
    r.skip("mifid2DecisionMaker", "mifid2DecisionAlgo", "mifid2ExecutionTrader")
    r.skip("mifid2ExecutionAlgo")
    r.ints("dontUseAutoPriceForHedge", "isOmsContainer", "discretionaryUpToLimitPrice")
    r.ints("usePriceMgmtAlgo")
    if version >= v.DURATION:
        r.ints("duration")
    if version >= v.POST_TO_ATS:
        r.ints("postToAts")
    if version >= v.AUTO_CANCEL_PARENT:
        r.ints("autoCancelParent")
    if version >= v.ADVANCED_ORDER_REJECT:
        r.skip("advancedErrorOverride")
    if version >= v.MANUAL_ORDER_TIME:
        r.skip("manualOrderTime")
    if version >= v.PEGBEST_PEGMID_OFFSETS:
        _peg_best_mid(r, contract.exchange, order_type)
    r.done()
    return OrderRequest(
        order_id,
        contract,
        action,
        quantity,
        order_type,
        lmt_price,
        aux_price,
        tif,
        account,
        order_ref,
    )


def _conditions(r: FieldReader) -> None:
    """The order's conditions: a count, each condition's type and fields, two flags."""
    n = r.count("conditionsCount")
    for _ in range(n):
        kind = r.integer("conditionType")
        size = CONDITION_FIELDS.get(kind)
        if size is None:
            raise r.fail(f"Unable to parse field: 'conditionType' for input string: '{kind}'")
        r.skip(*[f"condition{kind}Field{i}" for i in range(size)])
    if n:
        r.skip("conditionsIgnoreRth", "conditionsCancelOrder")


def _peg_best_mid(r: FieldReader, exchange: str, order_type: str) -> None:
    """The version-170 fields, each written only where it applies (ibapi placeOrder)."""
    if exchange == "IBKRATS":
        r.ints("minTradeQty")
    mid_offsets = order_type in ("PEG MID", "PEGMID")
    if order_type in ("PEG BEST", "PEGBEST"):
        r.ints("minCompeteSize")
        # "up to mid" (an infinite offset) brings the mid offsets along
        mid_offsets = r.number("competeAgainstBestOffset") == math.inf
    if mid_offsets:
        r.numbers("midOffsetAtWhole", "midOffsetAtHalf")


def cancel_order(fields: list[str], version: int) -> int:
    """Read a ``cancelOrder``: version 1, orderId, and from 169 on manualOrderCancelTime.

    Args:
        fields: Its fields, the message id first.
        version: The connection's server version.

    Returns:
        The order id.

    Raises:
        LayoutError: If the fields do not match the layout of ``version``.
    """
    r = FieldReader("cancelOrder", fields)
    r.integer("version")
    order_id = r.integer("orderId", is_id=True)
    if version >= v.MANUAL_ORDER_TIME:
        r.skip("manualOrderCancelTime")
    r.done()
    return order_id


@dataclass(frozen=True)
class ContractRequest:
    """A ``reqContractDetails``.

    Attributes:
        req_id: Request id.
        contract: The contract asked about.
    """

    req_id: int
    contract: ContractRef


def contract_details(fields: list[str], version: int) -> ContractRequest:
    """Read a ``reqContractDetails``: version 8, reqId, the contract, includeExpired,
    secIdType, secId, and from 176 on issuerId.

    Args:
        fields: Its fields, the message id first.
        version: The connection's server version.

    Returns:
        The request.

    Raises:
        LayoutError: If the fields do not match the layout of ``version``.
    """
    r = FieldReader("reqContractDetails", fields)
    r.integer("version")
    req_id = r.integer("reqId", is_id=True)
    contract = _contract(r)
    r.skip("includeExpired", "secIdType", "secId")
    if version >= v.BOND_ISSUERID:
        r.skip("issuerId")
    r.done()
    return ContractRequest(req_id, contract)


@dataclass(frozen=True)
class MktDataRequest:
    """A ``reqMktData``.

    Attributes:
        req_id: Request id.
        contract: The contract to quote.
        snapshot: One quote, then tickSnapshotEnd.
    """

    req_id: int
    contract: ContractRef
    snapshot: bool


def mkt_data(fields: list[str], version: int) -> MktDataRequest:
    """Read a ``reqMktData`` (version 11; the same at every version 157..178).

    Args:
        fields: Its fields, the message id first.
        version: The connection's server version.

    Returns:
        The request.

    Raises:
        LayoutError: If the fields do not match.
    """
    r = FieldReader("reqMktData", fields)
    r.integer("version")
    req_id = r.integer("reqId", is_id=True)
    contract = _contract(r)
    if contract.sec_type == "BAG":
        for _ in range(r.count("comboLegsCount")):
            r.skip("legConId", "ratio", "legAction", "legExchange")
    if r.integer("deltaNeutralContractPresent"):
        r.skip("deltaNeutralConId", "deltaNeutralDelta", "deltaNeutralPrice")
    r.skip("genericTickList")
    snapshot = r.integer("snapshot") == 1
    r.skip("regulatorySnapshot", "mktDataOptions")
    r.done()
    return MktDataRequest(req_id, contract, snapshot)
