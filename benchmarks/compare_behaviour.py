"""Capture what the pure connection machine does, to compare two versions of the code.

Feeds a fresh :class:`~ibkr_connection.machine.ConnectionMachine` (ManualClock,
fixed seeds) the cells of the hand-written grid (every state x every input,
with and without a controller), a few hundred seeded random input sequences
and a few long storms, and writes, input by input: the state it led to, the
transition made (its JSON), the effects asked for (names and arguments), the
machine's counters, the journal line and the log lines. The machine's two
shapes are both understood: effects called on an ``Effects`` port (the code
before issue 19) and effects returned in a ``Step``.

Run it on two checkouts and compare::

    uv run python benchmarks/compare_behaviour.py capture /tmp/before.json   # old tree
    uv run python benchmarks/compare_behaviour.py capture /tmp/after.json    # new tree
    uv run python benchmarks/compare_behaviour.py diff /tmp/before.json /tmp/after.json

``diff`` prints every kind of difference with a count and the first example,
and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ibkr_connection.clock import ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.table import ConnectionState

S = ConnectionState
K = InputKind

#: Inputs that take a fresh machine to each state (as tests/conftest.drive_to).
PATHS: dict[str, list[Input]] = {
    "disconnected": [],
    "connecting": [Input(K.CONNECT)],
    "connected": [Input(K.CONNECT), Input(K.ATTEMPT_SUCCEEDED)],
    "degraded": [Input(K.CONNECT), Input(K.ATTEMPT_SUCCEEDED),
                 Input(K.FARM_BROKEN, code=2103, farm="usfarm")],
    "lost": [Input(K.CONNECT), Input(K.ATTEMPT_SUCCEEDED), Input(K.CONNECTIVITY_LOST, code=1100)],
    "backoff": [Input(K.CONNECT), Input(K.ATTEMPT_FAILED)],
    "failed": [Input(K.CONNECT), Input(K.FATAL_ERROR)],
    "stopped": [Input(K.STOP)] if hasattr(K, "STOP") else [],
    "restarting": [Input(K.CONNECT), Input(K.ATTEMPT_SUCCEEDED), Input(K.HEARTBEAT_MISSED),
                   Input(K.RETRY_DUE), Input(K.ATTEMPT_FAILED, costly=True),
                   Input(K.RETRY_DUE), Input(K.ATTEMPT_FAILED, costly=True)],
}

#: The payload each input carries in the grid (as tests/test_machine_table.py).
PAYLOAD: dict[str, dict[str, Any]] = {
    "farm_broken": {"code": 2103, "farm": "ushmds"},
    "farm_ok": {"code": 2104, "farm": "usfarm"},
    "port_reset": {"code": 1300, "port": 4003},
    "connectivity_lost": {"code": 1100},
    "restored_data_lost": {"code": 1101},
    "restored_data_kept": {"code": 1102},
    "server_link_broken": {"code": 2110},
    "client_id_in_use": {"code": 326},
    "not_connected": {"code": 504},
}

_FARMS = ("usfarm", "ushmds", "secdefil", "eufarm")
#: Noon in New York (outside IB's reset windows) and 23:55 (inside the nightly one).
_NOON = datetime(2026, 1, 6, 17, 0, tzinfo=timezone.utc)
_RESET = datetime(2026, 1, 7, 4, 55, tzinfo=timezone.utc)


class _LogCapture(logging.Handler):
    """Keeps every record of the ``ibkr_connection`` loggers as text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class _Recorder:
    """An Effects port that records the calls (the older machine's shape)."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append([name, list(args)])


class Subject:
    """One machine, fed input by input, whatever its shape."""

    def __init__(self, clock: ManualClock, policy: RecoveryPolicy, controller: bool,
                 client_ids: tuple[int, ...] = (7,)) -> None:
        self.clock = clock
        kwargs: dict[str, Any] = {"port": 4002, "client_ids": client_ids, "policy": policy,
                                  "controller_configured": controller}
        self._recorder: _Recorder | None = None
        if "effects" in inspect.signature(ConnectionMachine).parameters:
            self._recorder = _Recorder()
            self.machine = ConnectionMachine(self._recorder, clock, **kwargs)  # type: ignore[call-arg, arg-type]
        else:
            self.machine = ConnectionMachine(clock, **kwargs)

    def feed(self, inp: Input) -> dict[str, Any]:
        """Feed ``inp``; return what it did, as plain data."""
        machine = self.machine
        made = len(machine.transcript)
        last = machine.transcript[-1] if machine.transcript else None
        if self._recorder is not None:
            self._recorder.calls.clear()
            machine.handle(inp)
            effects = list(self._recorder.calls)
        else:
            step: Any = machine.handle(inp)
            effects = [[effect.name, list(effect.args)] for effect in step.effects]
        transition = None
        if machine.transcript and (len(machine.transcript) != made
                                   or machine.transcript[-1] is not last):
            transition = machine.transcript[-1].to_json()
        journal = [[round(entry.at, 6), entry.input.to_json(), entry.state.value]
                   for entry in machine.journal]
        machine.journal.clear()
        return {
            "input": inp.to_json(),
            "state": machine.state.value,
            "transition": transition,
            "effects": effects,
            "counters": [machine.attempt, machine.wedge_signs, machine.restarts,
                         machine.client_id, machine.port],
            "journal": journal,
        }


#: The inputs a random sequence draws from: every kind but ``stop`` (the manager's
#: end: the rest of a sequence would be ignored), so that the random streams are
#: the same on trees with and without it.
_RANDOM_KINDS = [kind for kind in InputKind if kind.value != "stop"]


def _random_input(rng: random.Random) -> Input:
    kind = rng.choice(_RANDOM_KINDS)
    farm = rng.choice(_FARMS) if kind in (K.FARM_BROKEN, K.FARM_OK) else None
    port = rng.choice((None, 4002, 4003)) if kind is K.PORT_RESET else None
    return Input(kind, code=rng.choice((None, 1100, 2103, 9999)), farm=farm, port=port,
                 costly=rng.random() < 0.5, message=f"random {kind.value}")


def _run(name: str, subject: Subject, inputs: list[tuple[float, Input]],
         logs: _LogCapture) -> dict[str, Any]:
    steps = []
    for advance, inp in inputs:
        if advance:
            subject.clock.advance(advance)
        logs.lines.clear()
        step = subject.feed(inp)
        step["logs"] = list(logs.lines)
        steps.append(step)
    return {"name": name, "steps": steps}


def capture() -> list[dict[str, Any]]:
    """Run every case; return their records."""
    logs = _LogCapture()
    root = logging.getLogger("ibkr_connection")
    root.addHandler(logs)
    root.setLevel(logging.DEBUG)
    cases: list[dict[str, Any]] = []
    try:
        # The grid: every state x every input, with and without a controller.
        for controller in (True, False):
            for state, path in PATHS.items():
                if state == "stopped" and not path:
                    continue  # a tree without the state
                for kind in InputKind:
                    subject = Subject(ManualClock(wall_start=_NOON), RecoveryPolicy(), controller)
                    inputs = [(0.0, inp) for inp in path]
                    inputs.append((0.0, Input(kind, **PAYLOAD.get(kind.value, {}))))
                    cases.append(_run(f"grid {state} {kind.value} controller={controller}",
                                      subject, inputs, logs))
        # Seeded random sequences: a few hundred, short, varied policies.
        for seed in range(300):
            rng = random.Random(seed)
            policy = RecoveryPolicy(
                backoff=BackoffPolicy(max_attempts=rng.choice((None, 3, 10))),
                restore_timeout=30.0, restart_wait=20.0, restart_cooldown=60.0,
                restart_after=rng.choice((1, 2, 3)), same_client_id_retries=rng.choice((0, 1)),
                seed=seed)
            wall = _RESET if seed % 5 == 0 else _NOON
            subject = Subject(ManualClock(wall_start=wall), policy, controller=seed % 3 != 0,
                              client_ids=(7, 8) if seed % 2 else (7,))
            inputs = [(rng.expovariate(0.5), _random_input(rng))
                      for _ in range(rng.randint(5, 80))]
            cases.append(_run(f"random {seed}", subject, inputs, logs))
        # Long storms.
        for seed in (11, 12, 5):
            rng = random.Random(seed)
            policy = RecoveryPolicy(backoff=BackoffPolicy(max_attempts=rng.choice((None, 50))),
                                    restore_timeout=30.0, restart_wait=20.0,
                                    restart_cooldown=60.0, seed=seed)
            subject = Subject(ManualClock(wall_start=_NOON), policy, controller=True,
                              client_ids=(7, 8))
            inputs = [(rng.expovariate(2.0), _random_input(rng)) for _ in range(4000)]
            cases.append(_run(f"storm {seed}", subject, inputs, logs))
    finally:
        root.removeHandler(logs)
    return cases


def diff(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> int:
    """Print each kind of difference with a count and an example; return their number."""
    kinds: Counter[str] = Counter()
    examples: dict[str, str] = {}
    names_before = {c["name"] for c in before}
    names_after = {c["name"] for c in after}
    # A new state or input adds grid cases: name them, compare the common ones.
    for which, names in (("only before", names_before - names_after),
                         ("only after", names_after - names_before)):
        if names:
            kinds[f"cases {which}"] = len(names)
            examples[f"cases {which}"] = ", ".join(sorted(names)[:6])
    common = names_before & names_after
    before = [c for c in before if c["name"] in common]
    after = [c for c in after if c["name"] in common]
    for old, new in zip(before, after, strict=True):
        for number, (a, b) in enumerate(zip(old["steps"], new["steps"], strict=True)):
            for field in ("state", "transition", "effects", "counters", "journal", "logs"):
                if a[field] != b[field]:
                    key = f"{field}"
                    kinds[key] += 1
                    examples.setdefault(key, f"{old['name']} step {number} "
                                             f"({a['input']['input']}):\n    before "
                                             f"{a[field]}\n    after  {b[field]}")
    steps = sum(len(c["steps"]) for c in before)
    print(f"{len(before)} cases, {steps} inputs")
    for key, count in kinds.most_common():
        what = "case(s)" if key.startswith("cases") else "input(s) differ"
        print(f"{key}: {count} {what}; first: {examples[key]}")
    if not kinds:
        print("no difference")
    return len(kinds)


def main() -> int:
    """Run the command line."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = args.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="capture this tree's behaviour into a JSON file")
    cap.add_argument("out", type=Path)
    cmp = sub.add_parser("diff", help="compare two captures")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    parsed = args.parse_args()
    if parsed.command == "capture":
        cases = capture()
        parsed.out.write_text(json.dumps(cases))
        print(f"wrote {parsed.out}: {len(cases)} cases, "
              f"{sum(len(c['steps']) for c in cases)} inputs")
        return 0
    before = json.loads(parsed.before.read_text())
    after = json.loads(parsed.after.read_text())
    return 1 if diff(before, after) else 0


if __name__ == "__main__":
    sys.exit(main())
