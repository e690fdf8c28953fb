"""Recovery policy: backoff schedule, restore patience, IB's reset windows.

All of it is plain data with pure functions, used by the machine. The defaults
are chosen for a bot running on the same host (or LAN) as its gateway:

* A refused TCP connect on loopback costs the gateway next to nothing, and a
  restarting gateway should be noticed within a quarter of a second of it
  listening again, so the fast schedule starts at 50 ms and is capped at 250 ms
  (about four refused connects a second while the gateway is down).
* A gateway that has refused for about a minute (``long_outage_after``, 240
  failures in a row: a minute at the 250 ms cap) is not restarting quickly: it
  waits for a person (the weekly login, a 2FA prompt) or for a long restart.
  From then on the cheap schedule's cap is ``long_outage_delay`` (2 s): one
  connect every 2 s costs at most 2 s of availability once the gateway is back,
  and cuts the refused connects (each one two client log lines, a transition
  pair and a connect's CPU) by about 8x over an outage of hours. A costly
  failure keeps its own schedule (1 s doubling to 10 s), and a session that
  comes up resets the count. Outages shorter than a minute (a restart, a
  dropped link) are retried as fast as before.
* An attempt that reached the API (a handshake, a startup sync, a 326 or a
  timeout) does cost the gateway work, so after such a failure the next attempt
  waits at least ``costly_delay`` (1 s, doubling up to 10 s). A stale session
  holding our client id also needs that long to be released.
* Jitter only ever shortens a delay (by up to 10 %), so the caps hold, and it is
  drawn from a seeded random source, so the same seed gives the same schedule.
* ``max_attempts=None`` retries forever: a bot should outlive a gateway restart
  of any length. The seed's sync ``connect()`` uses 3.
* A 1100 (TWS lost IB) usually heals by itself within a minute or two; after
  ``restore_timeout`` (120 s) we reconnect from scratch. Inside IB's scheduled
  reset windows the loss is expected maintenance and we wait
  ``maintenance_restore_timeout`` (15 min) instead.
* With a controller (IBC), a wedged gateway is restarted: after
  ``restart_after`` (3) consecutive wedge signs (an attempt that reached the
  socket and got no handshake or no startup sync, or a heartbeat miss), or a
  1100 that outlasts ``restore_timeout`` outside the reset windows. A gateway
  restart with its login takes tens of seconds: it gets ``restart_wait``
  (3 min) to answer again; one restart at most per ``restart_cooldown``
  (10 min), so IBC is never hammered. A farm broken for
  ``farm_reconnect_after`` (5 min, as QuantConnect Lean's soft restart) gets
  one RECONNECTDATA per outage.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo

from ibkr_connection.errors import ConfigError


@dataclass(frozen=True)
class BackoffPolicy:
    """When to try again after a failed attempt or a lost socket.

    Attributes:
        initial_delay: the first delay after a cheap failure (refused connect
            or a socket that closed after a good session), in seconds.
        factor: growth of the delay per consecutive failure.
        max_delay: cap of the cheap schedule.
        costly_delay: the first delay after a failure that cost the gateway
            an API handshake (timeout, 326, drop during the startup sync).
        max_costly_delay: cap of the costly schedule.
        jitter: the fraction by which a delay may be shortened at random.
        max_attempts: attempts before giving up (None: never give up).
        long_outage_after: failures in a row (the series' count, of either
            kind, since the last session) after which the cheap schedule's cap
            becomes ``long_outage_delay``; None: never.
        long_outage_delay: the cheap schedule's cap from then on (jitter still
            only shortens it); not below ``max_delay``.
    """

    initial_delay: float = 0.05
    factor: float = 2.0
    max_delay: float = 0.25
    costly_delay: float = 1.0
    max_costly_delay: float = 10.0
    jitter: float = 0.1
    max_attempts: int | None = None
    long_outage_after: int | None = 240
    long_outage_delay: float = 2.0

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "costly_delay", "max_costly_delay"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must not be negative")
        if self.factor < 1.0:
            raise ConfigError("factor", "must be at least 1.0")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError("jitter", "must be in [0, 1)")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("max_attempts", "must be at least 1, or None for no limit")
        after = self.long_outage_after
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)
                                  or after < 1):
            raise ConfigError("long_outage_after",
                              f"must be an integer of at least 1, or None, got {after!r}")
        delay = self.long_outage_delay
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not (
                math.isfinite(delay) and delay >= self.max_delay):
            raise ConfigError("long_outage_delay",
                              f"must be a number of seconds not below max_delay "
                              f"({self.max_delay}), got {delay!r}")

    def delay(self, failures: int, costly: bool, rng: random.Random) -> float:
        """Return the delay before the next attempt.

        Args:
            failures: consecutive failures so far, counting this one (>= 1).
            costly: whether the last failure cost the gateway a handshake.
            rng: the seeded random source for jitter.

        Returns:
            The delay in seconds, never above the schedule's cap.
        """
        exponent = max(failures - 1, 0)
        # factor ** exponent past ~1e300 would overflow a float (2.0 ** 1024: a
        # gateway refused for hours gets there); the cap holds long before, so
        # the growth is infinite from then on, without raising on every attempt.
        growth = math.inf if exponent * math.log(self.factor) > 690.0 else self.factor**exponent
        if costly:
            start, cap = self.costly_delay, self.max_costly_delay
        else:
            start, cap = self.initial_delay, self.max_delay
            after = self.long_outage_after
            if after is not None and failures > after:
                # A minute of refusals: the gateway waits for a person or a
                # long restart (see the module docstring).
                cap = self.long_outage_delay
        base = min(cap, start * growth) if start > 0 else 0.0
        return base * (1.0 - self.jitter * rng.random())

    def exhausted(self, attempts: int) -> bool:
        """Return True when ``attempts`` attempts used up the allowance."""
        return self.max_attempts is not None and attempts >= self.max_attempts


@dataclass(frozen=True)
class ResetWindow:
    """A daily window in which IB restarts its servers (a 1100 is expected).

    Attributes:
        start: local start time.
        end: local end time; may be earlier than ``start`` (crosses midnight).
        tz: the IANA time zone of ``start`` and ``end``.
    """

    start: time
    end: time
    tz: str = "America/New_York"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except Exception as exc:
            raise ConfigError("tz", f"unknown time zone {self.tz!r}") from exc

    def contains(self, when: datetime) -> bool:
        """Return True if the aware datetime ``when`` falls inside the window."""
        local = when.astimezone(ZoneInfo(self.tz)).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


#: IB's North American nightly server reset, with a quarter hour of margin.
NIGHTLY_RESET_US = ResetWindow(time(23, 45), time(0, 45), "America/New_York")


@dataclass(frozen=True)
class RecoveryPolicy:
    """Everything the machine needs to decide how to recover.

    Attributes:
        backoff: the retry schedule.
        restore_timeout: seconds to wait in ``lost`` before reconnecting.
        maintenance_restore_timeout: the same inside a reset window.
        reset_windows: IB's scheduled reset windows.
        same_client_id_retries: how many times a client id rejected with 326
            is retried before moving to the next configured id.
        seed: seed of the jitter's random source.
        restart_after: consecutive wedge signs (an attempt that reached the
            gateway's socket but got no handshake or no startup sync, or a
            heartbeat miss; a refused connect or a session that came up clears
            the count) before a configured controller restarts the gateway.
        restart_wait: seconds a restarted gateway gets to answer the API
            handshake again before reconnecting resumes as usual.
        restart_cooldown: seconds after a restart (sent, refused or failed)
            before the next one may be sent.
        farm_reconnect_after: seconds a data farm may stay broken before a
            configured controller is asked, once per outage, to reconnect the
            farms (IBC's RECONNECTDATA).
    """

    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    restore_timeout: float = 120.0
    maintenance_restore_timeout: float = 900.0
    reset_windows: Sequence[ResetWindow] = (NIGHTLY_RESET_US,)
    same_client_id_retries: int = 1
    seed: int = 0
    restart_after: int = 3
    restart_wait: float = 180.0
    restart_cooldown: float = 600.0
    farm_reconnect_after: float = 300.0

    def __post_init__(self) -> None:
        if self.restart_after < 1:
            raise ConfigError("restart_after", "must be at least 1")
        for name in ("restart_wait", "farm_reconnect_after"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.restart_cooldown < 0:
            raise ConfigError("restart_cooldown", "must not be negative")
        if self.restore_timeout <= 0:
            raise ConfigError("restore_timeout", "must be positive")
        if self.maintenance_restore_timeout <= 0:
            raise ConfigError("maintenance_restore_timeout", "must be positive")
        if self.same_client_id_retries < 0:
            raise ConfigError("same_client_id_retries", "must not be negative")

    def in_reset_window(self, when: datetime) -> bool:
        """Return True if ``when`` is inside one of the reset windows."""
        return any(window.contains(when) for window in self.reset_windows)
