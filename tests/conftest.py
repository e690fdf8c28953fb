"""Fixtures shared by the whole suite.

Here, once: the pure machine's recording effects port, the fast policy, the
gateway simulator (``gw``), the client library of a run (``wire``, ``ib_factory``),
a manager factory (``make_manager``), the waits (``wait_until``, ``round_trip``), and
virtual time (a module that sets ``VIRTUAL_TIME = True`` runs on a ``VirtualTimeLoop``,
``gw`` and ``make_manager``'s managers on its clock; a directory's conftest.py hands
``loop_factories`` to pytest-asyncio's ``pytest_asyncio_loop_factories`` hook).
A directory's conftest.py changes a fixture's inputs (``wire``'s parameters,
``manager_settings``, ``manager_port``), never builds a second copy of it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from transitions import Event

from ibkr_connection import ConnectionConfig, ConnectionManager
from ibkr_connection.clock import Clock, LoopClock, ManualClock
from ibkr_connection.inputs import Input, InputKind
from ibkr_connection.machine import ConnectionMachine
from ibkr_connection.outputs import Step, Transition
from ibkr_connection.policy import BackoffPolicy, RecoveryPolicy
from ibkr_connection.simulator import FakeGateway
from ibkr_connection.simulator.month import VirtualTimeLoop
from ibkr_connection.table import ConnectionState, Row


class RecordingEffects:
    """Records the effects of every step a :class:`RecordedMachine` returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.heartbeat = False

    def record(self, step: Step) -> None:
        """Append the step's effects, in order."""
        for effect in step.effects:
            self.calls.append((effect.name, effect.args))
            if effect.name in ("start_heartbeat", "stop_heartbeat"):
                self.heartbeat = effect.name == "start_heartbeat"

    def names(self) -> list[str]:
        """Return the names of the recorded calls, in order."""
        return [name for name, _ in self.calls]

    def args_of(self, name: str) -> list[tuple[Any, ...]]:
        """Return the arguments of every call to ``name``."""
        return [args for called, args in self.calls if called == name]


@dataclass
class Mutant:
    """A changed table for the row-mutation test (tests/test_table_mutations.py).

    While one is set in :data:`MUTANT`, every :class:`RecordedMachine` is built
    with its rows, entry and exit actions (``ConnectionMachine``'s ``table=``,
    ``entry_actions=``, ``exit_actions=``) and notes each step it makes in ``met``
    (state before, input, state after) and the row that took it in ``rows``.
    """

    arguments: dict[str, Any]
    met: set[tuple[ConnectionState, InputKind, ConnectionState]] = field(default_factory=set)
    rows: set[Row | None] = field(default_factory=set)


#: The mutant the machines of this context run (None: the real table).
MUTANT: ContextVar[Mutant | None] = ContextVar("MUTANT", default=None)


class RecordedMachine(ConnectionMachine):
    """The machine, its steps' effects recorded and its transitions told to listeners.

    Tests only: the manager does both for a real machine.
    """

    def __init__(self, effects: RecordingEffects, clock: Clock, **kwargs: Any) -> None:
        self._mutant = MUTANT.get()
        if self._mutant is not None:
            kwargs = {**self._mutant.arguments, **kwargs}
        super().__init__(clock, **kwargs)
        self.effects = effects
        self.listeners: list[Callable[[Transition], object]] = []

    def add_listener(self, listener: Callable[[Transition], object]) -> None:
        """Call ``listener`` with every transition, after its step."""
        self.listeners.append(listener)

    def handle(self, inp: Input) -> Step:
        before = self.state
        step = super().handle(inp)
        if self._mutant is not None:
            self._mutant.met.add((before, inp.kind, step.state))
            self._mutant.rows.add(self.last_row)
        self.effects.record(step)
        if step.transition is not None:
            for listener in self.listeners:
                listener(step.transition)
        return step


def drive_to(machine: ConnectionMachine, state: ConnectionState) -> None:
    """Feed the inputs that take a fresh machine to ``state``."""
    paths: dict[ConnectionState, list[Input]] = {
        ConnectionState.DISCONNECTED: [],
        ConnectionState.CONNECTING: [Input(InputKind.CONNECT)],
        ConnectionState.CONNECTED: [Input(InputKind.CONNECT), Input(InputKind.ATTEMPT_SUCCEEDED)],
        ConnectionState.DEGRADED: [
            Input(InputKind.CONNECT),
            Input(InputKind.ATTEMPT_SUCCEEDED),
            Input(InputKind.FARM_BROKEN, code=2103, farm="usfarm"),
        ],
        ConnectionState.LOST: [
            Input(InputKind.CONNECT),
            Input(InputKind.ATTEMPT_SUCCEEDED),
            Input(InputKind.CONNECTIVITY_LOST, code=1100),
        ],
        ConnectionState.BACKOFF: [Input(InputKind.CONNECT), Input(InputKind.ATTEMPT_FAILED)],
        ConnectionState.FAILED: [Input(InputKind.CONNECT), Input(InputKind.FATAL_ERROR)],
        ConnectionState.STOPPED: [Input(InputKind.STOP)],
        # Needs a machine with a controller: after a session (the endpoint is
        # proven), a heartbeat miss and two attempts in a row that reached the
        # socket and got no handshake make a wedged gateway.
        ConnectionState.RESTARTING: [
            Input(InputKind.CONNECT), Input(InputKind.ATTEMPT_SUCCEEDED),
            Input(InputKind.HEARTBEAT_MISSED),
            Input(InputKind.RETRY_DUE), Input(InputKind.ATTEMPT_FAILED, costly=True),
            Input(InputKind.RETRY_DUE), Input(InputKind.ATTEMPT_FAILED, costly=True),
        ],
    }
    for inp in paths[state]:
        machine.handle(inp)
    assert machine.state is state


#: The loggers whose levels the CLI sets for its process (``_quiet_client_logs``, ``watch -q``).
_CLI_LOGGERS = ("", "ib_insync", "ib_async", "ibkr_connection", "asyncio")


@pytest.fixture(autouse=True)
def _logger_levels_restored() -> Iterator[None]:
    """Give the CLI's logger levels back after a test that ran ``cli.main`` in-process.

    ``main`` quietens loggers for the whole process, as a command should; in the
    test process that would hide the next tests' log records from ``caplog``.
    """
    levels = {name: logging.getLogger(name).level for name in _CLI_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def effects() -> RecordingEffects:
    """A fresh recording effects port."""
    return RecordingEffects()


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at t=0."""
    return ManualClock()


@pytest.fixture
def machine(effects: RecordingEffects, clock: ManualClock) -> ConnectionMachine:
    """A machine on port 4002 with client id 7 and default policy."""
    return RecordedMachine(effects, clock, port=4002, client_ids=[7], policy=RecoveryPolicy())


# -- waits: for events, never for time ---------------------------------------------------------

#: A hang guard, not an assertion: generous, so that a loaded machine never trips it.
GUARD = 30.0

#: Seconds after which a barrier's reqCurrentTime is sent again (see ``round_trip``).
RESEND = 1.0


async def wait_until(predicate: Callable[[], object], timeout: float = GUARD,
                     what: str = "") -> None:
    """Poll ``predicate`` on the running loop until it holds; fail after ``timeout`` s.

    Args:
        predicate: the condition awaited.
        timeout: a hang guard: the test fails with ``what`` once it has passed.
        what: what the test waits for, for the failure message.

    Raises:
        AssertionError: ``predicate`` did not hold within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.002)


async def round_trip(ib: Any, guard: float = GUARD) -> None:
    """A barrier: send a reqCurrentTime on ``ib``'s socket and wait for the answer.

    One socket carries everything in order both ways, and the simulator answers
    requests in the order they come: once the answer is back, the client has
    handled every message the gateway sent before it, and the gateway has acted
    on every request the client sent before it. A negative check ("nothing was
    sent", "nothing changed") closes on this, never on a sleep.

    A request whose answer has not come within a second is sent again: the client
    keeps one pending reqCurrentTime (``wrapper.startReq("currentTime")``), so a
    manager's heartbeat probe sent at the same moment takes the answer.

    Args:
        ib: a connected ``IB`` of ib_insync or ib_async.
        guard: a hang guard only.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + guard
    while True:
        try:
            await asyncio.wait_for(ib.reqCurrentTimeAsync(), RESEND)
            return
        except (TimeoutError, asyncio.TimeoutError):
            if loop.time() > deadline:
                raise AssertionError(f"hang guard: no reqCurrentTime answer in {guard} s") from None


# -- the simulator and managers on it ----------------------------------------------------------

#: The simulator's one account.
ACCOUNT = "DU1234567"

#: A fast policy for tests: the defaults' shape, shorter costly delays.
FAST_POLICY = RecoveryPolicy(backoff=BackoffPolicy(costly_delay=0.05, max_costly_delay=0.2))

#: (client library, the simulator's highest server version) of a test that does not
#: choose: ib_insync against a current gateway (178; ib_insync 0.9.86 speaks 176 to it).
DEFAULT_WIRE = ("ib_insync", 178)


@pytest.fixture
def wire(request: pytest.FixtureRequest) -> tuple[str, int]:
    """The client library and the simulator's highest server version of this run."""
    return getattr(request, "param", DEFAULT_WIRE)  # type: ignore[no-any-return]


@pytest.fixture
def ib_factory(wire: tuple[str, int]) -> Callable[[], Any]:
    """Makes ``IB`` objects of the wire's client library."""
    return importlib.import_module(wire[0]).IB  # type: ignore[no-any-return]


@pytest.fixture
async def gw(wire: tuple[str, int], request: pytest.FixtureRequest) -> AsyncIterator[FakeGateway]:
    """A running simulator with one account and AAPL at 150, speaking up to the wire's version
    (on the loop's clock on virtual time).

    Faults a test left in force are healed before it stops.
    """
    gateway = FakeGateway(accounts=[ACCOUNT], next_order_id=100, prices={"AAPL": 150.0},
                          server_version=wire[1],
                          clock=LoopClock() if on_virtual_time(request.node) else None)
    # The book forgets earlier days at New York's midnight, as TWS does; a test
    # on virtual time can span hours from the real time of day, and must not
    # see its fills forgotten by a midnight it happens to cross.
    gateway.book.day_zone = None
    await gateway.start()
    try:
        yield gateway
    finally:
        gateway.unstall()
        gateway.release_sync()
        await gateway.stop()


@pytest.fixture
def triggered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the ``transitions`` events triggered during the test, in order."""
    names: list[str] = []
    real = Event.trigger

    def counting(self: Event, model: object, *args: object, **kwargs: object) -> bool:
        names.append(self.name)
        return bool(real(self, model, *args, **kwargs))

    monkeypatch.setattr(Event, "trigger", counting)
    return names


@pytest.fixture
def manager_settings() -> dict[str, Any]:
    """The ConnectionConfig fields of ``make_manager``'s managers (a directory may override)."""
    return {"client_id": 7, "connect_timeout": 2.0, "policy": FAST_POLICY}


@pytest.fixture
def manager_port(gw: FakeGateway) -> int:
    """The port ``make_manager``'s managers connect to (the proxy's, under tests/proxy)."""
    return gw.port


# -- virtual time -----------------------------------------------------------------------------


def on_virtual_time(node: Any) -> bool:
    """True if the test's module sets ``VIRTUAL_TIME = True``."""
    return bool(getattr(getattr(node, "module", None), "VIRTUAL_TIME", False))


def loop_factories(item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop of an async test, for a directory's ``pytest_asyncio_loop_factories``.

    A module that sets ``VIRTUAL_TIME = True`` runs on a :class:`VirtualTimeLoop`: its
    timers (policy waits, handshake and IBC deadlines, hang guards) cost no wall clock,
    the clock jumping to the next timer whenever no socket is ready, and its sockets
    stay real loopback ones. Every other module runs on asyncio's own loop.
    """
    if on_virtual_time(item):
        return {"virtual_time": VirtualTimeLoop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
def manager_clock(request: pytest.FixtureRequest) -> Clock | None:
    """The clock of ``make_manager``'s managers: the loop's on virtual time (its timers'),
    else None (the system clock)."""
    return LoopClock() if on_virtual_time(request.node) else None


@pytest.fixture
async def make_manager(
    manager_port: int, ib_factory: Callable[[], Any], manager_settings: dict[str, Any],
    manager_clock: Clock | None,
) -> AsyncIterator[Callable[..., ConnectionManager]]:
    """Factory of managers driving a real ``IB`` on ``manager_port``; all stopped afterwards."""
    made: list[ConnectionManager] = []

    def make(**overrides: Any) -> ConnectionManager:
        fields = dict(manager_settings, port=manager_port)
        fields.update(overrides)
        manager = ConnectionManager(ib_factory(), ConnectionConfig(**fields),
                                    clock=manager_clock)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await asyncio.wait_for(manager.stop(), GUARD)  # a stop that hangs is a failure


async def on_live_session(manager: ConnectionManager, state: ConnectionState,
                          timeout: float = GUARD) -> None:
    """Wait until ``manager`` is in ``state`` on a live session: a round trip answered in it.

    The state alone does not say the manager has caught up: right after the gateway
    drops the socket, the manager is "connected" until its client reads the close. A
    reqCurrentTime answered proves the socket is live, so every message the gateway
    sent before has been handled (and the machine's moves are made as they are fed);
    ``state`` must still hold after it. A round trip lost with a closing socket is
    retried on the next session, and one whose answer a heartbeat probe took (see
    ``round_trip``) is sent again.

    Args:
        manager: the manager to watch.
        state: a state with a session (connected, degraded, lost).
        timeout: a hang guard: AssertionError once it has passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    others = [s for s in ConnectionState if s is not state]
    while True:
        left = deadline - loop.time()
        if left <= 0:
            moves = [t.dest.value for t in manager.transcript[-8:]]
            raise AssertionError(f"no live session in {state.value} within {timeout} s; now "
                                 f"{manager.state.value}, last moves {moves}")
        try:
            await manager.wait_for(state, timeout=left)
        except TimeoutError:
            continue
        # The answer, or the manager leaving the state (its client then drops the
        # round trip with the socket): whichever comes first.
        answer = asyncio.ensure_future(manager.ib.reqCurrentTimeAsync())
        away = asyncio.ensure_future(manager.wait_for(*others))
        await asyncio.wait({answer, away}, timeout=min(left, RESEND),
                           return_when=asyncio.FIRST_COMPLETED)
        for task in (answer, away):
            task.cancel()
        await asyncio.gather(answer, away, return_exceptions=True)
        if (answer.done() and not answer.cancelled() and answer.exception() is None
                and manager.state is state):
            return
        await asyncio.sleep(0.002)  # the old socket is closing: poll for the next session


# -- the command line, as a user runs it ---------------------------------------------------------

#: ``ibkr-connection`` as a child process of this interpreter.
CLI = [sys.executable, "-m", "ibkr_connection.cli"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``ibkr-connection ARGS`` to its end; its exit status, stdout and stderr."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def start_sim(*args: str) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    """Start ``ibkr-connection sim --port 0 ARGS`` and wait (with a deadline) until it is ready.

    Returns:
        The child, the port it listens on, and its stderr lines up to its ready line.
    """
    child = await asyncio.create_subprocess_exec(
        *CLI, "sim", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert child.stderr is not None
    seen: list[str] = []
    try:
        while not seen or "simulator ready on" not in seen[-1]:
            raw = await asyncio.wait_for(child.stderr.readline(), 60)
            assert raw, f"sim ended before it was ready: {seen}"
            seen.append(raw.decode().rstrip("\n"))
    except BaseException:
        child.kill()
        await child.wait()
        raise
    ready = re.search(r"ready on 127\.0\.0\.1:(\d+)", seen[-1])
    assert ready is not None, seen[-1]
    return child, int(ready.group(1)), seen


async def reap(child: asyncio.subprocess.Process) -> None:
    """Kill ``child`` if it still runs, and wait for it (a test's ``finally``)."""
    if child.returncode is None:
        child.kill()
        await child.wait()


async def read_until(stream: asyncio.StreamReader, lines: list[str], pattern: str,
                     count: int = 1) -> None:
    """Read lines into ``lines`` until ``pattern`` matched ``count`` of them (60 s hang guard)."""
    while sum(1 for line in lines if re.search(pattern, line)) < count:
        line = await asyncio.wait_for(stream.readline(), 60)
        assert line, f"the child closed stdout early: {lines}"
        lines.append(line.decode())


async def watch_child(port: int, until: Callable[[asyncio.StreamReader, list[str]], Any],
                      *extra: str) -> tuple[list[str], list[str], int | None]:
    """Run ``ibkr-connection watch --port PORT --client-id 3 EXTRA`` until ``until`` returns.

    ``until(stdout, lines)`` reads what it waits for; then the child gets SIGINT. No
    ``IBKR_*`` variable reaches it, nor ``PYTHONUNBUFFERED``: its lines arrive as they
    happen only if it flushes each one.

    Returns:
        stdout's lines, stderr's lines, the exit status.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IBKR_") and k != "PYTHONUNBUFFERED"}
    child = await asyncio.create_subprocess_exec(
        *CLI, "watch", "--port", str(port), "--client-id", "3", *extra, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    lines: list[str] = []
    try:
        await until(child.stdout, lines)
        child.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(child.communicate(), 60)
    finally:
        await reap(child)
    return (lines + rest.decode().splitlines(keepends=True), err.decode().splitlines(),
            child.returncode)


# -- virtual time ---------------------------------------------------------------------------------

_T = TypeVar("_T")


def run_on_virtual_time(main: Coroutine[Any, Any, _T]) -> _T:
    """Run ``main`` to its end on a :class:`VirtualTimeLoop`: its waits cost no wall clock.

    Sockets stay real loopback; the loop's clock jumps to the next timer whenever
    nothing is ready, so only code that reads the loop's clock belongs here.
    """
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
