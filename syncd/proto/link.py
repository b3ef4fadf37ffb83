"""The link state machine, as a table (SPEC §2; h11 ``_state.py`` style).

Theory of operation
-------------------
A :class:`Link` tracks one *channel* of one link: a sequence of request/response
exchanges, one at a time.  A child runs two channels to its parent (the push loop
and the pull loop), each with its own ``Link`` and its own hello; the parent keeps
the matching parent-role ``Link`` per child session.  Nothing here does I/O: the
peer loop calls :meth:`Link.handle` with an :class:`Event` *before* it sends
(``SEND_*``) and *after* it receives (``RECV_*``), and acts on the new state.

* The child starts in ``IDLE`` and must say hello before anything else; the parent
  starts in ``IDLE`` and accepts only a hello.
* ``READY`` is the only state from which a new exchange starts.  A reply returns
  the channel to ``READY``; a retryable error or a timeout returns it to ``IDLE``
  (say hello again); ``MUST_RESYNC`` leads to a new hello (adopting the epoch) or
  straight to a snapshot.
* A non-retryable error, or a peer breaking the table, puts the link in ``ERROR``.
  ``ERROR`` is sticky: every later event raises.  The owner discards the object and,
  after its back-off, makes a new one (a link loop never dies — DESIGN §9).
* Misuse by our own code raises :class:`LocalProtocolError` (a bug here); an event
  caused by the peer that the table does not allow raises
  :class:`RemoteProtocolError` and moves the link to ``ERROR``.

The table is rendered to ``protocol/states.md`` by ``protocol/draw_states.py``; a
test fails when the committed drawing is stale.
"""
from __future__ import annotations

from enum import Enum
from typing import Mapping


class Role(str, Enum):
    CHILD = "child"
    PARENT = "parent"


class State(str, Enum):
    IDLE = "IDLE"
    HELLO_SENT = "HELLO_SENT"  # child: hello in flight / parent: hello received, reply owed
    READY = "READY"
    PUSHING = "PUSHING"
    PULLING = "PULLING"
    SNAPSHOT = "SNAPSHOT"
    VERIFYING = "VERIFYING"
    MUST_RESYNC = "MUST_RESYNC"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


class Event(str, Enum):
    SEND_HELLO = "send_hello"
    RECV_HELLO = "recv_hello"
    SEND_HELLO_REPLY = "send_hello_reply"
    RECV_HELLO_REPLY = "recv_hello_reply"
    SEND_PUSH = "send_push"
    RECV_PUSH = "recv_push"
    SEND_PUSH_REPLY = "send_push_reply"
    RECV_PUSH_REPLY = "recv_push_reply"
    SEND_PULL = "send_pull"
    RECV_PULL = "recv_pull"
    SEND_PULL_REPLY = "send_pull_reply"
    RECV_PULL_REPLY = "recv_pull_reply"
    SEND_SNAPSHOT = "send_snapshot"
    RECV_SNAPSHOT = "recv_snapshot"
    SEND_SNAPSHOT_CHUNK = "send_snapshot_chunk"
    RECV_SNAPSHOT_CHUNK = "recv_snapshot_chunk"
    SEND_VERIFY = "send_verify"
    RECV_VERIFY = "recv_verify"
    SEND_VERIFY_REPLY = "send_verify_reply"
    RECV_VERIFY_REPLY = "recv_verify_reply"
    SEND_MUST_RESYNC = "send_must_resync"
    RECV_MUST_RESYNC = "recv_must_resync"
    SEND_RETRYABLE_ERROR = "send_retryable_error"
    RECV_RETRYABLE_ERROR = "recv_retryable_error"
    SEND_FATAL_ERROR = "send_fatal_error"
    RECV_FATAL_ERROR = "recv_fatal_error"
    TIMEOUT = "timeout"
    CLOSE = "close"


S, E = State, Event

# Exchanges that may end with MUST_RESYNC, retryable or fatal errors, or a timeout.
_CHILD_IN_FLIGHT = {
    S.HELLO_SENT: (E.RECV_HELLO_REPLY, S.READY),
    S.PUSHING: (E.RECV_PUSH_REPLY, S.READY),
    S.PULLING: (E.RECV_PULL_REPLY, S.READY),
    S.SNAPSHOT: (E.RECV_SNAPSHOT_CHUNK, S.READY),
    S.VERIFYING: (E.RECV_VERIFY_REPLY, S.READY),
}
_PARENT_IN_FLIGHT = {
    S.HELLO_SENT: (E.SEND_HELLO_REPLY, S.READY),
    S.PUSHING: (E.SEND_PUSH_REPLY, S.READY),
    S.PULLING: (E.SEND_PULL_REPLY, S.READY),
    S.SNAPSHOT: (E.SEND_SNAPSHOT_CHUNK, S.READY),
    S.VERIFYING: (E.SEND_VERIFY_REPLY, S.READY),
}


def _in_flight(table: Mapping[State, tuple[Event, State]], side: str) -> dict[State, dict[Event, State]]:
    out = {}
    for state, (ok, nxt) in table.items():
        out[state] = {
            ok: nxt,
            E(f"{side}_must_resync"): S.MUST_RESYNC,
            E(f"{side}_retryable_error"): S.IDLE,
            E(f"{side}_fatal_error"): S.ERROR,
            E.TIMEOUT: S.IDLE,
            E.CLOSE: S.CLOSED,
        }
    return out


#: (role, state) -> {event: next state}.  Absent events are protocol errors.
TRANSITIONS: dict[tuple[Role, State], dict[Event, State]] = {
    (Role.CHILD, S.IDLE): {E.SEND_HELLO: S.HELLO_SENT, E.CLOSE: S.CLOSED},
    (Role.CHILD, S.READY): {
        E.SEND_PUSH: S.PUSHING, E.SEND_PULL: S.PULLING, E.SEND_SNAPSHOT: S.SNAPSHOT,
        E.SEND_VERIFY: S.VERIFYING, E.SEND_HELLO: S.HELLO_SENT, E.CLOSE: S.CLOSED,
    },
    (Role.CHILD, S.MUST_RESYNC): {E.SEND_HELLO: S.HELLO_SENT, E.SEND_SNAPSHOT: S.SNAPSHOT, E.CLOSE: S.CLOSED},
    (Role.CHILD, S.CLOSED): {},
    (Role.CHILD, S.ERROR): {},
    **{(Role.CHILD, s): t for s, t in _in_flight(_CHILD_IN_FLIGHT, "recv").items()},
    (Role.PARENT, S.IDLE): {E.RECV_HELLO: S.HELLO_SENT, E.CLOSE: S.CLOSED},
    (Role.PARENT, S.READY): {
        E.RECV_PUSH: S.PUSHING, E.RECV_PULL: S.PULLING, E.RECV_SNAPSHOT: S.SNAPSHOT,
        E.RECV_VERIFY: S.VERIFYING, E.RECV_HELLO: S.HELLO_SENT, E.CLOSE: S.CLOSED,
    },
    (Role.PARENT, S.MUST_RESYNC): {E.RECV_HELLO: S.HELLO_SENT, E.RECV_SNAPSHOT: S.SNAPSHOT, E.CLOSE: S.CLOSED},
    (Role.PARENT, S.CLOSED): {},
    (Role.PARENT, S.ERROR): {},
    **{(Role.PARENT, s): t for s, t in _in_flight(_PARENT_IN_FLIGHT, "send").items()},
}


class ProtocolError(Exception):
    """Base of the two protocol errors; ``code`` is the error table code to report."""

    def __init__(self, msg: str, code: str = "DECODE_ERROR") -> None:
        super().__init__(msg)
        self.code = code


class LocalProtocolError(ProtocolError):
    """Our own code broke the table (a bug on this node)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the table; the link is now in ``ERROR``."""


class Link:
    """One channel's state.  :meth:`handle` is the only way to change it."""

    def __init__(self, role: Role, state: State = S.IDLE) -> None:
        self.role = role
        self.state = state
        self.history: list[tuple[State, Event, State]] = []

    def can(self, event: Event) -> bool:
        """True when ``event`` is allowed now (does not change the state)."""
        return event in TRANSITIONS[(self.role, self.state)]

    def handle(self, event: Event) -> State:
        """Apply ``event``; return the new state.

        Raises :class:`LocalProtocolError` for a ``SEND_*``, ``TIMEOUT`` or ``CLOSE``
        the table does not allow (state unchanged), :class:`RemoteProtocolError` for a
        ``RECV_*`` it does not allow (state becomes ``ERROR``).  In ``ERROR`` or
        ``CLOSED`` every event raises :class:`LocalProtocolError`.
        """
        allowed = TRANSITIONS[(self.role, self.state)]
        if event not in allowed:
            what = f"{self.role.value} cannot {event.value} in {self.state.value}"
            if self.state in (S.ERROR, S.CLOSED) or not event.value.startswith("recv_"):
                raise LocalProtocolError(what, "INTERNAL")
            # a parent that restarted has no session: the child must say hello again
            code = "HELLO_REQUIRED" if self.state is S.IDLE else "DECODE_ERROR"
            self._move(event, S.ERROR)
            raise RemoteProtocolError(what, code)
        self._move(event, allowed[event])
        return self.state

    def _move(self, event: Event, nxt: State) -> None:
        self.history.append((self.state, event, nxt))
        self.state = nxt


def render_mermaid() -> str:
    """``protocol/states.md``: one mermaid ``stateDiagram-v2`` per role, from :data:`TRANSITIONS`."""
    lines = [
        "# syncd link states",
        "",
        "Generated by `protocol/draw_states.py` from `syncd/proto/link.py`; do not edit.",
        "`ERROR` is sticky; every other state also moves to `CLOSED` on `close`.",
    ]
    for role in Role:
        lines += ["", f"## {role.value}", "", "```mermaid", "stateDiagram-v2", f"    [*] --> {S.IDLE.value}"]
        for (r, state), moves in TRANSITIONS.items():
            if r is not role:
                continue
            for event, nxt in moves.items():
                if event is not E.CLOSE:
                    lines.append(f"    {state.value} --> {nxt.value} : {event.value}")
        lines += [f"    {S.CLOSED.value} --> [*]", "```"]
    return "\n".join(lines) + "\n"
