"""A registry of what the bot subscribed to, re-issued after every reconnect.

IB forgets a client's subscriptions when the socket drops and after a 1101
("data lost"); the bot should not have to remember them. Each subscription is
a :class:`Subscription` handle that stays valid across reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from eventkit import Event

from ibkr_connection import adapter
from ibkr_connection.errors import SubscriptionError

logger = logging.getLogger(__name__)


class Subscription:
    """A request the manager re-issues after every reconnect and every 1101.

    Events:
        restoredEvent (handle): emitted after each re-issue.
        errorEvent (handle, error: SubscriptionError): the subscription could
            not be issued; ``handle.error`` says why.

    Attributes:
        name: a readable name for logs.
        restored: how many times it was re-issued after the first.
        issued: how many times it was issued in all.
        active: False once cancelled.
        error: why the latest issue failed (None once it succeeds).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.restored = 0
        self.issued = 0
        self.active = True
        self.error: SubscriptionError | None = None
        self.restoredEvent = Event("restoredEvent")
        self.errorEvent = Event("errorEvent")
        self._registry: SubscriptionRegistry | None = None
        self._ready: asyncio.Future[None] | None = None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the subscription is issued on the current session.

        Most requests are sent at once; a market-data subscription whose
        contract has no ``conId`` is qualified through the gateway first and
        sent one round trip later.

        Raises:
            SubscriptionError: the subscription could not be issued.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            if self.error is not None:
                self._ready.set_exception(self.error)
            elif self.issued:
                self._ready.set_result(None)
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    @property
    def pending(self) -> bool:
        """True while the request waits for something (e.g. a contract's qualification)."""
        return False

    def _sent(self) -> None:
        """Count a request that went out, and tell whoever waits for it."""
        self.issued += 1
        if self.issued > 1:
            self.restored += 1
        self.error = None
        if self._ready is not None and self._ready.done():
            self._ready = None
        if self._ready is not None:
            self._ready.set_result(None)
        if self._registry is not None:
            self._registry.sent(self)

    def _mark_failed(self, error: SubscriptionError) -> None:
        self.error = error
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
            # Retrieved by whoever waits; nobody may be waiting.
            self._ready.exception()
        elif self._ready is not None:
            self._ready = None
        logger.error("%s", error)
        self.errorEvent.emit(self, error)
        if self._registry is not None:
            self._registry.failed(self, error)

    def check(self, ib: Any) -> None:
        """Refuse, before anything is registered or sent, a request ``ib`` cannot make.

        Raises:
            UsageError: the request cannot be made on ``ib`` (see the subclasses).
        """

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
        self._qualifying: asyncio.Future[None] | None = None

    def check(self, ib: Any) -> None:
        """Refuse a contract of the other client library (the check ``place_order`` makes).

        Sent anyway, ib_insync writes an ib_async contract as garbage fields
        and the gateway answers error 320 long after ``wait_ready()`` returned.

        Raises:
            UsageError: the contract comes from ib_async and ``ib`` is
                ib_insync's, or the other way round.
        """
        adapter.check_same_backend(ib, self.contract)

    def issue(self, ib: Any, fresh_session: bool) -> None:
        """Request the market data (cancelling the dead stream first after a 1101).

        A contract without a ``conId`` is qualified through the gateway first
        (see :func:`~ibkr_connection.adapter.needs_qualified_contract`); the
        request follows when the answer comes (``await handle.wait_ready()``),
        or the handle fails with :class:`SubscriptionError` (an unknown or
        ambiguous contract).
        """
        if not fresh_session and self.ticker is not None:
            self.withdraw(ib)
        if adapter.needs_qualified_contract(ib, self.contract):
            self._qualifying = asyncio.ensure_future(self._qualify_then_request(ib))
            return
        self.ticker = ib.reqMktData(self.contract, self.generic_ticks, False, False)

    @property
    def pending(self) -> bool:
        """True while the contract is being qualified."""
        task = self._qualifying
        return task is not None and not task.done()

    async def _qualify_then_request(self, ib: Any) -> None:
        try:
            known = await adapter.qualify_contract(ib, self.contract)
        except (ConnectionError, OSError) as exc:
            # The session went away; the next session issues it again.
            logger.debug("qualifying %s: %r; retried on the next session", self.name, exc)
            return
        except Exception as exc:
            # Not a contract the client can even ask about (e.g. None): the handle
            # says so, as it would for a reqMktData that raised.
            self._mark_failed(SubscriptionError(f"{self.name}: could not be qualified: {exc!r}"))
            return
        if not self.active:
            return
        if not known:
            self._mark_failed(SubscriptionError(
                f"{self.name}: the gateway does not know this contract, or it is "
                "ambiguous; give a conId or more fields (exchange, currency, "
                "primaryExchange)"))
            return
        try:
            self.ticker = ib.reqMktData(self.contract, self.generic_ticks, False, False)
        except Exception as exc:
            self._mark_failed(SubscriptionError(f"{self.name}: reqMktData failed: {exc!r}"))
            return
        self._sent()

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
    """The subscriptions the bot asked for, in the order it asked.

    Args:
        on_failed: called with (subscription, error) when one cannot be issued.
    """

    def __init__(
        self,
        on_failed: Callable[[Subscription, SubscriptionError], None] | None = None,
        on_restored: Callable[[Subscription], None] | None = None,
    ) -> None:
        self._subscriptions: list[Subscription] = []
        self._on_failed = on_failed
        self._on_restored = on_restored

    def failed(self, subscription: Subscription, error: SubscriptionError) -> None:
        """Report a subscription that could not be issued."""
        if self._on_failed is not None:
            self._on_failed(subscription, error)

    def sent(self, subscription: Subscription) -> None:
        """Report a request that went out (a re-issue is a restoration)."""
        if subscription.issued > 1 and self._on_restored is not None:
            self._on_restored(subscription)

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

    def issue_all(self, ib: Any, fresh_session: bool) -> int:
        """Issue every subscription; a failing one is reported, the rest go on.

        Returns:
            How many were issued (or are on their way).
        """
        return sum(self.issue_one(ib, sub, fresh_session) for sub in list(self._subscriptions))

    def issue_new(self, ib: Any) -> int:
        """Issue the subscriptions never issued yet (nor on their way).

        Returns:
            How many were issued (or are on their way).
        """
        return sum(self.issue_one(ib, sub, fresh_session=True)
                   for sub in list(self._subscriptions) if not sub.issued and not sub.pending)

    def issue_one(self, ib: Any, subscription: Subscription, fresh_session: bool) -> bool:
        """Issue one subscription; a failure is reported on the handle, never raised.

        Returns:
            True if the request went out (or, for a contract being qualified,
            is on its way).
        """
        try:
            subscription.issue(ib, fresh_session)
        except Exception as exc:
            subscription._mark_failed(SubscriptionError(
                f"{subscription.name}: could not be issued: {exc!r}"))
            return False
        if not subscription.pending:
            subscription._sent()
        return True
