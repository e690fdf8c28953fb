"""Server versions the simulator speaks, and what changes at which one.

A TWS API client offers a range of server versions in its handshake
(``API\\0`` then ``v<min>..<max>``); the gateway answers with the one it
will speak, and every later message on that socket is laid out for it.
ib_insync 0.9.86 offers ``v157..176``, ib_async 2.x ``v157..178``
(``MinClientVersion`` / ``MaxClientVersion`` in their ``client.py``).
The simulator speaks every version from :data:`MIN_SERVER_VERSION` (157) to
:data:`MAX_SERVER_VERSION` (178) and answers like TWS: the highest version
in the client's range that it speaks, never above its cap
(``FakeGateway(server_version=N)``); see :func:`negotiate`.

The layouts that change between 157 and 178, for the messages the simulator
sends and the requests it parses. Each fact is from IB's ``ibapi``
(``server_versions.py`` names the version, ``decoder.py`` /
``orderdecoder.py`` read the message, ``client.py`` writes the request) and
was checked against the decoders and encoders of ib_insync 0.9.86 and
ib_async 2.1:

========  ==================  ==================================================
version   message             change
========  ==================  ==================================================
158       openOrder           + ``duration`` after ``usePriceMgmtAlgo``
                              (MIN_SERVER_VER_DURATION; ib_insync and ib_async
                              read it only from 159 on, so at 158 they leave it
                              unread: their bug, not TWS's layout)
158       placeOrder (in)     + ``duration``
160       openOrder           + ``postToAts``; placeOrder (in) too
                              (MIN_SERVER_VER_POST_TO_ATS)
162       openOrder           + ``autoCancelParent``; placeOrder (in) too
                              (MIN_SERVER_VER_AUTO_CANCEL_PARENT)
163       contractDetails     + ``sizeMinTick`` after ``stockType``, at 163 only
                              (MIN_SERVER_VER_FRACTIONAL_SIZE_SUPPORT)
164       contractDetails     - the version field after the message id,
                              - ``mdSizeMultiplier`` after ``minTick``,
                              + ``minSize``, ``sizeIncrement``,
                              ``suggestedSizeIncrement`` after ``stockType``
                              (MIN_SERVER_VER_SIZE_RULES)
166       errMsg              + ``advancedOrderRejectJson`` after the text
                              (MIN_SERVER_VER_ADVANCED_ORDER_REJECT)
166       placeOrder (in)     + ``advancedErrorOverride``
169       placeOrder (in)     + ``manualOrderTime``
          cancelOrder (in)    + ``manualOrderCancelTime``
                              (MIN_SERVER_VER_MANUAL_ORDER_TIME)
170       openOrder,          + ``minTradeQty``, ``minCompeteSize``,
          completedOrder      ``competeAgainstBestOffset``, ``midOffsetAtWhole``,
                              ``midOffsetAtHalf`` at the end
                              (MIN_SERVER_VER_PEGBEST_PEGMID_OFFSETS)
170       placeOrder (in)     + the same fields, each only when it applies
                              (IBKRATS, PEG BEST, PEG MID)
176       reqContractDetails  + ``issuerId`` (in) (MIN_SERVER_VER_BOND_ISSUERID;
                              the reply, contractDetails, does not change: the
                              new ``description``/``issuerId`` are read by
                              symbolSamples, which the simulator never sends)
177       openOrder,          - ``faProfile`` after ``faPercentage``
          completedOrder,     (MIN_SERVER_VER_FA_PROFILE_DESUPPORT)
          placeOrder (in)
178       execDetails         + ``pendingPriceRevision`` after ``lastLiquidity``
                              (MIN_SERVER_VER_PENDING_PRICE_REVISION)
========  ==================  ==================================================

Every other message the simulator sends or parses has one layout from 157 to
178. Versions 159 (MIN_SERVER_VER_MARKET_DATA_IN_SHARES) and 175
(MIN_SERVER_VER_HMDS_MARKET_DATA_IN_SHARES) change what sizes mean (shares
instead of lots), not where fields are; the simulator's sizes are the same at
every version.
"""

from __future__ import annotations

#: Lowest version the simulator speaks: the lowest either client offers.
MIN_SERVER_VERSION = 157

#: Highest version the simulator speaks, and its default cap: the highest
#: ib_async 2.x offers (ib_insync 0.9.86 stops at 176).
MAX_SERVER_VERSION = 178

# ibapi server_versions.py: MIN_SERVER_VER_DURATION = 158
DURATION = 158
# ibapi server_versions.py: MIN_SERVER_VER_POST_TO_ATS = 160
POST_TO_ATS = 160
# ibapi server_versions.py: MIN_SERVER_VER_AUTO_CANCEL_PARENT = 162
AUTO_CANCEL_PARENT = 162
# ibapi server_versions.py: MIN_SERVER_VER_FRACTIONAL_SIZE_SUPPORT = 163
FRACTIONAL_SIZE_SUPPORT = 163
# ibapi server_versions.py: MIN_SERVER_VER_SIZE_RULES = 164
SIZE_RULES = 164
# ibapi server_versions.py: MIN_SERVER_VER_ADVANCED_ORDER_REJECT = 166
ADVANCED_ORDER_REJECT = 166
# ibapi server_versions.py: MIN_SERVER_VER_MANUAL_ORDER_TIME = 169
MANUAL_ORDER_TIME = 169
# ibapi server_versions.py: MIN_SERVER_VER_PEGBEST_PEGMID_OFFSETS = 170
PEGBEST_PEGMID_OFFSETS = 170
# ibapi server_versions.py: MIN_SERVER_VER_BOND_ISSUERID = 176
BOND_ISSUERID = 176
# ibapi server_versions.py: MIN_SERVER_VER_FA_PROFILE_DESUPPORT = 177
FA_PROFILE_DESUPPORT = 177
# ibapi server_versions.py: MIN_SERVER_VER_PENDING_PRICE_REVISION = 178
PENDING_PRICE_REVISION = 178


def check_cap(version: int) -> int:
    """Return ``version`` if the simulator can be capped there.

    Args:
        version: The highest version the gateway should speak.

    Returns:
        The same version.

    Raises:
        ValueError: If it is outside 157..178.
    """
    if not MIN_SERVER_VERSION <= version <= MAX_SERVER_VERSION:
        raise ValueError(
            f"server version {version} not supported; the simulator speaks "
            f"{MIN_SERVER_VERSION}..{MAX_SERVER_VERSION}"
        )
    return version


def negotiate(low: int, high: int, cap: int) -> int | None:
    """Pick the version to speak with a client that offered ``low..high``.

    Like TWS: the highest version in the client's range that the server
    speaks. ``None`` when the ranges do not meet (the client is too old or
    too new); the transport then refuses the client.

    Args:
        low: Lowest version the client accepts.
        high: Highest version the client accepts.
        cap: Highest version this gateway speaks (157..178).

    Returns:
        The negotiated version, or ``None``.
    """
    version = min(high, cap)
    if version < max(low, MIN_SERVER_VERSION):
        return None
    return version
