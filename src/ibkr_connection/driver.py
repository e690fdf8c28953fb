"""The asyncio driver: the connection machine's effects, performed on a real ``IB``.

:class:`Driver` owns every task and timer of one connection. It implements
the machine's :class:`~ibkr_connection.outputs.Effects` port (attempts,
timers, the heartbeat, teardown, account selection, subscriptions) and turns
what happens into machine inputs: IB's callbacks (``errorEvent`` through the
code table, ``disconnectedEvent``), the results of its attempts (through the
failure table), its timers and heartbeat probes. It forwards every input (a
timer or probe it cancelled stays silent); the machine's table decides what
each one means in the current state. Order, tick
and position messages never pass through it: the only handlers it adds to
``IB`` are for errors, disconnects and new orders (to keep the order-id
high-water mark).

The :class:`~ibkr_connection.manager.ConnectionManager` builds one driver per
manager and hands it the function that feeds the machine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any

from ibkr_connection import adapter, codes
from ibkr_connection.clock import Clock, TimerHandle
from ibkr_connection.config import ConnectionConfig, mask_account
from ibkr_connection.controller import Controller
from ibkr_connection.errors import AccountError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.outputs import Effect
from ibkr_connection.subscriptions import SubscriptionRegistry

logger = logging.getLogger(__name__)


class Driver:
    """The machine's effects, performed on asyncio: attempts, timers, heartbeat, socket.

    Args:
        ib: the ``ib_insync.IB`` (or ``ib_async.IB``) object to drive.
        config: where and how to connect.
        clock: the injected clock; every timer runs on it.
        feed: feeds one input to the machine (the manager's, which journals it).
        subscriptions: the registry re-issued on every session.
        on_heartbeat: called with the round-trip time of an answered probe.
        controller: restarts the gateway (IBC, a command), or None.
        commands: effects the caller carries out itself (the manager's order
            tracker: ``begin_session``, ``end_session``), by name.

    Attributes:
        account: the account the last successful attempt selected.
        high_water: the lowest order id the client may hand out next.
        last_error: the exception of the last failed attempt.
    """

    def __init__(
        self,
        ib: Any,
        config: ConnectionConfig,
        clock: Clock,
        feed: Callable[[Input], object],
        subscriptions: SubscriptionRegistry,
        on_heartbeat: Callable[[float], object],
        controller: Controller | None = None,
        commands: dict[str, Callable[[], None]] | None = None,
    ) -> None:
        self.ib = ib
        self.config = config
        self._clock = clock
        self._feed = feed
        self._subscriptions = subscriptions
        self._on_heartbeat = on_heartbeat
        self._attempt_task: asyncio.Task[None] | None = None
        self._retry: TimerHandle | None = None
        self._restore: TimerHandle | None = None
        self._heartbeat: TimerHandle | None = None
        self._probe_task: asyncio.Future[Any] | None = None
        self._heartbeat_on = False
        self._data_hook: tuple[Any, Callable[..., None]] | None = None
        #: True while the heartbeat sleeps until heartbeat_idle after the last activity.
        self._quiet = False
        #: The running probe's answer handler, when the data hook calls it (see _probe).
        self._probe_done: Callable[[asyncio.Future[Any]], None] | None = None
        self._probe_deadline: TimerHandle | None = None
        self._last_count = -1
        self._last_activity = 0.0
        self._unwatch_ids: Callable[[], None] | None = None
        self._unwatch_sync: Callable[[], None] | None = None
        self._sync_catcher = adapter.SyncTimeoutCatcher()
        #: Relays a socket closed mid-handshake to the attempt (connected once, in bind).
        self._socket_watch: adapter.SocketWatch | None = None
        self._unwatch_socket: Callable[[], None] | None = None
        #: Masks the account ids in IB's message text as the client's own lines are.
        self._mask_accounts_in = adapter.account_masker(ib)
        self.account = ""
        #: The accounts the last successful attempt reported (select_account reads them).
        self._accounts: tuple[str, ...] = ()
        self.high_water = 0
        self.last_error: Exception | None = None
        self.controller = controller
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_timer: TimerHandle | None = None
        self._farm_timer: TimerHandle | None = None
        self._gateway_probe: asyncio.Task[None] | None = None
        self._controller_tasks: set[asyncio.Task[None]] = set()
        #: The commands a step's effects may name (outputs.Effects), by name.
        self._commands: dict[str, Callable[..., None]] = {
            "start_attempt": self.start_attempt,
            "schedule_retry": self.schedule_retry,
            "cancel_retry": self.cancel_retry,
            "start_restore_timer": self.start_restore_timer,
            "cancel_restore_timer": self.cancel_restore_timer,
            "select_account": self.select_account,
            "refuse_account": self.refuse_account,
            "restore_subscriptions": self.restore_subscriptions,
            "issue_new_subscriptions": self.issue_new_subscriptions,
            "start_heartbeat": self.start_heartbeat,
            "stop_heartbeat": self.stop_heartbeat,
            "tear_down": self.tear_down,
            "send_restart": self.send_restart,
            "start_restart_timer": self.start_restart_timer,
            "cancel_restart_timer": self.cancel_restart_timer,
            "probe_gateway": self.probe_gateway,
            "cancel_probe": self.cancel_probe,
            "send_reconnect_data": self.send_reconnect_data,
            "start_farm_timer": self.start_farm_timer,
            "cancel_farm_timer": self.cancel_farm_timer,
            **(commands or {}),
        }

    def perform(self, effects: Iterable[Effect]) -> int:
        """Carry out a step's effects, in order; one that raises is logged, the rest run.

        Returns:
            How many of them raised (the manager's safety net acts on any).
        """
        commands = self._commands
        failed = 0
        for effect in effects:
            try:
                commands[effect.name](*effect.args)
            except Exception:
                failed += 1
                logger.exception("effect %s%r failed (effects must not raise)",
                                 effect.name, effect.args)
        return failed

    # -- IB's callbacks -> inputs -------------------------------------------------------

    def bind(self) -> None:
        """Add the driver's handlers to the ``IB`` object's events."""
        ib = self.ib
        ib.errorEvent += self._on_ib_error
        ib.disconnectedEvent += self._on_ib_disconnected
        ib.newOrderEvent += self._on_new_order
        self._unwatch_ids = adapter.watch_request_ids(ib, self.note_request_id)
        self._unwatch_sync = adapter.watch_sync_timeouts(ib, self._sync_catcher)
        watch = adapter.SocketWatch()
        self._unwatch_socket = adapter.watch_socket(ib, watch)
        self._socket_watch = watch if self._unwatch_socket is not None else None

    def release(self) -> None:
        """Remove every handler :meth:`bind` added."""
        ib = self.ib
        ib.errorEvent -= self._on_ib_error
        ib.disconnectedEvent -= self._on_ib_disconnected
        ib.newOrderEvent -= self._on_new_order
        if self._unwatch_ids is not None:
            self._unwatch_ids()
            self._unwatch_ids = None
        if self._unwatch_sync is not None:
            self._unwatch_sync()
            self._unwatch_sync = None
        if self._unwatch_socket is not None:
            self._unwatch_socket()
            self._unwatch_socket = None
            self._socket_watch = None

    def _on_ib_error(self, req_id: int, code: int, message: str, contract: Any = None) -> None:
        info = _code_info(code)
        if info is None and req_id >= 0:
            return
        # IB's text may name the account (321, 2100-range notices, an order
        # rejection's "account DU..."): masked before it reaches a log line, or
        # a transition's cause.
        # Every account id has digits; the farm notices of a connect have none.
        if message and self.config.mask_accounts and _has_digit(message):
            message = self._mask_accounts_in(message)
        if info is None:
            logger.warning("IB code %d (not in the code table, no state change): %s",
                           code, message)
            return
        # Three farm notices arrive with every connect: build nothing unless wanted.
        if logger.isEnabledFor(info.level):
            logger.log(info.level, "IB %d (%s): %s", code, info.meaning, message)
        inp = _classify(code, message)
        if inp is not None:
            self._feed(inp)

    def _on_ib_disconnected(self) -> None:
        # Also while an attempt runs: the table says what a close means then.
        self._feed(Input(InputKind.SOCKET_CLOSED, message="API socket closed"))

    def _on_new_order(self, trade: Any) -> None:
        order_id = int(getattr(trade.order, "orderId", 0) or 0)
        if order_id >= self.high_water:
            self.high_water = order_id + 1

    def note_request_id(self, next_id: int) -> None:
        """Raise the high-water mark to the client's counter (read as it is zeroed)."""
        if next_id > self.high_water:
            self.high_water = next_id

    # -- attempts -------------------------------------------------------------------

    def start_attempt(self, attempt: int, client_id: int, port: int) -> None:
        """Start attempt number ``attempt`` as a task; its result comes back as an input."""
        if self._attempt_task is not None:
            self._cancel_attempt()
        # What ensure_future does with a coroutine, without its checks. The
        # attempt is handed the loop: on CPython 3.10-3.11 every look-up of
        # the running loop asks the kernel for the process id.
        loop = asyncio.get_event_loop()
        self._attempt_task = loop.create_task(self._attempt(attempt, client_id, port, loop))

    async def _attempt(self, attempt: int, client_id: int, port: int,
                       loop: asyncio.AbstractEventLoop) -> None:
        config = self.config
        ib = self.ib
        if logger.isEnabledFor(logging.INFO):
            logger.info("attempt %d: connecting to %s:%d with client id %d",
                        attempt, config.host, port, client_id)
        try:
            await adapter.connect_session(
                ib, host=config.host, port=port, client_id=client_id,
                timeout=config.connect_timeout, readonly=config.readonly,
                account=config.account, catcher=self._sync_catcher,
                handshake_timeout=config.handshake_timeout, watch=self._socket_watch,
                loop=loop,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._attempt_task = None
            self._attempt_failed(attempt, exc)
            return
        self._attempt_task = None
        # The session's reads from now on (ConnectionConfig.socket_read_size),
        # the client's id counter, the login's accounts.
        current, accounts = adapter.session_ready(ib, config.socket_read_size)
        self._accounts = accounts
        if current < self.high_water:
            logger.warning(
                "gateway's next valid id %d is below the high-water mark %d: "
                "keeping ids moving forward", current, self.high_water,
            )
            adapter.raise_request_id(ib, self.high_water)
        elif current > self.high_water:
            self.high_water = current
        # What the attempt learnt goes in as data: the table checks the
        # configured account against it and chooses the one to use.
        self._feed(Input(InputKind.ATTEMPT_SUCCEEDED, message=(
            f"connected to {config.host}:{port} as client {client_id}"
        ), accounts=accounts))

    def _attempt_failed(self, attempt: int, exc: Exception) -> None:
        info, inp = codes.classify_failure(exc)
        self.last_error = exc
        if info.traceback:
            logger.error("connection attempt raised %r", exc, exc_info=exc)
        if inp.kind is InputKind.FATAL_ERROR:
            logger.error("attempt %d: %s; not retrying", attempt, exc)
        # The classified failure goes in before the socket is closed: the close
        # that follows meets ``backoff`` or ``failed``, where it is ignored.
        self._feed(inp)
        adapter.safe_disconnect(self.ib)

    def _show(self, account: str) -> str:
        return mask_account(account) if self.config.mask_accounts else account

    def _cancel_attempt(self) -> None:
        task = self._attempt_task
        self._attempt_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # -- timers -----------------------------------------------------------------------

    def schedule_retry(self, delay: float) -> None:
        """Feed ``retry_due`` after ``delay`` seconds."""
        self.cancel_retry()
        self._retry = self._clock.call_later(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        self._feed(_RETRY_DUE)

    def cancel_retry(self) -> None:
        """Cancel the scheduled retry, if any."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def start_restore_timer(self, timeout: float) -> None:
        """Feed ``restore_timeout`` after ``timeout`` seconds."""
        self.cancel_restore_timer()
        self._restore = self._clock.call_later(timeout, self._restore_due)

    def _restore_due(self) -> None:
        self._restore = None
        self._feed(Input(InputKind.RESTORE_TIMEOUT,
                         message="TWS did not restore its link to IB in time"))

    def cancel_restore_timer(self) -> None:
        """Cancel the restore timer, if any."""
        if self._restore is not None:
            self._restore.cancel()
            self._restore = None

    # -- session ----------------------------------------------------------------------

    def select_account(self, account: str) -> None:
        """Use ``account`` (the table's choice); ask for its updates when ib_insync did not."""
        self.account = account
        if logger.isEnabledFor(logging.INFO):
            logger.info("using account %s", self._show(account))
        # ib_insync's startup sync subscribed account updates itself only for
        # the account it was given or a login's only account: a mechanic of
        # the client, not a choice.
        if account and account != self.config.account and len(self._accounts) > 1:
            try:
                adapter.request_account_updates(self.ib, account)
            except (ConnectionError, OSError) as exc:
                logger.warning("account updates request failed: %r", exc)

    def refuse_account(self, message: str) -> None:
        """The table refused the login's accounts: the attempt fails with AccountError."""
        self.last_error = AccountError(message)
        logger.error("%s; not retrying", message)

    def restore_subscriptions(self, fresh_session: bool) -> None:
        """Issue every registered subscription: on a new session, or again after a 1101.

        Which of the two it is, is the table's (actions ``issue_subscriptions``
        and ``restore_subscriptions``).
        """
        # Most bots subscribe after start(): the first session has none to issue.
        count = self._subscriptions.issue_all(self.ib, fresh_session) if len(
            self._subscriptions) else 0
        if count:
            logger.info("issued %d subscription(s) %s", count,
                        "on the new session" if fresh_session else "again after data loss")

    def issue_new_subscriptions(self) -> None:
        """Issue the subscriptions never issued yet (added while the session is up)."""
        self._subscriptions.issue_new(self.ib)

    # -- heartbeat --------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Watch the message count; probe the gateway when it has been quiet."""
        if (self._heartbeat_on or self._data_hook is not None or self._heartbeat is not None
                or self._probe_task is not None or self._probe_deadline is not None):
            self.stop_heartbeat()
        else:
            # Nothing to stop (a session's first start): what stop_heartbeat
            # leaves behind, without its calls.
            self._quiet = False
            self._probe_done = None
        self._heartbeat_on = True
        self._last_count = -1
        self._last_activity = self._clock.monotonic()
        # The data hook is added when the heartbeat first needs it (it sleeps quiet
        # or probes): not on the connect's path, and it does nothing before.
        idle = self.config.heartbeat_idle
        # No tick is scheduled here (either branch above leaves none): _schedule_tick's
        # cancel has nothing to do, and a session's start skips its call.
        self._heartbeat = self._clock.call_later(idle / 4 if idle < 2.0 else 0.5, self._tick)

    def _schedule_tick(self, delay: float) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._heartbeat = self._clock.call_later(delay, self._tick)

    def _tick(self) -> None:
        # While messages flow the count is looked at every ``interval`` (as
        # before); once a look finds it unchanged, the heartbeat sleeps until
        # ``heartbeat_idle`` after the last activity, and the first bytes to
        # arrive meanwhile wake it to looking again: one wake-up per idle
        # period instead of two a second (issue 21: 172,800 a day), and the
        # probe still goes out after ``heartbeat_idle`` of silence, no later.
        self._heartbeat = None
        self._quiet = False
        if not self._heartbeat_on:
            return
        now = self._clock.monotonic()
        count = adapter.received_messages(self.ib)
        idle = self.config.heartbeat_idle
        # min(0.5, idle / 4), without a call: this runs once per idle probe cycle.
        interval = idle / 4 if idle < 2.0 else 0.5
        if count != self._last_count:
            self._last_count = count
            self._last_activity = now
            self._schedule_tick(interval)
            return
        remaining = idle - (now - self._last_activity)
        if remaining > 1e-6:  # not a float's rounding away from due
            self._sleep_quiet(remaining)
        elif self._probe_task is None:
            self._probe(now, count)  # it reschedules the heartbeat when it is answered
        else:
            self._schedule_tick(interval)

    def _sleep_quiet(self, delay: float) -> None:
        """Wake after ``delay``, or ``interval`` after the first bytes that arrive first."""
        self._schedule_tick(delay)
        if self._data_hook is None:
            self._hook_data()
        self._quiet = self._data_hook is not None

    def _hook_data(self) -> None:
        """Wake a quiet heartbeat on the socket's first bytes: one handler for the session.

        Added when the heartbeat first sleeps quiet or probes (before that it would
        have nothing to do), the handler stays on the client's ``hasData`` until the
        heartbeat stops and does nothing unless the heartbeat sleeps quiet or a probe
        waits: a call per socket read
        costs less than an eventkit connect and disconnect per idle period, which
        an idle month pays about 837,000 times (issue 21). The client keeps one
        ``Connection`` for its life (``Client.__init__``, ib_insync 0.9.86 and
        ib_async 2.1 alike), so the event is the same for every session.
        """
        event = getattr(getattr(getattr(self.ib, "client", None), "conn", None), "hasData", None)
        if event is None:
            return

        def on_data(*_: object) -> None:
            if self._quiet:
                self._quiet = False
                if self._heartbeat_on:
                    idle = self.config.heartbeat_idle
                    self._schedule_tick(idle / 4 if idle < 2.0 else 0.5)
            elif self._probe_done is not None:
                # The client has decoded this read (its hasData handler runs
                # first): the probe's answer, if it came, is in its future now.
                task = self._probe_task
                if task is not None and task.done():
                    self._probe_done(task)

        event += on_data
        self._data_hook = (event, on_data)

    def _unhook_data(self) -> None:
        self._quiet = False
        hook = self._data_hook
        self._data_hook = None
        if hook is not None:
            event, handler = hook
            event -= handler

    def _probe(self, started: float, heard_before: int) -> None:
        """Send a reqCurrentTime; at its deadline, feed heartbeat_missed if the gateway was silent.

        The client keeps one pending reqCurrentTime: ``Wrapper.startReq("currentTime")``
        stores a new future under that key, replacing one still in flight, and the
        ``currentTime`` answer ends whichever is stored (``Wrapper._endReq`` pops the key;
        ib_insync 0.9.86 and ib_async 2.1 ``wrapper.py`` alike). A bot asking the time
        while the probe is on the wire takes the probe's answer, and the probe's own
        future is never resolved. So the probe counts as answered when any message came
        from the gateway since it was sent, counted at the deadline: a silent gateway is
        what it probes for. Whether a miss matters is the table's.

        A request future rather than a task awaiting it (a task and a loop turn fewer),
        and its answer read by the data hook right after the client decoded it rather
        than by a done callback on the next turn (another turn fewer): an idle month
        pays this about 837,000 times (issue 21). The deadline hands whatever the hook
        did not read (a cancel, a failure) to the same handler, on the next turn as a
        done callback would; without a data event the done callback does it all.

        Args:
            started: the clock's reading now (the tick's).
            heard_before: the client's message count now (the tick's).
        """
        timeout = self.config.heartbeat_timeout
        ib = self.ib
        try:
            sent = ib.reqCurrentTimeAsync()
            # Both clients return the wrapper's future (IB.reqCurrentTimeAsync:
            # ``future = self.wrapper.startReq('currentTime')``); anything else is wrapped.
            request: asyncio.Future[Any] = (
                sent if isinstance(sent, asyncio.Future) else asyncio.ensure_future(sent))
        except (ConnectionError, OSError) as exc:
            # The socket is going away; disconnectedEvent reports it.
            logger.debug("heartbeat probe failed: %r", exc)
            idle = self.config.heartbeat_idle
            self._schedule_tick(idle / 4 if idle < 2.0 else 0.5)
            return
        self._probe_task = request
        if self._data_hook is None:
            self._hook_data()
        expired: list[bool] = []

        def expire() -> None:
            self._probe_deadline = None
            if not request.done():
                expired.append(adapter.received_messages(ib) != heard_before)
                request.cancel()
            if self._probe_done is answered:
                self._probe_done = None
                request.add_done_callback(answered)  # done: runs on the next turn

        # The probe's deadline runs on the injected clock, like every other timer.
        deadline = self._clock.call_later(timeout, expire)
        self._probe_deadline = deadline

        def answered(fut: asyncio.Future[Any]) -> None:
            deadline.cancel()
            if self._probe_deadline is deadline:
                self._probe_deadline = None
            if self._probe_done is answered:
                self._probe_done = None
            if self._probe_task is not fut:
                return  # stopped meanwhile: a cancelled probe stays silent
            self._probe_task = None
            if fut.cancelled():
                if expired and expired[0]:
                    logger.debug("heartbeat probe: no answer of its own within %gs (another "
                                 "reqCurrentTime may have taken it), but the gateway sent "
                                 "messages since: alive", timeout)
                    self._last_activity = self._clock.monotonic()
                elif expired and self._heartbeat_on:
                    self._feed(Input(
                        InputKind.HEARTBEAT_MISSED,
                        message=f"no answer to a heartbeat probe within {timeout:g}s",
                    ))
            elif fut.exception() is not None:
                # The socket is going away; disconnectedEvent reports it.
                logger.debug("heartbeat probe failed: %r", fut.exception())
            else:
                now = self._clock.monotonic()
                self._last_activity = now
                # The answer is the activity: the next probe is due heartbeat_idle from now.
                self._last_count = adapter.received_messages(ib)
                self._on_heartbeat(now - started)
                if self._heartbeat_on:
                    self._sleep_quiet(self.config.heartbeat_idle)
            if self._heartbeat_on and self._heartbeat is None:
                # A missed or failed probe: look again in an interval, as the ticks did.
                idle = self.config.heartbeat_idle
                self._schedule_tick(idle / 4 if idle < 2.0 else 0.5)

        if self._data_hook is not None:
            self._probe_done = answered
        else:
            request.add_done_callback(answered)

    def stop_heartbeat(self) -> None:
        """Stop the ticks and cancel a running probe."""
        self._heartbeat_on = False
        self._unhook_data()
        self._probe_done = None
        if self._probe_deadline is not None:
            self._probe_deadline.cancel()
            self._probe_deadline = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        task = self._probe_task
        self._probe_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    # -- socket -----------------------------------------------------------------------

    def tear_down(self) -> None:
        """Cancel the running attempt and close the socket."""
        self._cancel_attempt()
        ib = self.ib
        self.high_water = max(self.high_water, adapter.next_request_id(ib))
        adapter.safe_disconnect(ib)

    # -- the gateway's controller (IBC) ---------------------------------------------------

    def send_restart(self) -> None:
        """Ask the controller to restart the gateway; the answer comes back as an input."""
        self._restart_task = self._controller_task(self._restart())

    async def _restart(self) -> None:
        controller = self.controller
        if controller is None:
            # The table asks for a restart only with a controller configured
            # (guards wedged and link_stuck): a bug, not a decision. The
            # restart timer still moves the machine on.
            logger.error("send_restart without a controller: the table asks for a restart "
                         "only when one is configured")
            return
        try:
            answer = await controller.restart()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # ControllerError above all; anything else a controller raises is
            # a failed restart too: nothing raises out of the manager.
            logger.error("%s: restart failed: %s", controller.name, exc)
            self._feed(Input(InputKind.RESTART_FAILED, message=f"{controller.name}: {exc}"))
            return
        self._feed(Input(InputKind.RESTART_SENT,
                         message=f"{controller.name} accepted the restart: {answer}".strip()))

    def send_reconnect_data(self) -> None:
        """Ask the controller to reconnect the data farms; the outcome is only logged."""
        self._controller_task(self._reconnect_data())

    async def _reconnect_data(self) -> None:
        controller = self.controller
        if controller is None:
            logger.error("send_reconnect_data without a controller: the table asks only when "
                         "one is configured")
            return
        try:
            answer = await controller.reconnect_data()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("%s: reconnect data failed: %s", controller.name, exc)
            return
        logger.warning("%s: asked the gateway to reconnect its data farms: OK %s",
                       controller.name, answer)

    def _controller_task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._controller_tasks.add(task)
        task.add_done_callback(self._controller_tasks.discard)
        return task

    def start_restart_timer(self, timeout: float) -> None:
        """Feed ``restart_timeout`` after ``timeout`` seconds."""
        self.cancel_restart_timer()
        self._restart_timer = self._clock.call_later(timeout, self._restart_due)

    def _restart_due(self) -> None:
        self._restart_timer = None
        self._feed(Input(InputKind.RESTART_TIMEOUT, message=(
            "the gateway did not answer the API handshake within restart_wait after "
            "its restart")))

    def cancel_restart_timer(self) -> None:
        """Cancel the restart timer and a restart command still waiting for its answer."""
        if self._restart_timer is not None:
            self._restart_timer.cancel()
            self._restart_timer = None
        task = self._restart_task
        self._restart_task = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def probe_gateway(self, port: int, interval: float) -> None:
        """Probe the gateway (TCP connect, API handshake) every ``interval`` s until it answers."""
        self.cancel_probe()
        self._gateway_probe = asyncio.ensure_future(self._probe_until_back(port, interval))

    async def _probe_until_back(self, port: int, interval: float) -> None:
        config = self.config
        # A handshake is answered in milliseconds by a healthy gateway; a
        # wedged one (or one still shutting down) accepts and says nothing.
        answer_within = min(2.0, config.connect_timeout)
        probes = 0
        while True:
            probes += 1
            if await _handshake_answered(config.host, port, answer_within):
                break
            await _sleep_on(self._clock, interval)
        self._gateway_probe = None
        self._feed(Input(InputKind.GATEWAY_BACK, message=(
            f"the gateway at {config.host}:{port} answers the API handshake "
            f"again (probe {probes})")))

    def cancel_probe(self) -> None:
        """Stop probing the gateway."""
        task = self._gateway_probe
        self._gateway_probe = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def start_farm_timer(self, timeout: float) -> None:
        """Feed ``farm_reconnect_due`` after ``timeout`` seconds."""
        self.cancel_farm_timer()
        self._farm_timer = self._clock.call_later(timeout, self._farm_due)

    def _farm_due(self) -> None:
        self._farm_timer = None
        self._feed(Input(InputKind.FARM_RECONNECT_DUE,
                         message="a data farm stayed broken for farm_reconnect_after"))

    def cancel_farm_timer(self) -> None:
        """Cancel the farm timer, if any."""
        if self._farm_timer is not None:
            self._farm_timer.cancel()
            self._farm_timer = None


#: The retry timer's input, built once (an input is immutable): a gateway down for
#: hours is retried every ~2 s (issue 21's month: ~41,000 times).
_RETRY_DUE = Input(InputKind.RETRY_DUE)

#: Finds a digit: a text without one names no account (see _on_ib_error).
_has_digit = re.compile(r"\d").search

#: codes.lookup, without the call: the code table by code (three notices every connect).
_code_info = {info.code: info for info in codes.CODES}.get

#: codes.classify, remembered: a connect brings the same farm notices every time, and
#: an input is immutable, so each (code, message) is classified once.
_classify = functools.lru_cache(maxsize=256)(codes.classify)

#: The API handshake a probe sends: the prefix and the version range ib_insync offers.
_PROBE_HELLO = b"API\0" + struct.pack(">I", 9) + b"v157..178"


async def _handshake_answered(host: str, port: int, timeout: float) -> bool:
    """Return True if the gateway accepts a socket and answers the API handshake."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(_PROBE_HELLO)
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(4), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        logger.debug("gateway probe at %s:%d: %r", host, port, exc)
        return False
    finally:
        if writer is not None:
            writer.close()
    return True


async def _sleep_on(clock: Clock, delay: float) -> None:
    """Sleep ``delay`` seconds on the injected clock."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    handle = clock.call_later(delay, wake)
    try:
        await done
    finally:
        handle.cancel()


__all__ = ["Driver"]
