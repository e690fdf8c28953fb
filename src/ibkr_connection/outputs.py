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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

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


__all__ = ["Effect", "Effects", "JournalEntry", "Step", "Transition"]
