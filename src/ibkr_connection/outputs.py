"""What the connection machine gives out: what to do, and records of what it did.

:meth:`~ibkr_connection.machine.ConnectionMachine.handle` returns a
:class:`Step`: the :class:`Transition` made (or None) and the effects asked
for, in order, each an :class:`Effect` (a command's name and its arguments,
plain data). The machine performs none of them: the asyncio driver carries
them out after the step, through the commands of :class:`Effects` (the
driver implements it; a test records the effects instead).
:class:`JournalEntry` is one line of the machine's journal. Plain data and a
protocol, no I/O; :mod:`ibkr_connection.inputs` is the other side: what
comes in.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, overload

if TYPE_CHECKING:
    from ibkr_connection.inputs import Input, InputKind
    from ibkr_connection.table import ConnectionState


@dataclass(frozen=True, slots=True)
class Effect:
    """One command a step asks for: the name of an :class:`Effects` method and its arguments.

    Attributes:
        name: the command (``"start_attempt"``, ``"schedule_retry"``, ...).
        args: its arguments, in order (numbers, flags and text only: plain data).
    """

    name: str
    args: tuple[float | int | str, ...] = ()

    def to_json(self) -> list[object]:
        """Return ``[name, *args]``, as the journal writes it."""
        return [self.name, *self.args]

    @classmethod
    def from_json(cls, data: list[object]) -> Effect:
        """Rebuild an effect written by :meth:`to_json`."""
        name, *args = data
        return cls(str(name), tuple(a for a in args if isinstance(a, (int, float, str))))


class Effects(Protocol):
    """The commands an :class:`Effect` may name, and what each does.

    The driver implements them and carries out each step's effects after
    :meth:`~ibkr_connection.machine.ConnectionMachine.handle` returned. Every
    method starts work and returns at once; results come back as inputs, fed
    after the step. Implementations must not raise.
    """

    def start_attempt(self, attempt: int, client_id: int, port: int) -> None:
        """Start connection attempt number ``attempt``."""

    def schedule_retry(self, delay: float) -> None:
        """Feed ``retry_due`` after ``delay`` seconds."""

    def cancel_retry(self) -> None:
        """Cancel a scheduled retry, if any."""

    def start_restore_timer(self, timeout: float) -> None:
        """Feed ``restore_timeout`` after ``timeout`` seconds."""

    def cancel_restore_timer(self) -> None:
        """Cancel the restore timer, if any."""

    def select_account(self, account: str) -> None:
        """Use ``account``, the one the table chose, for this session (account updates etc.)."""

    def refuse_account(self, message: str) -> None:
        """The table refused the login's accounts: the attempt fails with
        ``AccountError(message)``, logged as an ERROR."""

    def restore_subscriptions(self, fresh_session: bool) -> None:
        """Issue every subscription the bot registered: on a new session
        (``fresh_session``), or again after a 1101 dropped them."""

    def issue_new_subscriptions(self) -> None:
        """Issue the subscriptions added since the session came up."""

    def start_heartbeat(self) -> None:
        """Start probing the gateway when it is quiet."""

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat."""

    def tear_down(self) -> None:
        """Cancel the running attempt and close the socket."""

    def send_restart(self) -> None:
        """Ask the controller to restart the gateway, once; feed ``restart_sent``
        (accepted) or ``restart_failed`` (refused, unreachable, timed out)."""

    def start_restart_timer(self, timeout: float) -> None:
        """Feed ``restart_timeout`` after ``timeout`` seconds."""

    def cancel_restart_timer(self) -> None:
        """Cancel the restart timer, if any."""

    def probe_gateway(self, port: int, interval: float) -> None:
        """Probe the gateway (TCP connect and API handshake) every ``interval``
        seconds; feed ``gateway_back`` once it answers."""

    def cancel_probe(self) -> None:
        """Stop probing the gateway."""

    def send_reconnect_data(self) -> None:
        """Ask the controller to reconnect the data farms (logged, no input)."""

    def begin_session(self) -> None:
        """Settle the orders a dropped session left uncertain (the manager's order
        tracker, after the step's stateChangeEvent)."""

    def end_session(self) -> None:
        """Name the orders whose last request got no answer (the manager's order
        tracker, before the step's stateChangeEvent)."""

    def start_farm_timer(self, timeout: float) -> None:
        """Feed ``farm_reconnect_due`` after ``timeout`` seconds."""

    def cancel_farm_timer(self) -> None:
        """Cancel the farm timer, if any."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of state, as recorded in the transcript.

    Attributes:
        source: the state before.
        dest: the state after.
        trigger: the input that caused it.
        at: the injected clock's monotonic reading.
        cause: a human-readable cause (IB's message, the failure, the note).
        code: the IB code behind it, if any.
        attempt: the attempt number at the time.
        delay: for a move to ``backoff``, the delay before the next attempt.
    """

    source: ConnectionState
    dest: ConnectionState
    trigger: InputKind
    at: float
    cause: str = ""
    code: int | None = None
    attempt: int = 0
    delay: float | None = None

    def __str__(self) -> str:
        """``connected -> lost (connectivity_lost, 1100)``: how a bot prints it."""
        why = self.trigger.value if self.code is None else f"{self.trigger.value}, {self.code}"
        return f"{self.source.value} -> {self.dest.value} ({why})"

    def to_json(self) -> dict[str, object]:
        """Return the transition as a JSON-ready dict."""
        return {
            "source": self.source.value,
            "dest": self.dest.value,
            "trigger": self.trigger.value,
            "at": round(self.at, 6),
            "cause": self.cause,
            "code": self.code,
            "attempt": self.attempt,
            "delay": None if self.delay is None else round(self.delay, 6),
        }


#: What transitions share in a transcript: source, dest, trigger, cause and code.
_Key = tuple["ConnectionState", "ConnectionState", "InputKind", str, "int | None"]


class Transcript(Sequence[Transition]):
    """The machine's changes of state, oldest first: a sequence of :class:`Transition`.

    Read it like a list (``len``, indexing, slices, iteration; it compares
    equal to a list of the same transitions). It is kept in columns rather
    than as objects, because a bot keeps up to ``transcript_limit`` (10,000)
    of them for months, and most of them repeat one another (a gateway down
    for a weekly login is refused every 2 s for hours, each time the same
    pair of moves): the source, destination, trigger, cause and code of
    equal transitions are stored once and shared, the time, attempt and
    delay as machine numbers. An entry costs about 32 bytes instead of about
    140 as an object with its two floats (issue 21: the month's memory).
    Reading an entry builds its :class:`Transition` again, equal to the one
    recorded (not the same object).

    Args:
        transitions: the transitions to start with, oldest first.
    """

    __slots__ = ("_at", "_attempt", "_delay", "_keys", "_shared")

    def __init__(self, transitions: Iterable[Transition] = ()) -> None:
        self._keys: list[_Key] = []
        self._shared: dict[_Key, _Key] = {}
        self._at = array("d")
        self._attempt = array("q")
        #: NaN for a transition without a delay (a delay is never NaN).
        self._delay = array("d")
        for transition in transitions:
            self.append(transition)

    def append(self, transition: Transition) -> int:
        """Record ``transition`` as the most recent; return how many are kept now."""
        key = (transition.source, transition.dest, transition.trigger, transition.cause,
               transition.code)
        keys = self._keys
        keys.append(self._shared.setdefault(key, key))
        self._at.append(transition.at)
        self._attempt.append(transition.attempt)
        delay = transition.delay
        self._delay.append(math.nan if delay is None else delay)
        return len(keys)

    def keep_last(self, count: int) -> None:
        """Forget all but the ``count`` most recent transitions."""
        drop = max(len(self._keys) - max(count, 0), 0)
        if not drop:
            return
        del self._keys[:drop], self._at[:drop], self._attempt[:drop], self._delay[:drop]
        # Keys no transition left uses go too: the shared table stays bounded.
        self._shared = {key: key for key in self._keys}

    def __len__(self) -> int:
        return len(self._keys)

    @overload
    def __getitem__(self, index: int) -> Transition: ...

    @overload
    def __getitem__(self, index: slice) -> list[Transition]: ...

    def __getitem__(self, index: int | slice) -> Transition | list[Transition]:
        """Return the transition at ``index``, or a list of those in a slice."""
        if isinstance(index, slice):
            return [self._build(i) for i in range(*index.indices(len(self._keys)))]
        if index < 0:
            index += len(self._keys)
        if not 0 <= index < len(self._keys):
            raise IndexError("transcript index out of range")
        return self._build(index)

    def __iter__(self) -> Iterator[Transition]:
        for i in range(len(self._keys)):
            yield self._build(i)

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence (a list, another transcript) of equal transitions."""
        if isinstance(other, (str, bytes)) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Transcript({list(self)!r})"

    def _build(self, i: int) -> Transition:
        source, dest, trigger, cause, code = self._keys[i]
        delay = self._delay[i]
        return Transition(source, dest, trigger, self._at[i], cause, code, self._attempt[i],
                          None if math.isnan(delay) else delay)


@dataclass(frozen=True, slots=True)
class Step:
    """What one input did: the result of :meth:`ConnectionMachine.handle`.

    Attributes:
        input: the input handled.
        transition: the change of state it made, or None (a stay or an ignore).
        effects: what the driver is to do now, in order.
        state: the state after the input.
    """

    input: Input
    transition: Transition | None
    effects: tuple[Effect, ...]
    state: ConnectionState


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One handled input: what came in, when, the state it left and the effects it asked for.

    ``effects`` is None for an entry read from a journal written before effects
    were journaled: a replay then compares the states only.
    """

    at: float
    input: Input
    state: ConnectionState
    effects: tuple[Effect, ...] | None = None


__all__ = ["Effect", "Effects", "JournalEntry", "Step", "Transcript", "Transition"]
