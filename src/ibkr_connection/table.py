"""Every decision the connection makes, as data: the states, the actions, the transition table.

This is the one table a reviewer reads (or its diagrams in ``diagrams/``,
generated from it). :class:`ConnectionState` lists the states, each with what
holds in it and its entry and exit actions. :data:`TABLE` has one
:class:`Row` per (state, input[, guard]): the next state (or a stay), the
guard, the actions the row runs and why. :data:`ACTIONS` says what each action
does and when it runs (:class:`Phase`): facts are noted before the row's guard
is tried, attempts are counted and delays drawn before the move, effects are
asked for after it. :data:`GUARDS` says what each guard asks.

The table is total: every (state, input) pair has a declared outcome, a move,
a stay with actions, or an ignore with a logged reason. IB can send any code at
any time, so no input ever raises. :func:`check_table` holds the table to its
rules when this module is imported.

When is a gateway wedged? Only where this manager has had a session. An
endpoint (host:port) is *proven* once an attempt succeeded on it; a 1300 to
another port, a refused connect (the gateway's process is down: whatever
comes up there next is a new process) and a restart the controller accepted
make it unproven again. Silence (a socket accepted, no handshake or sync) on
a proven endpoint is a wedge sign; on an unproven one it is a wrong port (a
web server, another service) or a gateway still logging in, and the
``silent_unproven`` row warns once per series ("not a TWS API port?") and never
restarts. A gateway that IBC starts, or restarts (its nightly restart, or
ours), with 2FA pending either refuses the API port (ib-gateway-docker #227:
"client connection refused" until the login completes), which is cheap and
never a wedge sign, or, behind a relay such as the docker images' socat,
accepts and closes or stays silent: after the refusal or the restart that
preceded it the endpoint is unproven, so it is never restarted for a login
that takes long; the first session proves it again.

Nothing here runs anything: :class:`~ibkr_connection.machine.ConnectionMachine`
builds a ``transitions`` machine from these tables and performs the actions.
A new IB code is a row of :data:`ibkr_connection.codes.CODES`; a new input, a
new state or a change of decision is a change here, and
``ibkr-connection diagram`` regenerates the docs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from ibkr_connection.inputs import InputKind


class ConnectionState(str, Enum):
    """The states of a connection to TWS / IB Gateway."""

    def __str__(self) -> str:
        return self.value

    #: Nobody wants a connection. No socket, no timers. Entry: cancel every
    #: timer and the running attempt, stop the heartbeat, tear the socket down.
    DISCONNECTED = "disconnected"
    #: An attempt is running: TCP connect, API handshake, startup sync; its
    #: success reports the managed accounts, which the rows check against the
    #: configured account. Entry: forget the last session's farm and link
    #: status, start the attempt with the current client id and port.
    CONNECTING = "connecting"
    #: Ready: the API is up, TWS is linked to IB, every data farm is OK.
    #: The rows from ``connecting`` reset the backoff, select the account,
    #: (re)issue every registered subscription and start the heartbeat.
    CONNECTED = "connected"
    #: The API is up but a data farm (or TWS's link to its server, 2110) is
    #: broken. Orders may still be placed; market data may be stale. Returns to
    #: ``connected`` only once every broken farm has reported OK.
    DEGRADED = "degraded"
    #: The API socket is up but TWS lost IB (1100). No order may be sent. Entry:
    #: start the restore timer (longer inside IB's reset windows); exit: cancel it.
    LOST = "lost"
    #: The socket is down and the next attempt is scheduled. Entry: stop the
    #: heartbeat, tear the socket down, schedule the retry with the delay the
    #: row drew; exit: cancel the retry.
    BACKOFF = "backoff"
    #: The gateway is wedged and reconnecting cannot help: the controller
    #: (IBC) was asked to restart it. No attempt runs. Entry: stop the
    #: heartbeat, tear the socket down, start the ``restart_wait`` timer, send
    #: the restart command once; once it is accepted the gateway is probed at
    #: the backoff's cheap cadence. Exit: cancel the timer and the probe.
    RESTARTING = "restarting"
    #: Gave up: attempts exhausted or a fatal error (e.g. unknown account).
    #: Entry: as for ``disconnected``. Only a connect request (to ``connecting``)
    #: or a disconnect (to ``disconnected``) leaves it.
    FAILED = "failed"
    #: The manager was stopped (``stop()``: a disconnect, then ``stop``):
    #: terminal. Nothing is left to tear down; every input is ignored, with
    #: its reason logged. Nothing leaves it.
    STOPPED = "stopped"


_S = ConnectionState
_I = InputKind

#: States in which the API socket is up and a session exists.
SESSION_STATES = (_S.CONNECTED, _S.DEGRADED, _S.LOST)
#: States in which requests and orders can be sent.
USABLE_STATES = (_S.CONNECTED, _S.DEGRADED)

#: The states a manager in use can be in: every state but the terminal ``stopped``
#: (its rows are the last of the table: it ignores everything).
_ALL_STATES = tuple(s for s in ConnectionState if s is not ConnectionState.STOPPED)
_NO_SESSION = (_S.DISCONNECTED, _S.BACKOFF, _S.RESTARTING, _S.FAILED)


class Phase(str, Enum):
    """When an action of a row runs."""

    def __str__(self) -> str:
        return self.value

    #: Before the row's guard is tried (a fact the guard may read). The same
    #: on every row of a (state, input): it is noted once, whichever row is taken.
    NOTE = "note"
    #: Once the guard held, before the move (exit and entry actions) and
    #: before the transition is recorded: counters and the retry delay.
    BEFORE = "before"
    #: After the move and its entry actions: effects of the new session.
    AFTER = "after"
    #: An entry or exit action of a state (:data:`ENTRY`, :data:`EXIT`): run
    #: on every move into (out of) the state, never by a row.
    STATE = "state"


@dataclass(frozen=True)
class Action:
    """One action a row may name.

    Attributes:
        name: the name used in :data:`TABLE` (or :data:`ENTRY`, :data:`EXIT`);
            ``machine.ACTION_FUNCTIONS[name]`` performs it.
        phase: when it runs.
        doc: what it does, for ``diagrams/transitions.md``.
    """

    name: str
    phase: Phase
    doc: str


_N, _B, _A, _E = Phase.NOTE, Phase.BEFORE, Phase.AFTER, Phase.STATE

#: Every action a row may name, in the order the docs list them.
ACTIONS: dict[str, Action] = {action.name: action for action in (
    Action("note_farm_broken", _N, "remember the data farm the input names as broken"),
    Action("note_farm_ok", _N, "forget the data farm the input names as broken"),
    Action("note_server_link_broken", _N, "remember that TWS's link to its server is broken "
                                          "(2110) until a 1101/1102"),
    Action("note_link_lost", _N, "remember that TWS lost IB (1100)"),
    Action("note_link_restored", _N, "TWS's links are back (1101/1102): forget a 1100 and a "
                                     "2110"),
    Action("note_port", _N, "the next attempt uses the port the input names (1300); a new "
                            "port is a new endpoint, unproven until a session comes up on it"),
    Action("first_attempt", _B, "a user's connect starts a fresh series: attempt 1, no "
                                "failure counted, the client id's 326 retries forgotten, the "
                                "series' attempt budget the connect gave (`attempts`: the "
                                "sync wrapper's connect())"),
    Action("count_attempt", _B, "count the attempt about to start"),
    Action("warn_not_an_api_port", _B, "log one WARNING per series: host:port accepts sockets "
                                       "but answers no API handshake, \"not a TWS API port?\"; "
                                       "the gateway is not restarted, no session was had there"),
    Action("draw_delay", _B, "count a failure and draw the delay before the next attempt "
                             "from the cheap schedule (a refused connect, a closed socket: "
                             "they cost the gateway next to nothing); jittered"),
    Action("draw_costly_delay", _B, "count a failure and draw the delay from the costly "
                                    "schedule (the failure cost the gateway a handshake, or "
                                    "it hangs); jittered"),
    Action("retry_at_once", _B, "the next attempt starts without delay; no failure counted"),
    Action("note_wedge_sign", _B, "count a sign of a wedged gateway: a heartbeat miss, or "
                                  "an attempt that reached the socket and got no handshake "
                                  "(within handshake_timeout) or no startup sync (the rows "
                                  "guarded by costly)"),
    Action("note_gateway_down", _B, "a refused (cheap) connect: the gateway is down, not "
                                    "wedged: the count of wedge signs back to zero, and the "
                                    "endpoint unproven again (the gateway that comes up there "
                                    "must give a session before it can be restarted)"),
    Action("refuse_unmanaged_account", _B, "effect: refuse_account: the configured account is "
                                           "not managed by this login (the message names it "
                                           "and the managed ones, masked unless "
                                           "`mask_accounts` is off); the transition's cause"),
    Action("refuse_no_account", _B, "effect: refuse_account: the gateway reported no managed "
                                    "accounts; the transition's cause"),
    Action("refuse_ambiguous_accounts", _B, "effect: refuse_account: several managed accounts "
                                            "and none configured (set the account, or "
                                            "account_fallback='first'); the transition's "
                                            "cause"),
    Action("reset_backoff", _A, "a session is up: attempts, failures and the client id's "
                                "326 retries back to zero; a connect's attempt budget is "
                                "spent (recovery follows the policy)"),
    Action("select_account", _A, "effect: select_account(account): the configured account "
                                 "if one is set (the rows before refused it unless the login "
                                 "manages it), else the first managed one (the only one, or "
                                 "the first with account_fallback='first': the rows before "
                                 "refused several without it)"),
    Action("issue_subscriptions", _A, "effect: issue every registered subscription on the "
                                      "new session"),
    Action("restore_subscriptions", _A, "effect: issue every registered subscription again: "
                                        "the gateway dropped them (1101)"),
    Action("issue_new_subscriptions", _A, "effect: issue the subscriptions added since the "
                                          "session came up (the others are already out)"),
    Action("start_heartbeat", _A, "effect: start probing the gateway when it is quiet"),
    Action("forget_wedge_signs", _A, "a session is up (handshake and startup sync done): "
                                     "the count of wedge signs back to zero"),
    Action("note_endpoint_proven", _A, "a session is up on host:port: the endpoint is proven "
                                       "a TWS API port, so silence there later is a wedge sign"),
    Action("forget_endpoint", _A, "the controller restarts the gateway: the one that comes "
                                  "back must give a session before it can be restarted again "
                                  "(it may wait for a login, 2FA)"),
    Action("begin_session", _A, "effect: a session is up, its startup sync done: the order "
                                "tracker settles the orders a dropped session left "
                                "uncertain (orderResolvedEvent, after the stateChangeEvent)"),
    Action("end_session", _A, "effect: the session ended: the order tracker names the orders "
                              "whose last request got no answer (ordersUncertainEvent, before "
                              "the stateChangeEvent)"),
    Action("probe_gateway", _A, "effect: the restart was accepted; probe the gateway "
                                "(TCP connect and API handshake) at the backoff's cheap "
                                "cadence until it answers"),
    Action("reconnect_data", _A, "effect: ask the controller to reconnect the data farms "
                                 "(IBC's RECONNECTDATA), once per outage"),
    Action("retry_same_client_id", _A, "326: count a retry of the same client id; log it"),
    Action("next_client_id", _A, "326: the next configured client id; its retries start "
                                 "from zero; log it"),
    Action("keep_client_id", _A, "326: no fallback id is configured: the same id again, its "
                                 "retries start from zero; log it"),
    # -- entry and exit actions of the states (ENTRY, EXIT) ---------------------------
    Action("forget_session", _E, "forget the last session's farm and link status"),
    Action("start_attempt", _E, "effect: start an attempt with the attempt number, the "
                                "current client id and port"),
    Action("schedule_retry", _E, "effect: feed retry_due after the delay the row drew"),
    Action("cancel_retry", _E, "effect: cancel the scheduled retry"),
    Action("start_restore_timer", _E, "effect: feed restore_timeout after `restore_timeout`; "
                                      "log the wait"),
    Action("start_maintenance_restore_timer", _E, "effect: feed restore_timeout after "
                                                  "`maintenance_restore_timeout` (IB's reset "
                                                  "window); log the expected maintenance"),
    Action("cancel_restore_timer", _E, "effect: cancel the restore timer"),
    Action("stop_heartbeat", _E, "effect: stop probing the gateway"),
    Action("tear_down", _E, "effect: cancel the running attempt and close the socket"),
    Action("count_restart", _E, "count the restart and stamp its time (for "
                                "`restart_cooldown`), log it with its cause; the wedge signs "
                                "back to zero"),
    Action("start_restart_timer", _E, "effect: feed restart_timeout after `restart_wait`"),
    Action("send_restart", _E, "effect: ask the controller to restart the gateway, once"),
    Action("cancel_restart_timer", _E, "effect: cancel the restart timer (and a restart "
                                       "command still waiting for its answer)"),
    Action("cancel_probe", _E, "effect: stop probing the gateway"),
    Action("start_farm_timer", _E, "effect: feed farm_reconnect_due after "
                                   "`farm_reconnect_after`"),
    Action("cancel_farm_timer", _E, "effect: cancel the farm timer"),
)}


@dataclass(frozen=True)
class StateAction:
    """An entry or exit action of a state, with the guard that must hold for it to run.

    Attributes:
        action: a name of :data:`ACTIONS` whose phase is ``state``.
        guard: a name of :data:`GUARDS` (``"!name"`` for its negation), or None.
    """

    action: str
    guard: str | None = None

    def __str__(self) -> str:
        return self.action if self.guard is None else f"{self.action} [{self.guard}]"


_STOP_EVERYTHING = (StateAction("cancel_retry"), StateAction("cancel_restore_timer"),
                    StateAction("stop_heartbeat"), StateAction("tear_down"))

#: What each state does when it is entered, in order (a stay enters nothing).
ENTRY: dict[ConnectionState, tuple[StateAction, ...]] = {
    ConnectionState.DISCONNECTED: _STOP_EVERYTHING,
    ConnectionState.CONNECTING: (StateAction("forget_session"), StateAction("start_attempt")),
    ConnectionState.CONNECTED: (),
    ConnectionState.DEGRADED: (StateAction("start_farm_timer", "controller_configured"),),
    ConnectionState.LOST: (StateAction("start_maintenance_restore_timer", "in_reset_window"),
                           StateAction("start_restore_timer", "!in_reset_window")),
    ConnectionState.BACKOFF: (StateAction("stop_heartbeat"), StateAction("tear_down"),
                              StateAction("schedule_retry")),
    ConnectionState.RESTARTING: (StateAction("count_restart"), StateAction("stop_heartbeat"),
                                 StateAction("tear_down"), StateAction("start_restart_timer"),
                                 StateAction("send_restart")),
    ConnectionState.FAILED: _STOP_EVERYTHING,
    # Reached from disconnected only: everything is down already.
    ConnectionState.STOPPED: (),
}

#: What each state does when it is left, in order, before the next state's entry.
EXIT: dict[ConnectionState, tuple[StateAction, ...]] = {
    ConnectionState.DISCONNECTED: (),
    ConnectionState.CONNECTING: (),
    ConnectionState.CONNECTED: (),
    ConnectionState.DEGRADED: (StateAction("cancel_farm_timer", "controller_configured"),),
    ConnectionState.LOST: (StateAction("cancel_restore_timer"),),
    ConnectionState.BACKOFF: (StateAction("cancel_retry"),),
    ConnectionState.RESTARTING: (StateAction("cancel_restart_timer"),
                                 StateAction("cancel_probe")),
    ConnectionState.FAILED: (),
    ConnectionState.STOPPED: (),
}

#: The actions that set the delay of a move into ``backoff``; every such row names one.
DELAY_ACTIONS = ("draw_delay", "draw_costly_delay", "retry_at_once")


@dataclass(frozen=True)
class Row:
    """One row of the transition table.

    Attributes:
        source: the state the row applies to.
        input: the input it reacts to.
        dest: the next state, or None to stay (no exit or entry actions run).
        guard: name of a guard that must hold, ``"!name"`` for its negation,
            several joined by ``" & "`` (all must hold), or None. Rows of the
            same (source, input) are tried in order.
        actions: names of :data:`ACTIONS`, in the order they run.
        note: why; for a row that ignores its input, the reason that is logged.
    """

    source: ConnectionState
    input: InputKind
    dest: ConnectionState | None
    guard: str | None = None
    actions: tuple[str, ...] = ()
    note: str = ""

    @property
    def ignored(self) -> bool:
        """True when the row neither moves nor acts: the input is dropped."""
        return self.dest is None and not self.actions

    def actions_in(self, phase: Phase) -> tuple[str, ...]:
        """Return the row's actions that run in ``phase``, in order."""
        return tuple(name for name in self.actions if ACTIONS[name].phase is phase)


def _rows(
    sources: Iterable[ConnectionState],
    inp: InputKind,
    dest: ConnectionState | None,
    note: str,
    guard: str | None = None,
    actions: tuple[str, ...] = (),
) -> list[Row]:
    """Expand one rule over several source states."""
    return [Row(s, inp, dest, guard, actions, note) for s in sources]


#: Actions of a row whose attempt produced a session.
_ON_SESSION_UP = ("reset_backoff", "forget_wedge_signs", "note_endpoint_proven",
                  "select_account", "issue_subscriptions", "start_heartbeat", "begin_session")
_ATTEMPT_STATES = (_S.CONNECTING, *SESSION_STATES)

#: The transition table. Order matters only among rows of the same
#: (source, input): the first whose guard holds is taken.
TABLE: tuple[Row, ...] = tuple(
    # -- user requests ---------------------------------------------------------
    _rows([_S.DISCONNECTED, _S.FAILED], _I.CONNECT, _S.CONNECTING,
          "the user asked for a connection", actions=("first_attempt",))
    + _rows([_S.CONNECTING, *SESSION_STATES, _S.BACKOFF, _S.RESTARTING], _I.CONNECT, None,
            "a connection is already wanted")
    + _rows([s for s in _ALL_STATES if s is not _S.DISCONNECTED], _I.DISCONNECT,
            _S.DISCONNECTED, "the user asked to disconnect")
    + [Row(_S.DISCONNECTED, _I.DISCONNECT, None, note="already disconnected")]
    # -- attempt results -------------------------------------------------------
    + [
        # The usual case first, two guards per connect: an account to use and
        # nothing broken.
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.CONNECTED, "account_usable & all_clear",
            _ON_SESSION_UP, "session up: handshake, startup sync and account check done"),
        # The account check: the attempt reported the managed accounts; these
        # rows refuse what no retry can fix.
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.FAILED, "account_not_managed",
            ("refuse_unmanaged_account",),
            "the configured account is not managed by this login: retrying cannot fix it"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.FAILED, "no_managed_accounts",
            ("refuse_no_account",), "the gateway reported no managed accounts"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.FAILED, "accounts_ambiguous",
            ("refuse_ambiguous_accounts",),
            "several managed accounts, none configured, and no fallback: which one is "
            "the bot's is not ours to guess"),
        # The account is usable (the rows above refused every other case).
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.LOST, "link_lost", _ON_SESSION_UP,
            "session up, but TWS reported 1100 during the attempt"),
        Row(_S.CONNECTING, _I.ATTEMPT_SUCCEEDED, _S.DEGRADED, None, _ON_SESSION_UP,
            "session up with a broken data farm (or TWS's server link, 2110)"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.CONNECTING], _I.ATTEMPT_SUCCEEDED, None,
            "stale result of an attempt that was cancelled")
    + [
        # A failed attempt that cost the gateway a handshake (costly) is a wedge
        # sign; a refused one (cheap) says the gateway is down, not wedged.
        # The usual case first: a gateway down for hours (the weekly login) is
        # refused every ~2 s, and each row tried before the one taken is a
        # guard asked for nothing (the rows below never take a cheap failure
        # with attempts left: each wants costly, silent_unproven included, or
        # no attempts left).
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.BACKOFF, "retries_left & !costly",
            ("note_gateway_down", "draw_delay"), "refused or cheap: retry after the delay"),
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.FAILED, "!retries_left & costly",
            ("note_wedge_sign",), "no attempts left"),
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.FAILED, "!retries_left",
            ("note_gateway_down",), "no attempts left"),
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.RESTARTING, "costly & wedged",
            ("note_wedge_sign",),
            "the gateway takes sockets but answers no handshake or sync: restart it"),
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.BACKOFF, "silent_unproven",
            ("note_wedge_sign", "warn_not_an_api_port", "draw_costly_delay"),
            "something accepts sockets on an endpoint where no session was ever had and "
            "answers no API handshake: a wrong port, or a gateway still logging in; never "
            "restart it, warn once"),
        # Costly, attempts left (the rows above took every other case).
        Row(_S.CONNECTING, _I.ATTEMPT_FAILED, _S.BACKOFF, None,
            ("note_wedge_sign", "draw_costly_delay"),
            "the attempt cost the gateway a handshake: retry after the costly delay"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.CONNECTING], _I.ATTEMPT_FAILED, None,
            "stale result of an attempt that was cancelled")
    + _rows([*_ATTEMPT_STATES, _S.BACKOFF], _I.FATAL_ERROR, _S.FAILED,
            "retrying cannot fix this")
    + _rows([_S.DISCONNECTED, _S.FAILED], _I.FATAL_ERROR, None,
            "no connection is wanted; nothing to give up")
    + [Row(_S.RESTARTING, _I.FATAL_ERROR, None,
           note="no attempt runs while the gateway restarts: stale")]
    # -- socket and timers -----------------------------------------------------
    + [Row(_S.CONNECTING, _I.SOCKET_CLOSED, None,
           note="the attempt reports the close itself, classified (attempt_failed or "
                "fatal_error)")]
    + _rows(SESSION_STATES, _I.SOCKET_CLOSED, _S.BACKOFF, "the API socket closed: reconnect",
            actions=("draw_delay",))
    + _rows(_NO_SESSION, _I.SOCKET_CLOSED, None, "the socket is already down")
    + [Row(_S.BACKOFF, _I.RETRY_DUE, _S.CONNECTING, actions=("count_attempt",),
           note="the backoff delay is over")]
    + _rows([s for s in _ALL_STATES if s is not _S.BACKOFF], _I.RETRY_DUE, None,
            "stale retry timer")
    + _rows(SESSION_STATES, _I.HEARTBEAT_MISSED, _S.RESTARTING,
            "the gateway keeps hanging and reconnecting did not help: restart it",
            "wedged", ("note_wedge_sign",))
    + _rows(SESSION_STATES, _I.HEARTBEAT_MISSED, _S.BACKOFF,
            "the gateway did not answer the heartbeat: it is hung",
            actions=("note_wedge_sign", "draw_costly_delay"))
    + _rows([_S.CONNECTING, *_NO_SESSION], _I.HEARTBEAT_MISSED, None, "stale heartbeat")
    + [
        Row(_S.LOST, _I.RESTORE_TIMEOUT, _S.RESTARTING, "link_stuck",
            note="TWS did not restore its link to IB in time, outside IB's reset windows: "
                 "reconnecting does not relink TWS to IB; a restart may"),
        Row(_S.LOST, _I.RESTORE_TIMEOUT, _S.BACKOFF, actions=("draw_costly_delay",),
            note="TWS did not restore its link to IB in time: reconnect from scratch"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.LOST], _I.RESTORE_TIMEOUT, None,
            "stale restore timer")
    # -- the bot's subscriptions -------------------------------------------------
    + _rows(SESSION_STATES, _I.SUBSCRIBED, None,
            "a subscription was added: issue it on this session (also while lost: IB "
            "queues it, and a 1101 re-issues it)", actions=("issue_new_subscriptions",))
    + _rows([_S.CONNECTING, *_NO_SESSION], _I.SUBSCRIBED, None,
            "no session: the subscription is issued when the next one comes up")
    # -- IB codes: TWS's link to IB ------------------------------------------------
    # No note_link_lost here: being in lost says it, and the fact is read in connecting
    # only (link_lost, all_clear), whose entry forgets the session's facts first.
    + _rows(USABLE_STATES, _I.CONNECTIVITY_LOST, _S.LOST,
            "1100: TWS lost IB; wait for it to restore")
    + [
        Row(_S.CONNECTING, _I.CONNECTIVITY_LOST, None, actions=("note_link_lost",),
            note="remembered: the attempt will end in lost"),
        Row(_S.LOST, _I.CONNECTIVITY_LOST, None, note="already lost"),
    ]
    + _rows(_NO_SESSION, _I.CONNECTIVITY_LOST, None, "no session")
    + [
        Row(_S.LOST, _I.RESTORED_DATA_LOST, _S.DEGRADED, "farms_broken",
            ("note_link_restored", "restore_subscriptions"),
            "1101: restored, data lost; a farm is still broken"),
        Row(_S.LOST, _I.RESTORED_DATA_LOST, _S.CONNECTED, None,
            ("note_link_restored", "restore_subscriptions"),
            "1101: restored, data lost: re-subscribe"),
        Row(_S.CONNECTED, _I.RESTORED_DATA_LOST, None, None, ("restore_subscriptions",),
            "1101: data lost: re-subscribe"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_LOST, None, "farms_broken",
            ("note_link_restored", "restore_subscriptions"),
            "1101: data lost: re-subscribe; a farm is still broken"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_LOST, _S.CONNECTED, None,
            ("note_link_restored", "restore_subscriptions"),
            "1101: TWS's server link is back; data lost: re-subscribe"),
        Row(_S.CONNECTING, _I.RESTORED_DATA_LOST, None, actions=("note_link_restored",),
            note="remembered; the attempt subscribes everything anyway"),
    ]
    + _rows(_NO_SESSION, _I.RESTORED_DATA_LOST, None, "no session")
    + [
        Row(_S.LOST, _I.RESTORED_DATA_KEPT, _S.DEGRADED, "farms_broken",
            ("note_link_restored",), "1102: restored, data kept; a farm is still broken"),
        Row(_S.LOST, _I.RESTORED_DATA_KEPT, _S.CONNECTED, None, ("note_link_restored",),
            "1102: restored, data kept: nothing to re-subscribe"),
        Row(_S.CONNECTED, _I.RESTORED_DATA_KEPT, None, note="1102: nothing was lost"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_KEPT, None, "farms_broken", ("note_link_restored",),
            "1102: a farm is still broken"),
        Row(_S.DEGRADED, _I.RESTORED_DATA_KEPT, _S.CONNECTED, None, ("note_link_restored",),
            "1102: TWS's server link is back"),
        Row(_S.CONNECTING, _I.RESTORED_DATA_KEPT, None, actions=("note_link_restored",),
            note="remembered: TWS's link to IB is up"),
    ]
    + _rows(_NO_SESSION, _I.RESTORED_DATA_KEPT, None, "no session")
    + [Row(_S.CONNECTED, _I.SERVER_LINK_BROKEN, _S.DEGRADED, actions=("note_server_link_broken",),
           note="2110: TWS's link to its server is broken")]
    + _rows([_S.CONNECTING, _S.DEGRADED, _S.LOST], _I.SERVER_LINK_BROKEN, None,
            "remembered until 1101/1102", actions=("note_server_link_broken",))
    + _rows(_NO_SESSION, _I.SERVER_LINK_BROKEN, None, "no session")
    # -- IB codes: data farms ----------------------------------------------------
    + [Row(_S.CONNECTED, _I.FARM_BROKEN, _S.DEGRADED, actions=("note_farm_broken",),
           note="a data farm is broken")]
    + _rows([_S.CONNECTING, _S.DEGRADED, _S.LOST], _I.FARM_BROKEN, None,
            "farm remembered as broken", actions=("note_farm_broken",))
    + _rows(_NO_SESSION, _I.FARM_BROKEN, None, "no session")
    + [
        Row(_S.DEGRADED, _I.FARM_OK, None, "farms_broken", ("note_farm_ok",),
            "farm OK; another is still broken"),
        Row(_S.DEGRADED, _I.FARM_OK, _S.CONNECTED, None, ("note_farm_ok",),
            "every broken farm is OK again"),
        Row(_S.CONNECTED, _I.FARM_OK, None, note="farm OK notices are routine at connect"),
    ]
    + _rows([_S.CONNECTING, _S.LOST], _I.FARM_OK, None, "farm remembered as OK",
            actions=("note_farm_ok",))
    + _rows(_NO_SESSION, _I.FARM_OK, None, "no session")
    # -- IB codes: the API itself --------------------------------------------------
    + _rows(_ATTEMPT_STATES, _I.PORT_RESET, _S.BACKOFF,
            "1300: the API port was reset; reconnect at once on the new port",
            actions=("note_port", "retry_at_once"))
    + _rows(_NO_SESSION, _I.PORT_RESET, None, "the next attempt uses the new port",
            actions=("note_port",))
    + [
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.BACKOFF, "same_client_id_again",
            ("draw_costly_delay", "retry_same_client_id"),
            "326: client id in use; retry the same id after a delay (the other session "
            "may be on its way out)"),
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.BACKOFF, "fallback_client_id",
            ("draw_costly_delay", "next_client_id"),
            "326: client id in use; retry with the next configured id after a delay"),
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.BACKOFF, "retries_left",
            ("draw_costly_delay", "keep_client_id"),
            "326: client id in use and no fallback id configured; retry after a delay"),
        Row(_S.CONNECTING, _I.CLIENT_ID_IN_USE, _S.FAILED, note="326 and no attempts left"),
    ]
    + _rows(SESSION_STATES, _I.CLIENT_ID_IN_USE, None,
            "326 refers to a connect attempt; this session is up")
    + _rows(_NO_SESSION, _I.CLIENT_ID_IN_USE, None, "no attempt is running")
    + [
        Row(_S.CONNECTING, _I.NOT_CONNECTED, _S.BACKOFF, "retries_left", ("draw_delay",),
            "502/504 during the attempt"),
        Row(_S.CONNECTING, _I.NOT_CONNECTED, _S.FAILED, note="502/504 and no attempts left"),
    ]
    + _rows(SESSION_STATES, _I.NOT_CONNECTED, _S.BACKOFF,
            "502/504: the API says it is not connected; reconnect", actions=("draw_delay",))
    + _rows(_NO_SESSION, _I.NOT_CONNECTED, None, "the socket is already down")
    # -- restarting the gateway through its controller ------------------------------
    + [Row(_S.RESTARTING, _I.RESTART_SENT, None, actions=("forget_endpoint", "probe_gateway"),
           note="the controller accepted the restart: wait for the gateway to come back")]
    + _rows([s for s in _ALL_STATES if s is not _S.RESTARTING], _I.RESTART_SENT, None,
            "stale answer to a restart this state no longer waits for")
    + [Row(_S.RESTARTING, _I.RESTART_FAILED, _S.BACKOFF, actions=("draw_costly_delay",),
           note="the controller did not restart the gateway: reconnect as usual; the next "
                "restart only after `restart_cooldown`")]
    + _rows([s for s in _ALL_STATES if s is not _S.RESTARTING], _I.RESTART_FAILED, None,
            "stale answer to a restart this state no longer waits for")
    + [Row(_S.RESTARTING, _I.GATEWAY_BACK, _S.CONNECTING, actions=("count_attempt",),
           note="the restarted gateway answers the API handshake: connect")]
    + _rows([s for s in _ALL_STATES if s is not _S.RESTARTING], _I.GATEWAY_BACK, None,
            "stale probe")
    + [Row(_S.RESTARTING, _I.RESTART_TIMEOUT, _S.BACKOFF, actions=("draw_costly_delay",),
           note="the gateway did not come back within `restart_wait`: reconnect as usual; "
                "the next restart only after `restart_cooldown`")]
    + _rows([s for s in _ALL_STATES if s is not _S.RESTARTING], _I.RESTART_TIMEOUT, None,
            "stale restart timer")
    + [
        Row(_S.DEGRADED, _I.FARM_RECONNECT_DUE, None, "controller_configured",
            ("reconnect_data",), "a data farm stayed broken for `farm_reconnect_after`: "
                                 "ask the gateway to reconnect its farms, once"),
        Row(_S.DEGRADED, _I.FARM_RECONNECT_DUE, None,
            note="no controller to ask; wait for the farm"),
    ]
    + _rows([s for s in _ALL_STATES if s is not _S.DEGRADED], _I.FARM_RECONNECT_DUE, None,
            "stale farm timer")
    # -- the manager stopped ---------------------------------------------------------
    + [Row(_S.DISCONNECTED, _I.STOP, _S.STOPPED,
           note="the manager was stopped (stop(), after its disconnect): nothing connects "
                "again")]
    + _rows([s for s in _ALL_STATES if s is not _S.DISCONNECTED], _I.STOP, None,
            "stop() disconnects first: a stop anywhere else is ignored")
    + [Row(_S.STOPPED, kind, None, note="the manager was stopped") for kind in InputKind]
)



def _ending_sessions(rows: tuple[Row, ...]) -> tuple[Row, ...]:
    """Give every row that leaves a session (for a state without one) the action end_session.

    Written once here rather than on each of those rows: a row out of
    ``connected``, ``degraded`` or ``lost`` into any other state ends the
    session, whatever its input. :func:`check_table` holds every row to it.
    """
    return tuple(
        Row(row.source, row.input, row.dest, row.guard, (*row.actions, "end_session"), row.note)
        if row.source in SESSION_STATES and row.dest is not None
        and row.dest not in SESSION_STATES else row
        for row in rows)


TABLE = _ending_sessions(TABLE)

#: The guards a row may name, and what each asks.
GUARDS = {
    "retries_left": "the policy allows another attempt (`max_attempts`), and so does the "
                    "attempt budget of the connect that started the series, if it gave one",
    "farms_broken": "a data farm, or TWS's link to its server, is noted as broken",
    "link_lost": "a 1100 was noted and no 1101/1102 since",
    "all_clear": "neither link_lost nor farms_broken holds",
    "wedged": "a controller is configured, the endpoint is proven (this manager had a "
              "session on host:port and has seen it neither refuse a connect nor restart "
              "since), `restart_cooldown` has passed since the last restart, and this "
              "input is the `restart_after`-th consecutive wedge sign (only rows of a wedge "
              "sign ask: a heartbeat miss, a costly failed attempt)",
    "silent_unproven": "the failed attempt reached a socket and got no handshake or sync "
                       "(classified costly) on an endpoint that is not proven, and no "
                       "warning was logged in this series yet",
    "link_stuck": "a controller is configured, `restart_cooldown` has passed since the last "
                  "restart, and the clock is outside IB's reset windows",
    "controller_configured": "a controller (IBC, or a command) can act on the gateway",
    "costly": "the failed attempt is classified costly (codes.FAILURES): it reached the "
              "gateway's socket and cost it a handshake",
    "same_client_id_again": "the policy allows another attempt, and the client id was "
                            "retried fewer than `same_client_id_retries` times after a 326",
    "fallback_client_id": "the policy allows another attempt, and more than one client id "
                          "is configured",
    "in_reset_window": "the injected clock's time of day is inside one of IB's reset "
                       "windows (the policy's `reset_windows`)",
    "account_usable": "none of account_not_managed, no_managed_accounts, "
                      "accounts_ambiguous holds: the configured account is managed, or none "
                      "is configured and the login manages one, or several with "
                      "`account_fallback` 'first'",
    "account_not_managed": "an account is configured and the accounts the attempt reported "
                           "(the login's managed accounts) do not include it",
    "no_managed_accounts": "no account is configured and the attempt reported no managed "
                           "account",
    "accounts_ambiguous": "no account is configured, the attempt reported several managed "
                          "accounts, and `account_fallback` is not 'first'",
}


def guard_terms(guard: str | None) -> tuple[tuple[str, bool], ...]:
    """Split a row's guard into (name of :data:`GUARDS`, the value it must have) terms.

    ``"!retries_left & costly"`` is ``(("retries_left", False), ("costly", True))``;
    None is no term (the row always holds).
    """
    if guard is None:
        return ()
    return tuple((term.lstrip("!"), not term.startswith("!"))
                 for term in (part.strip() for part in guard.split("&")))


def outcome(state: ConnectionState, kind: InputKind) -> list[Row]:
    """Return the rows declared for (state, input), in the order they are tried."""
    return [row for row in TABLE if row.source is state and row.input is kind]


def check_table(table: Sequence[Row] = TABLE) -> list[str]:
    """Return every way ``table`` breaks the rules the machine relies on (none: ``[]``).

    Every (state, input) has rows, and its last row has no guard (the table is
    total); guards and actions are declared; a row lists its actions phase by
    phase; the rows of one (state, input) note the same facts; a row into
    ``backoff`` sets the delay with exactly one of :data:`DELAY_ACTIONS` and no
    other row does; a row into ``connecting`` counts its attempt.
    """
    problems = []
    order = list(Phase)
    # Each (state, input)'s rows in one pass, in order (not one pass per pair).
    groups: dict[tuple[ConnectionState, InputKind], list[Row]] = {}
    for row in table:
        groups.setdefault((row.source, row.input), []).append(row)
    for state in ConnectionState:
        for kind in InputKind:
            rows = groups.get((state, kind), [])
            where = f"{state.value} + {kind.value}"
            if not rows:
                problems.append(f"{where}: no row")
                continue
            if rows[-1].guard is not None:
                problems.append(f"{where}: the last row has a guard")
            if len({row.actions_in(Phase.NOTE) for row in rows if
                    all(a in ACTIONS for a in row.actions)}) > 1:
                problems.append(f"{where}: rows note different facts")
    for state in ConnectionState:
        for which, actions in (("entry", ENTRY), ("exit", EXIT)):
            for step in actions.get(state, ()):
                where = f"{state.value} {which}"
                if step.action not in ACTIONS or ACTIONS[step.action].phase is not Phase.STATE:
                    problems.append(f"{where}: {step.action} is not a state action")
                if step.guard is not None and step.guard.lstrip("!") not in GUARDS:
                    problems.append(f"{where}: unknown guard {step.guard}")
    for row in table:
        where = f"{row.source.value} + {row.input.value}"
        if any(name not in GUARDS for name, _ in guard_terms(row.guard)):
            problems.append(f"{where}: unknown guard {row.guard}")
        unknown = [a for a in row.actions if a not in ACTIONS]
        if unknown:
            problems.append(f"{where}: unknown action(s) {', '.join(unknown)}")
            continue
        if any(ACTIONS[a].phase is Phase.STATE for a in row.actions):
            problems.append(f"{where}: a state's entry or exit action named by a row")
        phases = [order.index(ACTIONS[a].phase) for a in row.actions]
        if phases != sorted(phases):
            problems.append(f"{where}: actions not listed phase by phase")
        delays = [a for a in row.actions if a in DELAY_ACTIONS]
        if row.dest is _S.BACKOFF and len(delays) != 1:
            problems.append(f"{where}: a move into backoff needs one of {DELAY_ACTIONS}")
        if row.dest is not _S.BACKOFF and delays:
            problems.append(f"{where}: {delays[0]} outside a move into backoff")
        leaves = (row.source in SESSION_STATES and row.dest is not None
                  and row.dest not in SESSION_STATES)
        if leaves != ("end_session" in row.actions):
            problems.append(f"{where}: end_session names exactly the rows that end a session")
        counts = {"first_attempt", "count_attempt"} & set(row.actions)
        if (row.dest is _S.CONNECTING) != bool(counts):
            problems.append(f"{where}: only a move into connecting counts an attempt")
    return problems


_PROBLEMS = check_table()
if _PROBLEMS:  # pragma: no cover - guards the table itself
    raise RuntimeError("ibkr_connection.table.TABLE: " + "; ".join(_PROBLEMS))


__all__ = [
    "ACTIONS",
    "DELAY_ACTIONS",
    "ENTRY",
    "EXIT",
    "GUARDS",
    "SESSION_STATES",
    "TABLE",
    "USABLE_STATES",
    "Action",
    "ConnectionState",
    "Phase",
    "Row",
    "StateAction",
    "check_table",
    "guard_terms",
    "outcome",
]
