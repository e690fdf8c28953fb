"""Positions of a sync bot's book: quantities from ``positionEvent``, values from the portfolio.

``positionEvent`` carries an account's quantity and average cost but no market
price; the portfolio updates (``updatePortfolioEvent``) carry the market
price, value and PnL. :class:`PositionBook` keeps both in one entry per
``(account, conId)``, with no I/O: it is fed the objects the events carry.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

logger = logging.getLogger(__name__)


def number(value: Any) -> float:
    """Return ``value`` as a float, 0.0 for IB's unset values (NaN, None, UNSET_DOUBLE)."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(result) or abs(result) >= 1e300 else result


class PositionBook:
    """Positions keyed by ``(account, conId)``, updated under :attr:`lock`.

    Attributes:
        positions: ``(account, conId)`` -> position entry (symbol, quantity,
            avg_price, market_price, market_value, unrealized_pnl,
            realized_pnl, account).
        lock: held while an entry changes (a subclass may share its own).
    """

    positions: dict[tuple[str, int], dict[str, Any]]
    lock: threading.RLock

    def on_position(self, position: Any) -> None:
        """Book a ``Position``: quantity and average cost."""
        with self.lock:
            entry = self._position(position.account, position.contract)
            entry["quantity"] = number(position.position)
            entry["avg_price"] = number(position.avgCost)
        logger.debug("Position update: %s %s, avg cost %.2f", position.contract.symbol,
                     position.position, number(position.avgCost))

    def on_portfolio(self, item: Any) -> None:
        """Book a ``PortfolioItem``: market price, value and PnL."""
        with self.lock:
            new = (item.account, int(item.contract.conId)) not in self.positions
            entry = self._position(item.account, item.contract)
            if new:
                # positionEvent owns these; until it speaks, the portfolio's are right.
                entry["quantity"] = number(item.position)
                entry["avg_price"] = number(item.averageCost)
            entry["market_price"] = number(item.marketPrice)
            entry["market_value"] = number(item.marketValue)
            entry["unrealized_pnl"] = number(item.unrealizedPNL)
            entry["realized_pnl"] = number(item.realizedPNL)

    def _position(self, account: str, contract: Any) -> dict[str, Any]:
        key = (account, int(contract.conId))
        entry = self.positions.get(key)
        if entry is None:
            entry = self.positions[key] = {
                "symbol": contract.symbol,
                "quantity": 0.0,
                "avg_price": 0.0,
                "market_price": 0.0,
                "market_value": 0.0,
                "unrealized_pnl": 0.0,
                "realized_pnl": 0.0,
                "account": account,
            }
        return entry


__all__ = ["PositionBook", "number"]
