"""Prometheus metrics for one connection.

Optional: needs the ``metrics`` extra (``pip install 'ibkr-connection[metrics]'``),
which brings ``prometheus_client``. Nothing else in the package imports this
module, so the core runs without it.

:class:`ConnectionMetrics` turns the machine's
:class:`~ibkr_connection.machine.Transition` records and the heartbeat's round
trips into metrics, kept in a registry of its own so that several managers (or
tests) in one process never collide. :class:`~ibkr_connection.health.HealthServer`
serves them, beside a ``/healthz`` probe; it lives in
:mod:`ibkr_connection.health` and is re-exported here, where it used to be.

Metrics (``ibkr_connection`` is the default namespace)::

    ibkr_connection_state{state}                      gauge: 1 for the current state
    ibkr_connection_transitions_total{trigger,dest}   counter
    ibkr_connection_reconnect_attempts_total          counter: moves into connecting
    ibkr_connection_recovery_seconds                  histogram
    ibkr_connection_heartbeat_rtt_seconds             histogram
    ibkr_connection_state_seconds_total{state}        counter, current at scrape time
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "ibkr_connection.metrics needs prometheus_client: "
        "install it with pip install 'ibkr-connection[metrics]'"
    ) from exc

from ibkr_connection.errors import ConfigError
from ibkr_connection.health import METRICS_CONTENT_TYPE, HealthServer
from ibkr_connection.outputs import Transition
from ibkr_connection.table import USABLE_STATES, ConnectionState

logger = logging.getLogger(__name__)

#: Recovery takes from a few milliseconds (a 1300 port reset) to many minutes
#: (IB's nightly reset), so the buckets span 10 ms to 15 min.
RECOVERY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 900.0,
)

#: A heartbeat to a local gateway answers in about a millisecond; a hung one
#: is declared missed after some seconds.
HEARTBEAT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

_RESERVED_LABELS = frozenset({"state", "trigger", "dest", "le"})
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class _StateSeconds:
    """Custom collector: seconds spent in each state, current at every scrape."""

    def __init__(self, owner: ConnectionMetrics, name: str, labels: Mapping[str, str]) -> None:
        self._owner = owner
        self._name = name
        self._labels = dict(labels)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            self._name,
            "Seconds spent in each connection state.",
            labels=[*self._labels, "state"],
        )

    def describe(self) -> Iterable[Metric]:
        """Return the metric without samples, so the registry knows its names."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        """Return the seconds per state, counting the current state up to now."""
        family = self._family()
        for state, seconds in self._owner.state_seconds().items():
            family.add_metric([*self._labels.values(), state.value], seconds)
        return [family]


class ConnectionMetrics:
    """Prometheus metrics of one connection, in a registry of their own.

    Feed it every :class:`~ibkr_connection.machine.Transition` (for instance
    as a state change listener) and every heartbeat round trip; scrape it with
    :meth:`render` or through :class:`~ibkr_connection.health.HealthServer`.

    Time spent in each state is measured on ``clock``, read at each transition
    and at each scrape; pass the manager's monotonic clock so that tests on a
    manual clock get exact values. Recovery durations are measured on the
    transitions' own ``at`` readings.

    A recovery is timed from a move out of ``connected``/``degraded`` into any
    other state to the next arrival in ``connected``/``degraded``. A move into
    ``disconnected`` (the user asked for it) is not an outage: it cancels the
    timing.

    Args:
        registry: where to register the metrics; a new private
            :class:`~prometheus_client.CollectorRegistry` when None. Never the
            global registry unless passed explicitly.
        namespace: prefix of every metric name.
        labels: constant labels added to every series (e.g. ``{"gateway": "paper"}``).
        clock: monotonic seconds, used for the time spent in each state.

    Raises:
        ConfigError: a constant label name is invalid or clashes with a label
            the metrics use themselves (``state``, ``trigger``, ``dest``, ``le``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "ibkr_connection",
        labels: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        const = dict(labels or {})
        for name in const:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ConfigError("labels", f"invalid Prometheus label name {name!r}")
            if name in _RESERVED_LABELS:
                raise ConfigError("labels", f"label name {name!r} is used by the metrics")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.namespace = namespace
        self.labels = const
        self._clock = clock
        self._lock = threading.Lock()  # a scrape may come from another thread
        self._state: ConnectionState | None = None
        self._since = 0.0
        self._seconds = dict.fromkeys(ConnectionState, 0.0)
        self._outage_since: float | None = None

        names = list(const)
        self._state_gauge = Gauge(
            "state", "The connection state: 1 for the current state, 0 for the others.",
            [*names, "state"], namespace=namespace, registry=self.registry,
        )
        self._transitions = Counter(
            "transitions", "Changes of connection state, by trigger and destination.",
            [*names, "trigger", "dest"], namespace=namespace, registry=self.registry,
        )
        self._attempts = Counter(
            "reconnect_attempts", "Connection attempts started (moves into connecting).",
            names, namespace=namespace, registry=self.registry,
        )
        self._recovery = Histogram(
            "recovery_seconds",
            "Time from leaving connected/degraded to the next arrival in either.",
            names, namespace=namespace, registry=self.registry, buckets=RECOVERY_BUCKETS,
        )
        self._heartbeat = Histogram(
            "heartbeat_rtt_seconds", "Round-trip time of the heartbeat probe.",
            names, namespace=namespace, registry=self.registry, buckets=HEARTBEAT_BUCKETS,
        )
        prefix = f"{namespace}_" if namespace else ""
        self.registry.register(_StateSeconds(self, f"{prefix}state_seconds", const))

        values = list(const.values())
        for state in ConnectionState:
            self._state_gauge.labels(*values, state.value).set(0)
        if const:
            self._attempts_child = self._attempts.labels(*values)
            self._recovery_child = self._recovery.labels(*values)
            self._heartbeat_child = self._heartbeat.labels(*values)
        else:
            self._attempts_child = self._attempts
            self._recovery_child = self._recovery
            self._heartbeat_child = self._heartbeat

    @property
    def state(self) -> ConnectionState | None:
        """The current state, or None before :meth:`set_state` or a transition."""
        return self._state

    def set_state(self, state: ConnectionState) -> None:
        """Set the current state without a transition (the initial state).

        Time spent in the previous state, if any, is counted up to now.

        Args:
            state: the state the connection is in.
        """
        self._enter(state)

    def observe_transition(self, t: Transition) -> None:
        """Record one change of state.

        Args:
            t: the transition, as the machine recorded it.
        """
        if self._state is not None and t.source is not self._state:
            logger.debug(
                "transition from %s, but metrics thought the state was %s",
                t.source.value, self._state.value,
            )
        self._transitions.labels(*self.labels.values(), t.trigger.value, t.dest.value).inc()
        if t.dest is ConnectionState.CONNECTING:
            self._attempts_child.inc()
        self._time_recovery(t)
        self._enter(t.dest)

    def observe_heartbeat(self, rtt: float) -> None:
        """Record the round-trip time of one answered heartbeat.

        Args:
            rtt: seconds between the probe and its answer; a negative or
                non-finite value is dropped with a warning.
        """
        if not math.isfinite(rtt) or rtt < 0:
            logger.warning("dropping invalid heartbeat round-trip time %r", rtt)
            return
        self._heartbeat_child.observe(rtt)

    def state_seconds(self) -> dict[ConnectionState, float]:
        """Return the seconds spent in each state, the current one counted up to now."""
        with self._lock:
            seconds = dict(self._seconds)
            if self._state is not None:
                seconds[self._state] += max(0.0, self._clock() - self._since)
        return seconds

    def bind(self, manager: Any) -> None:
        """Follow a :class:`~ibkr_connection.manager.ConnectionManager`.

        Sets the current state, then observes every transition and every
        heartbeat round trip the manager reports.
        """
        self.set_state(manager.state)
        manager.stateChangeEvent += self.observe_transition
        manager.heartbeatEvent += self.observe_heartbeat

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)

    def _enter(self, state: ConnectionState) -> None:
        with self._lock:
            now = self._clock()
            if self._state is not None:
                self._seconds[self._state] += max(0.0, now - self._since)
            previous, self._state, self._since = self._state, state, now
        values = list(self.labels.values())
        if previous is not None and previous is not state:
            self._state_gauge.labels(*values, previous.value).set(0)
        self._state_gauge.labels(*values, state.value).set(1)

    def _time_recovery(self, t: Transition) -> None:
        if t.dest is ConnectionState.DISCONNECTED:
            self._outage_since = None
        elif t.source in USABLE_STATES and t.dest not in USABLE_STATES:
            self._outage_since = t.at
        elif t.dest in USABLE_STATES and self._outage_since is not None:
            duration = max(0.0, t.at - self._outage_since)
            self._outage_since = None
            self._recovery_child.observe(duration)
            logger.debug("recovered in %.3fs", duration)


__all__ = [
    "HEARTBEAT_BUCKETS",
    "METRICS_CONTENT_TYPE",
    "RECOVERY_BUCKETS",
    "USABLE_STATES",
    "ConnectionMetrics",
    "HealthServer",
]
