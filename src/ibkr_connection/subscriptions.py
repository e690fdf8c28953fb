"""A registry of what the bot subscribed to, re-issued after every reconnect.

IB forgets a client's subscriptions when the socket drops and after a 1101
("data lost"); the bot should not have to remember them. Each subscription is
a :class:`Subscription` handle that stays valid across reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from eventkit import Event

logger = logging.getLogger(__name__)


class Subscription:
    """A request the manager re-issues after every reconnect and every 1101.

    Events:
        restoredEvent (handle): emitted after each re-issue.

    Attributes:
        name: a readable name for logs.
        restored: how many times it was re-issued after the first.
        issued: how many times it was issued in all.
        active: False once cancelled.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.restored = 0
        self.issued = 0
        self.active = True
        self.restoredEvent = Event("restoredEvent")
        self._registry: SubscriptionRegistry | None = None

    def issue(self, ib: Any, fresh_session: bool) -> None:
        """Send the request on ``ib``.

        Args:
            ib: the IB object.
            fresh_session: True on a new socket (IB forgot everything);
                False after a 1101 on the same socket (cancel, then re-request).
        """
        raise NotImplementedError

    def withdraw(self, ib: Any) -> None:
        """Cancel the request on ``ib`` if the session is up."""

    def cancel(self) -> None:
        """Stop the subscription and never re-issue it."""
        if self._registry is not None:
            self._registry.cancel(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} issued={self.issued}>"


class MarketDataSubscription(Subscription):
    """Streaming market data for one contract.

    Attributes:
        contract: the contract.
        ticker: the live ``Ticker``; ib_insync builds a new one after a
            gateway-side drop, and this always names the current one.
    """

    def __init__(self, contract: Any, generic_ticks: str = "", snapshot: bool = False) -> None:
        super().__init__(f"market data {getattr(contract, 'localSymbol', '') or contract}")
        self.contract = contract
        self.generic_ticks = generic_ticks
        self.ticker: Any = None

    def issue(self, ib: Any, fresh_session: bool) -> None:
        """Request the market data (cancelling the dead stream first after a 1101)."""
        if not fresh_session and self.ticker is not None:
            self.withdraw(ib)
        self.ticker = ib.reqMktData(self.contract, self.generic_ticks, False, False)

    def withdraw(self, ib: Any) -> None:
        """Cancel the market data stream."""
        try:
            ib.cancelMktData(self.contract)
        except (ConnectionError, OSError, KeyError, ValueError) as exc:
            logger.debug("cancelMktData for %s: %r", self.name, exc)


class AccountUpdatesSubscription(Subscription):
    """Account values and portfolio updates for one account."""

    def __init__(self, account: str) -> None:
        super().__init__(f"account updates {account}")
        self.account = account

    def issue(self, ib: Any, fresh_session: bool) -> None:
        """Subscribe to the account's updates (no waiting for the download)."""
        ib.client.reqAccountUpdates(True, self.account)

    def withdraw(self, ib: Any) -> None:
        """Unsubscribe from the account's updates."""
        ib.client.reqAccountUpdates(False, self.account)


class PnLSubscription(Subscription):
    """Daily, unrealized and realized PnL of an account."""

    def __init__(self, account: str, model_code: str = "") -> None:
        super().__init__(f"pnl {account}")
        self.account = account
        self.model_code = model_code
        self.pnl: Any = None

    def issue(self, ib: Any, fresh_session: bool) -> None:
        """Request PnL updates."""
        if not fresh_session and self.pnl is not None:
            self.withdraw(ib)
        self.pnl = ib.reqPnL(self.account, self.model_code)

    def withdraw(self, ib: Any) -> None:
        """Cancel PnL updates."""
        try:
            ib.cancelPnL(self.account, self.model_code)
        except (ConnectionError, OSError, KeyError, ValueError) as exc:
            logger.debug("cancelPnL for %s: %r", self.name, exc)


class CallableSubscription(Subscription):
    """Any request: ``issue(ib)`` is called after every (re)connect and 1101."""

    def __init__(self, name: str, issue: Callable[[Any], object],
                 withdraw: Callable[[Any], object] | None = None) -> None:
        super().__init__(name)
        self._issue = issue
        self._withdraw = withdraw
        self.result: object = None

    def issue(self, ib: Any, fresh_session: bool) -> None:
        """Call the user's function."""
        self.result = self._issue(ib)

    def withdraw(self, ib: Any) -> None:
        """Call the user's withdraw function, if any."""
        if self._withdraw is not None:
            self._withdraw(ib)


class SubscriptionRegistry:
    """The subscriptions the bot asked for, in the order it asked."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def __iter__(self) -> Any:
        return iter(list(self._subscriptions))

    def __len__(self) -> int:
        return len(self._subscriptions)

    def add(self, subscription: Subscription) -> Subscription:
        """Register a subscription."""
        subscription._registry = self
        self._subscriptions.append(subscription)
        return subscription

    def cancel(self, subscription: Subscription) -> None:
        """Unregister a subscription (the caller withdraws it if connected)."""
        subscription.active = False
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def issue_all(self, ib: Any, fresh_session: bool,
                  on_issued: Callable[[Subscription], None]) -> int:
        """Issue every subscription; a failing one is logged, the rest go on.

        Returns:
            How many were issued.
        """
        count = 0
        for subscription in list(self._subscriptions):
            try:
                subscription.issue(ib, fresh_session)
            except Exception:
                logger.exception("re-issuing %s failed", subscription.name)
                continue
            subscription.issued += 1
            if subscription.issued > 1:
                subscription.restored += 1
            count += 1
            on_issued(subscription)
        return count
