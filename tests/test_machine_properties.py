"""Property tests: any sequence of inputs is handled, in any state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.table import SESSION_STATES, ConnectionState

from conftest import RecordedMachine, RecordingEffects

inputs = st.builds(
    Input,
    kind=st.sampled_from(list(InputKind)),
    code=st.one_of(st.none(), st.integers(0, 20000)),
    message=st.text(max_size=20),
    farm=st.one_of(st.none(), st.sampled_from(["usfarm", "ushmds", "secdefil", "eufarm"])),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    costly=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    sequence=st.lists(st.tuples(inputs, st.floats(0, 5)), max_size=60),
    max_attempts=st.one_of(st.none(), st.integers(1, 5)),
)
def test_random_inputs_never_raise(
    sequence: list[tuple[Input, float]], max_attempts: int | None
) -> None:
    """Random inputs never raise; the state stays declared; invariants hold."""
    effects = RecordingEffects()
    clock = ManualClock()
    policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=max_attempts))
    machine = RecordedMachine(effects, clock, port=4002, client_ids=[7, 8], policy=policy)
    for inp, dt in sequence:
        clock.advance(dt)
        state = machine.handle(inp).state
        assert state in ConnectionState
        if state not in SESSION_STATES:
            assert not effects.heartbeat, f"heartbeat left running in {state}"
        if state is ConnectionState.CONNECTED:
            assert not machine.broken_farms
    for previous, nxt in zip(machine.transcript, machine.transcript[1:], strict=False):
        assert previous.dest is nxt.source
        assert previous.at <= nxt.at
