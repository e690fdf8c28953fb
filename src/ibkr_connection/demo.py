"""``ibkr-connection demo`` and ``watch``: the machine's story, told live.

``demo`` starts the embedded gateway simulator and walks a real ib_insync
client through a farm outage, a nightly-reset style 1100/1101, a gateway
restart, a hung gateway, a wedged gateway restarted through the simulator's
IBC command server, and an order whose answer is lost in a drop (shown
``Uncertain``, then resolved by the reconnect's sync), printing every
transition with its elapsed time and cause, then a summary; Ctrl-C or SIGTERM
ends it early, cleanly, in one line. ``watch`` prints the same live view
against a real gateway until Ctrl-C. Both can write the manager's journal.

Both can serve ``/metrics`` and ``/healthz`` (``metrics_port``); an endpoint
that cannot be served (the ``metrics`` extra is missing, the port is taken)
raises :class:`EndpointUnavailable` before anything connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibkr_connection import adapter
from ibkr_connection.clock import LoopClock
from ibkr_connection.codes import FAILURES
from ibkr_connection.config import ConnectionConfig
from ibkr_connection.errors import UsageError
from ibkr_connection.health import DEFAULT_HOST
from ibkr_connection.inputs import InputKind
from ibkr_connection.manager import ConnectionManager
from ibkr_connection.outputs import Transition
from ibkr_connection.table import USABLE_STATES, ConnectionState

Write = Callable[[str], Any]

#: How to get the optional ``prometheus_client``, for error messages.
METRICS_EXTRA_HINT = ("pip install 'ibkr-connection[metrics]' "
                      "(in a checkout: uv sync --extra metrics)")


class EndpointUnavailable(UsageError):
    """``/metrics`` and ``/healthz`` cannot be served as asked.

    The ``metrics`` extra (``prometheus_client``) is not installed, or the
    address cannot be bound (the port is taken, the host is not local). The
    message says which, in one line.
    """


def _ignore(text: str) -> None:
    """A writer that drops what it is given (the quiet mode's chatter)."""


@dataclass
class LiveView:
    """Prints transitions as they happen and sums up time per state and recoveries."""

    write: Write
    started: float
    since: float = 0.0
    state: ConnectionState = ConnectionState.DISCONNECTED
    time_in: dict[ConnectionState, float] = field(default_factory=dict)
    recoveries: list[tuple[str, float]] = field(default_factory=list)
    _outage_start: float | None = None
    _outage_cause: str = ""

    def __post_init__(self) -> None:
        self.since = self.started

    def on_transition(self, t: Transition) -> None:
        """Print one transition and account for it."""
        self.time_in[t.source] = self.time_in.get(t.source, 0.0) + (t.at - self.since)
        self.since = t.at
        self.state = t.dest
        code = f" [{t.code}]" if t.code is not None else ""
        delay = f" (retry in {t.delay:.3f}s)" if t.delay is not None else ""
        self.write(
            f"{t.at - self.started:8.3f}s  {t.source.value:>12} -> {t.dest.value:<12} "
            f"{t.trigger.value}{code}{delay}: {t.cause}\n"
        )
        if t.source in USABLE_STATES and t.dest not in USABLE_STATES:
            if t.dest is not ConnectionState.DISCONNECTED:
                self._outage_start = t.at
                self._outage_cause = f"{t.trigger.value}{code}"
        elif t.dest in USABLE_STATES and self._outage_start is not None:
            self.recoveries.append((self._outage_cause, t.at - self._outage_start))
            self._outage_start = None

    def summary(self, now: float) -> str:
        """Return the summary table."""
        time_in = dict(self.time_in)
        time_in[self.state] = time_in.get(self.state, 0.0) + (now - self.since)
        lines = ["", "time in each state:", f"  {'state':<14}{'seconds':>10}"]
        for state in ConnectionState:
            if state in time_in:
                lines.append(f"  {state.value:<14}{time_in[state]:>10.3f}")
        lines += ["", f"recoveries: {len(self.recoveries)}",
                  f"  {'cause':<28}{'took (s)':>10}"]
        for cause, took in self.recoveries:
            lines.append(f"  {cause:<28}{took:>10.3f}")
        return "\n".join(lines) + "\n"


async def _serve_metrics(manager: ConnectionManager, port: int | None, write: Write,
                         degraded_ok: bool = False,
                         host: str = DEFAULT_HOST) -> Any:
    """Start the endpoint for ``manager`` (None when ``port`` is None).

    Raises:
        EndpointUnavailable: the metrics extra is missing or ``host:port``
            cannot be bound.
    """
    if port is None:
        return None
    try:
        from ibkr_connection.metrics import ConnectionMetrics
    except ImportError as exc:
        raise EndpointUnavailable(
            f"--metrics-port needs prometheus_client, which is not installed: "
            f"{METRICS_EXTRA_HINT}") from exc
    from ibkr_connection.health import HealthServer

    # Time in each state on the loop's clock, as the demo's manager reads it.
    metrics = ConnectionMetrics(clock=asyncio.get_running_loop().time)
    metrics.bind(manager)
    server = HealthServer(metrics, lambda: manager.state, host=host, port=port,
                          degraded_ok=degraded_ok)
    try:
        await server.start()
    except OSError as exc:
        # asyncio rewords the error ("error while attempting to bind on address
        # ...: address already in use"); the errno's own text is the reason.
        # Python 3.13 skips an address that is not available and then says only
        # "could not bind on any address out of [...]", with no errno.
        if exc.errno:
            reason = os.strerror(exc.errno)
        elif str(exc).startswith("could not bind on any address"):
            reason = os.strerror(errno.EADDRNOTAVAIL)
        else:
            reason = str(exc)
        raise EndpointUnavailable(
            f"cannot serve /metrics and /healthz on {host}:{port}: {reason}") from exc
    write(f"metrics on http://{host}:{server.port}/metrics, "
          f"health on http://{host}:{server.port}/healthz\n")
    return server


async def run_demo(write: Write, *, seed: int = 0, metrics_port: int | None = None,
                   pause: float = 1.0, degraded_ok: bool = False,
                   metrics_host: str = DEFAULT_HOST,
                   journal: str | Path | None = None) -> int:
    """Tell the recovery story against the embedded simulator; return an exit status.

    SIGINT (Ctrl-C) and SIGTERM end the story where it is: the manager is
    stopped, the simulator closed, one line says so, and the status is
    128 + the signal's number (130, 143), as a shell reports a process the
    signal ended; the story was cut short, unlike ``watch``'s, which has no end.

    Args:
        write: where the story goes.
        seed: the jitter seed.
        metrics_port: serve ``/metrics`` and ``/healthz`` on this port.
        pause: seconds each act lets the live view run.
        degraded_ok: ``/healthz`` reports ``degraded`` as healthy.
        metrics_host: the address the endpoint binds.
        journal: write the manager's journal here (appended; see
            ``docs/journal.md``), for ``ibkr-connection replay``.

    Returns:
        0 once the story is told, 128 + the signal's number if one ended it.

    Raises:
        EndpointUnavailable: ``metrics_port`` cannot be served.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    received: list[signal.Signals] = []
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    signals = _handle_stop_signals(loop, on_signal)
    try:
        story = asyncio.ensure_future(_tell_story(
            write, started, seed=seed, metrics_port=metrics_port, pause=pause,
            degraded_ok=degraded_ok, metrics_host=metrics_host, journal=journal))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([story, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if story.done():
            return story.result()
        # The story's own ``finally`` stops the manager and closes the simulator.
        story.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await story
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    sig = received[0]
    write(f"{loop.time() - started:8.3f}s  --- stopped by {sig.name}: the manager is "
          "stopped, the simulator closed\n")
    return 128 + int(sig)


def _handle_stop_signals(loop: asyncio.AbstractEventLoop,
                         handler: Callable[[signal.Signals], None]) -> list[signal.Signals]:
    """Route SIGINT and SIGTERM to ``handler`` (as ``watch``, ``sim``, ``proxy`` do).

    Returns:
        The signals handled (none where the loop cannot, e.g. off the main thread).
    """
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, handler, sig)
            handled.append(sig)
    return handled


async def _tell_story(write: Write, started: float, *, seed: int, metrics_port: int | None,
                      pause: float, degraded_ok: bool, metrics_host: str,
                      journal: str | Path | None) -> int:
    """The demo's acts, from the simulator's start to the summary (see :func:`run_demo`)."""
    from ibkr_connection.policy import RecoveryPolicy
    from ibkr_connection.simulator import FakeGateway

    # The wedge act is shortened to keep the demo near 20 s: two wedge signs
    # instead of three, a 1 s handshake deadline, a 0.5 s restart.
    # Every clock of the story reads the loop's (on a real loop that is
    # time.monotonic(), as the defaults read): a loop on virtual time (the
    # tests') then plays the whole story without waiting out its pauses.
    clock = LoopClock()
    async with FakeGateway(accounts=["DU1234567"], prices={"AAPL": 150.0}, ibc_port=0,
                           ibc_restart_outage=0.5, clock=clock) as gw:
        assert gw.ibc is not None
        config = ConnectionConfig(port=gw.port, client_id=7, handshake_timeout=1.0,
                                  policy=RecoveryPolicy(seed=seed, restart_after=2),
                                  ibc_port=gw.ibc.port)
        manager = ConnectionManager(adapter.new_ib(), config, clock=clock, journal=journal)
        loop = asyncio.get_running_loop()
        view = LiveView(write, started=started)
        manager.stateChangeEvent += view.on_transition
        try:
            server = await _serve_metrics(manager, metrics_port, write, degraded_ok,
                                          metrics_host)
        except (EndpointUnavailable, asyncio.CancelledError):
            await manager.stop()
            raise
        write(f"simulated gateway on 127.0.0.1:{gw.port}; defaults: backoff 50-250 ms, "
              f"heartbeat after {config.heartbeat_idle:g}s idle + "
              f"{config.heartbeat_timeout:g}s probe; IBC command server on "
              f"127.0.0.1:{gw.ibc.port} (for the wedge: restart after "
              f"{config.policy.restart_after} wedge signs, {config.handshake_timeout:g}s "
              "handshake deadline, 0.5 s restart)\n\n")

        def chapter(text: str) -> None:
            write(f"{loop.time() - view.started:8.3f}s  --- {text}\n")

        # Said when IBC gets it, in the transitions' time style.
        gw.ibc.on_command = lambda command: write(
            f"{loop.time() - view.started:8.3f}s  IBC command server received: {command}\n")

        try:
            chapter("connect")
            await manager.start(timeout=10)
            contract = adapter.stock("AAPL")
            handle = manager.subscribe_market_data(contract)
            await asyncio.sleep(pause / 2)

            chapter("a data farm breaks, then comes back")
            await gw.farm_broken("usfarm")
            await asyncio.sleep(pause)
            await gw.farm_ok("usfarm")
            await manager.wait_for(ConnectionState.CONNECTED, timeout=5)

            chapter("TWS loses IB (1100), then restores it with data lost (1101)")
            await gw.send_error(1100)
            await asyncio.sleep(pause)
            await gw.send_error(1101)
            await manager.wait_for(ConnectionState.CONNECTED, timeout=5)
            await asyncio.sleep(0.05)
            write(f"          market data re-requested: {handle.restored} time(s); "
                  f"AAPL last {handle.ticker.last if handle.ticker else 'n/a'}\n")

            chapter("the gateway restarts (2 s outage)")
            restart = asyncio.ensure_future(gw.restart(outage=2.0))
            await restart
            await manager.wait_for(ConnectionState.CONNECTED, timeout=10)
            await asyncio.sleep(pause / 2)

            chapter("the gateway hangs: socket open, nothing answered")
            gw.stall()
            await manager.wait_for(ConnectionState.BACKOFF, timeout=15)
            gw.unstall()
            await manager.wait_for(ConnectionState.CONNECTED, timeout=10)

            chapter("the gateway is wedged: reconnecting cannot help, IBC restarts it")
            gw.wedge()
            await manager.wait_for(ConnectionState.RESTARTING, timeout=30)
            await manager.wait_for(ConnectionState.CONNECTED, timeout=30)

            chapter("an order goes out as the socket drops: the gateway's answer is lost")
            await _uncertain_order(manager, gw, write)

            chapter("clean stop")
            await manager.stop()
        finally:
            await manager.stop()
            if server is not None:
                await server.stop()
        write(view.summary(loop.time()))
        write(f"handshakes served by the simulator: {gw.handshakes}\n")
        if journal is not None:
            write(f"journal: {journal} (check it: ibkr-connection replay {journal})\n")
    return 0


async def _uncertain_order(manager: ConnectionManager, gw: Any, write: Write) -> None:
    """The order act: sent, its answer lost in a drop, Uncertain, then resolved once."""
    def on_uncertain(trades: list[Any]) -> None:
        for trade in trades:
            write(f"          order {trade.order.orderId} ({trade.order.orderRef}): Uncertain "
                  f"(last status {trade.orderStatus.status}, no answer before the drop; "
                  "nothing is re-sent)\n")

    def on_resolved(trade: Any, outcome: Any) -> None:
        write(f"          order {trade.order.orderId} ({trade.order.orderRef}): resolved after "
              f"the reconnect: {outcome.status} (found by {outcome.found_by or 'nothing'}, "
              f"{len(outcome.fills)} fill(s))\n")

    manager.ordersUncertainEvent += on_uncertain
    manager.orderResolvedEvent += on_resolved
    try:
        gw.lose_next_order_ack()  # booked and filled at the gateway; the answer never leaves
        trade = manager.ib.placeOrder(adapter.stock("AAPL"),
                                      adapter.market_order("BUY", 10, "demo-1"))
        await manager.wait_for(ConnectionState.BACKOFF, timeout=5)
        await manager.wait_for(ConnectionState.CONNECTED, timeout=10)
        received = sum(1 for r in gw.requests_named("placeOrder")
                       if int(r.fields[1]) == trade.order.orderId)
        write(f"          the gateway received order {trade.order.orderId} {received} "
              "time(s)\n")
    finally:
        manager.ordersUncertainEvent -= on_uncertain
        manager.orderResolvedEvent -= on_resolved


#: How a refused connect reads in a transition's cause (the failure table's words).
_REFUSED = next(row.meaning for row in FAILURES if ConnectionRefusedError in row.exceptions)


@dataclass
class _ClosedPortHint:
    """Says once what to check when the first attempts are refused, before any session.

    The manager retries a refused connect four times a second, silently: right for a
    gateway that restarts, but a new user who typed the wrong port sees only a stream of
    refusals. Once a session was had, a refusal is a restart: no hint.
    """

    write: Write
    config: ConnectionConfig
    done: bool = False

    def on_transition(self, t: Transition) -> None:
        """Write the hint at the first refused attempt, unless a session came first."""
        if self.done:
            return
        if t.dest in USABLE_STATES or t.dest is ConnectionState.LOST:
            self.done = True
        elif t.trigger is InputKind.ATTEMPT_FAILED and t.cause.startswith(_REFUSED):
            self.done = True
            self.write(f"          nothing accepts connections on {self.config.host}:"
                       f"{self.config.port}: is TWS / IB Gateway running there, with its API "
                       "enabled? (ports: TWS 7497 paper, 7496 live; IB Gateway 4002 paper, "
                       "4001 live; --port, --host or IBKR_PORT, IBKR_HOST); retrying until "
                       "Ctrl-C\n")


async def run_watch(write: Write, config: ConnectionConfig,
                    metrics_port: int | None = None, degraded_ok: bool = False,
                    stop: asyncio.Event | None = None, ib: Any = None, *,
                    metrics_host: str = DEFAULT_HOST, quiet: bool = False,
                    journal: str | Path | None = None) -> int:
    """Connect to a gateway and print transitions until Ctrl-C (or ``stop`` is set).

    Args:
        write: where the live view goes.
        config: the connection settings.
        metrics_port: serve ``/metrics`` and ``/healthz`` on this port.
        degraded_ok: ``/healthz`` reports ``degraded`` as healthy.
        stop: an event that ends the watch (SIGINT and SIGTERM set it too).
        ib: the IB object (a new ``ib_insync.IB`` by default).
        metrics_host: the address the endpoint binds.
        quiet: write the transition lines only (no endpoint notice, no summary).
        journal: write the manager's journal here (appended; see
            ``docs/journal.md``), for ``ibkr-connection replay``.

    Raises:
        EndpointUnavailable: ``metrics_port`` cannot be served; raised before
            any connection attempt.
    """
    chatter = _ignore if quiet else write
    manager = ConnectionManager(ib if ib is not None else adapter.new_ib(), config,
                                journal=journal)
    loop = asyncio.get_running_loop()
    view = LiveView(write, started=loop.time())
    manager.stateChangeEvent += view.on_transition
    hint = _ClosedPortHint(chatter, config)  # held here: eventkit keeps methods weakly
    manager.stateChangeEvent += hint.on_transition
    try:
        server = await _serve_metrics(manager, metrics_port, chatter, degraded_ok, metrics_host)
    except EndpointUnavailable:
        await manager.stop()  # releases its handlers on the IB object
        raise
    done = stop or asyncio.Event()
    signals = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, done.set)
            signals.append(sig)
    connecting = asyncio.ensure_future(manager.start())
    try:
        await done.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await connecting
        await manager.stop()
        if server is not None:
            await server.stop()
    chatter(view.summary(loop.time()))
    return 0
