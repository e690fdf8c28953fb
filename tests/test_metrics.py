"""Tests of the Prometheus metrics."""

from __future__ import annotations

import importlib
import math
import sys

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ibkr_connection.clock import ManualClock
from ibkr_connection.errors import ConfigError
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.metrics import ConnectionMetrics
from ibkr_connection.outputs import Transition
from ibkr_connection.policy import RecoveryPolicy
from ibkr_connection.table import ConnectionState

from conftest import RecordedMachine, RecordingEffects

S = ConnectionState
I = InputKind  # noqa: E741


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tr(source: S, dest: S, trigger: I, at: float) -> Transition:
    """Build a transition."""
    return Transition(source=source, dest=dest, trigger=trigger, at=at)


def value(m: ConnectionMetrics, name: str, **labels: str) -> float | None:
    """Return one sample's value from the metrics' own registry."""
    return m.registry.get_sample_value(name, labels)


#: An outage and its recovery, an IB link loss and its restore, a user's
#: disconnect and reconnect.
SCRIPT: list[Transition] = [
    tr(S.DISCONNECTED, S.CONNECTING, I.CONNECT, 0.0),
    tr(S.CONNECTING, S.CONNECTED, I.ATTEMPT_SUCCEEDED, 0.5),
    tr(S.CONNECTED, S.BACKOFF, I.SOCKET_CLOSED, 10.0),
    tr(S.BACKOFF, S.CONNECTING, I.RETRY_DUE, 12.0),
    tr(S.CONNECTING, S.CONNECTED, I.ATTEMPT_SUCCEEDED, 12.5),
    tr(S.CONNECTED, S.DEGRADED, I.FARM_BROKEN, 20.0),
    tr(S.DEGRADED, S.LOST, I.CONNECTIVITY_LOST, 21.0),
    tr(S.LOST, S.CONNECTED, I.RESTORED_DATA_KEPT, 21.25),
    tr(S.CONNECTED, S.DISCONNECTED, I.DISCONNECT, 30.0),
    tr(S.DISCONNECTED, S.CONNECTING, I.CONNECT, 500.0),
    tr(S.CONNECTING, S.CONNECTED, I.ATTEMPT_SUCCEEDED, 501.0),
]


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fake monotonic clock at 100 s."""
    return FakeClock()


@pytest.fixture
def played(fake_clock: FakeClock) -> ConnectionMetrics:
    """Metrics that saw SCRIPT, the fake clock 1000 s ahead, disconnected 1 s before."""
    m = ConnectionMetrics(clock=fake_clock)
    fake_clock.now = 999.0
    m.set_state(S.DISCONNECTED)
    for transition in SCRIPT:
        fake_clock.now = 1000.0 + transition.at
        m.observe_transition(transition)
    return m


def test_state_gauge_is_one_for_the_initial_state_only() -> None:
    """set_state sets the initial state's series to 1 and every other to 0."""
    m = ConnectionMetrics(clock=FakeClock())
    m.set_state(S.BACKOFF)
    assert m.state is S.BACKOFF
    for state in S:
        expected = 1.0 if state is S.BACKOFF else 0.0
        assert value(m, "ibkr_connection_state", state=state.value) == expected


def test_state_gauge_follows_transitions(played: ConnectionMetrics) -> None:
    """After the script only the connected series is 1."""
    assert [s for s in S if value(played, "ibkr_connection_state", state=s.value) == 1.0] == [
        S.CONNECTED
    ]
    assert sum(value(played, "ibkr_connection_state", state=s.value) or 0.0 for s in S) == 1.0


def test_state_gauge_exists_before_any_state() -> None:
    """Every state has a series (at 0) before the first state is known."""
    m = ConnectionMetrics()
    assert m.state is None
    assert [value(m, "ibkr_connection_state", state=s.value) for s in S] == [0.0] * 9


@pytest.mark.parametrize(
    ("trigger", "dest", "count"),
    [
        ("connect", "connecting", 2.0),
        ("attempt_succeeded", "connected", 3.0),
        ("socket_closed", "backoff", 1.0),
        ("retry_due", "connecting", 1.0),
        ("farm_broken", "degraded", 1.0),
        ("connectivity_lost", "lost", 1.0),
        ("restored_data_kept", "connected", 1.0),
        ("disconnect", "disconnected", 1.0),
    ],
)
def test_transitions_are_counted_by_trigger_and_dest(
    played: ConnectionMetrics, trigger: str, dest: str, count: float
) -> None:
    """Each (trigger, dest) pair counts its transitions."""
    assert value(played, "ibkr_connection_transitions_total", trigger=trigger, dest=dest) == count


def test_unseen_transition_has_no_series(played: ConnectionMetrics) -> None:
    """A pair never seen has no series at all."""
    assert value(played, "ibkr_connection_transitions_total",
                 trigger="fatal_error", dest="failed") is None


def test_reconnect_attempts_count_moves_into_connecting(played: ConnectionMetrics) -> None:
    """Every move into connecting is an attempt: two connects and one retry."""
    assert value(played, "ibkr_connection_reconnect_attempts_total") == 3.0


def test_recovery_histogram_times_outages(played: ConnectionMetrics) -> None:
    """Backoff outage 2.5 s and lost outage 0.25 s; the user's disconnect is not timed."""
    name = "ibkr_connection_recovery_seconds"
    assert value(played, f"{name}_count") == 2.0
    assert value(played, f"{name}_sum") == 2.75
    assert value(played, f"{name}_bucket", le="0.1") == 0.0
    assert value(played, f"{name}_bucket", le="0.25") == 1.0
    assert value(played, f"{name}_bucket", le="2.5") == 2.0
    assert value(played, f"{name}_bucket", le="900.0") == 2.0
    assert value(played, f"{name}_bucket", le="+Inf") == 2.0


def test_recovery_buckets_span_10ms_to_15min() -> None:
    """The recovery histogram's finite buckets run from 0.01 s to 900 s."""
    m = ConnectionMetrics()
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    bounds = [
        float(s.labels["le"]) for s in families["ibkr_connection_recovery_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    finite = [b for b in bounds if not math.isinf(b)]
    assert (min(finite), max(finite)) == (0.01, 900.0)


def test_degraded_to_connected_is_not_a_recovery(fake_clock: FakeClock) -> None:
    """Moving between connected and degraded never leaves a usable state."""
    m = ConnectionMetrics(clock=fake_clock)
    m.set_state(S.CONNECTED)
    m.observe_transition(tr(S.CONNECTED, S.DEGRADED, I.FARM_BROKEN, 1.0))
    m.observe_transition(tr(S.DEGRADED, S.CONNECTED, I.FARM_OK, 5.0))
    assert value(m, "ibkr_connection_recovery_seconds_count") == 0.0


def test_recovery_through_failed_is_timed_to_the_next_session(fake_clock: FakeClock) -> None:
    """An outage that gave up and was restarted by hand ends at the next session."""
    m = ConnectionMetrics(clock=fake_clock)
    m.set_state(S.CONNECTED)
    m.observe_transition(tr(S.CONNECTED, S.FAILED, I.FATAL_ERROR, 1.0))
    m.observe_transition(tr(S.FAILED, S.CONNECTING, I.CONNECT, 60.0))
    m.observe_transition(tr(S.CONNECTING, S.DEGRADED, I.ATTEMPT_SUCCEEDED, 61.0))
    assert value(m, "ibkr_connection_recovery_seconds_count") == 1.0
    assert value(m, "ibkr_connection_recovery_seconds_sum") == 60.0


@pytest.mark.parametrize(
    ("state", "seconds"),
    [
        ("disconnected", 1.0 + 470.0),
        ("connecting", 0.5 + 0.5 + 1.0),
        ("connected", 9.5 + 7.5 + 8.75),
        ("degraded", 1.0),
        ("lost", 0.25),
        ("backoff", 2.0),
        ("failed", 0.0),
    ],
)
def test_state_seconds_accumulate_on_transitions(
    played: ConnectionMetrics, state: str, seconds: float
) -> None:
    """Seconds spent in each state, on the injected clock, up to the last transition."""
    assert value(played, "ibkr_connection_state_seconds_total", state=state) == seconds


def test_state_seconds_of_current_state_are_current_at_scrape(
    played: ConnectionMetrics, fake_clock: FakeClock
) -> None:
    """The current state's seconds grow between transitions, seen at each scrape."""
    before = value(played, "ibkr_connection_state_seconds_total", state="connected")
    fake_clock.now += 42.0
    assert value(played, "ibkr_connection_state_seconds_total", state="connected") == (
        (before or 0.0) + 42.0
    )
    assert value(played, "ibkr_connection_state_seconds_total", state="backoff") == 2.0


def test_state_seconds_render_as_a_counter(played: ConnectionMetrics) -> None:
    """The state seconds render as a counter with one series per state."""
    families = {f.name: f for f in text_string_to_metric_families(played.render().decode())}
    family = families["ibkr_connection_state_seconds"]
    assert family.type == "counter"
    assert sorted(s.labels["state"] for s in family.samples) == sorted(s.value for s in S)


def test_rendered_metric_names_and_types(played: ConnectionMetrics) -> None:
    """render() exposes every metric under the namespace with its type."""
    played.observe_heartbeat(0.004)
    families = {
        f.name: f.type for f in text_string_to_metric_families(played.render().decode())
        if not f.name.endswith("_created")
    }
    assert families == {
        "ibkr_connection_state": "gauge",
        "ibkr_connection_transitions": "counter",
        "ibkr_connection_reconnect_attempts": "counter",
        "ibkr_connection_recovery_seconds": "histogram",
        "ibkr_connection_heartbeat_rtt_seconds": "histogram",
        "ibkr_connection_state_seconds": "counter",
    }
    text = played.render().decode()
    assert 'ibkr_connection_state{state="connected"} 1.0' in text


def test_heartbeat_histogram() -> None:
    """Heartbeat round trips land in their buckets; invalid ones are dropped."""
    m = ConnectionMetrics()
    for rtt in (0.002, 0.004, 0.3, -1.0, math.nan, math.inf):
        m.observe_heartbeat(rtt)
    name = "ibkr_connection_heartbeat_rtt_seconds"
    assert value(m, f"{name}_count") == 3.0
    assert value(m, f"{name}_sum") == pytest.approx(0.306)
    assert value(m, f"{name}_bucket", le="0.001") == 0.0
    assert value(m, f"{name}_bucket", le="0.0025") == 1.0
    assert value(m, f"{name}_bucket", le="0.005") == 2.0
    assert value(m, f"{name}_bucket", le="0.5") == 3.0


def test_constant_labels_and_namespace() -> None:
    """Constant labels appear on every series, under the chosen namespace."""
    m = ConnectionMetrics(namespace="bot", labels={"gateway": "paper"}, clock=FakeClock())
    m.set_state(S.DISCONNECTED)
    m.observe_transition(tr(S.DISCONNECTED, S.CONNECTING, I.CONNECT, 0.0))
    m.observe_heartbeat(0.01)
    assert value(m, "bot_state", gateway="paper", state="connecting") == 1.0
    assert value(m, "bot_transitions_total", gateway="paper",
                 trigger="connect", dest="connecting") == 1.0
    assert value(m, "bot_reconnect_attempts_total", gateway="paper") == 1.0
    assert value(m, "bot_heartbeat_rtt_seconds_count", gateway="paper") == 1.0
    assert value(m, "bot_recovery_seconds_count", gateway="paper") == 0.0
    assert value(m, "bot_state_seconds_total", gateway="paper", state="connecting") == 0.0
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            assert sample.labels.get("gateway") == "paper", sample


@pytest.mark.parametrize("label", ["state", "trigger", "dest", "le", "1bad", "__x"])
def test_reserved_or_invalid_constant_label_is_a_config_error(label: str) -> None:
    """A constant label may not shadow the metrics' own labels or be invalid."""
    with pytest.raises(ConfigError) as info:
        ConnectionMetrics(labels={label: "x"})
    assert info.value.field == "labels"


def test_each_instance_has_its_own_registry() -> None:
    """Two instances never collide, and neither touches the global registry."""
    from prometheus_client import REGISTRY

    a, b = ConnectionMetrics(), ConnectionMetrics()
    a.set_state(S.CONNECTED)
    assert a.registry is not b.registry
    assert value(b, "ibkr_connection_state", state="connected") == 0.0
    assert REGISTRY.get_sample_value("ibkr_connection_state", {"state": "connected"}) is None


def test_a_given_registry_is_used() -> None:
    """Metrics register in the registry passed in."""
    registry = CollectorRegistry()
    m = ConnectionMetrics(registry=registry)
    assert m.registry is registry
    m.set_state(S.LOST)
    assert registry.get_sample_value("ibkr_connection_state", {"state": "lost"}) == 1.0


def test_metrics_follow_a_real_machine() -> None:
    """Fed by a machine's listener, the metrics see the machine's transitions."""
    clock = ManualClock()
    machine = RecordedMachine(RecordingEffects(), clock, port=4002, client_ids=[7],
                                policy=RecoveryPolicy())
    m = ConnectionMetrics(clock=clock.monotonic)
    m.set_state(machine.state)
    machine.add_listener(m.observe_transition)
    machine.handle(Input(I.CONNECT))
    clock.advance(2.0)
    machine.handle(Input(I.ATTEMPT_SUCCEEDED))
    clock.advance(3.0)
    machine.handle(Input(I.CONNECTIVITY_LOST, code=1100))
    clock.advance(4.0)
    machine.handle(Input(I.RESTORED_DATA_LOST, code=1101))
    assert m.state is machine.state is S.CONNECTED
    assert value(m, "ibkr_connection_recovery_seconds_sum") == 4.0
    assert value(m, "ibkr_connection_state_seconds_total", state="connecting") == 2.0
    assert value(m, "ibkr_connection_state_seconds_total", state="lost") == 4.0


def test_import_without_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing the module without prometheus_client names the extra to install."""
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "ibkr_connection.metrics")
    with pytest.raises(ImportError, match=r"ibkr-connection\[metrics\]"):
        importlib.import_module("ibkr_connection.metrics")
