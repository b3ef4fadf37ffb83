"""The link state table (SPEC §2)."""
from __future__ import annotations

import pathlib

import pytest

from syncd.proto.link import (
    TRANSITIONS, Event, Link, LocalProtocolError, RemoteProtocolError, Role, State, render_mermaid,
)

E, S = Event, State
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_r2_2_states_md_is_not_stale() -> None:
    committed = (ROOT / "protocol" / "states.md").read_text(encoding="utf-8")
    assert committed == render_mermaid(), "run python protocol/draw_states.py and commit protocol/states.md"


def test_r2_1_child_happy_path() -> None:
    link = Link(Role.CHILD)
    for ev, st in [(E.SEND_HELLO, S.HELLO_SENT), (E.RECV_HELLO_REPLY, S.READY), (E.SEND_PUSH, S.PUSHING),
                   (E.RECV_PUSH_REPLY, S.READY), (E.SEND_PULL, S.PULLING), (E.RECV_PULL_REPLY, S.READY),
                   (E.SEND_VERIFY, S.VERIFYING), (E.RECV_VERIFY_REPLY, S.READY), (E.CLOSE, S.CLOSED)]:
        assert link.handle(ev) is st
    assert len(link.history) == 9


def test_r2_1_child_cannot_push_before_hello() -> None:
    link = Link(Role.CHILD)
    with pytest.raises(LocalProtocolError):
        link.handle(E.SEND_PUSH)
    assert link.state is S.IDLE  # our own misuse does not poison the link


def test_r2_2_must_resync_then_snapshot() -> None:
    link = Link(Role.CHILD)
    link.handle(E.SEND_HELLO)
    assert link.handle(E.RECV_MUST_RESYNC) is S.MUST_RESYNC
    assert not link.can(E.SEND_PULL) and not link.can(E.SEND_PUSH)
    assert link.handle(E.SEND_SNAPSHOT) is S.SNAPSHOT
    assert link.handle(E.RECV_SNAPSHOT_CHUNK) is S.READY


@pytest.mark.parametrize("ev", [E.RECV_RETRYABLE_ERROR, E.TIMEOUT])
def test_r2_2_retryable_error_or_timeout_goes_back_to_hello(ev: Event) -> None:
    link = Link(Role.CHILD)
    link.handle(E.SEND_HELLO)
    link.handle(E.RECV_HELLO_REPLY)
    link.handle(E.SEND_PULL)
    assert link.handle(ev) is S.IDLE
    assert link.can(E.SEND_HELLO) and not link.can(E.SEND_PULL)


def test_r2_2_error_is_sticky() -> None:
    link = Link(Role.CHILD)
    link.handle(E.SEND_HELLO)
    with pytest.raises(RemoteProtocolError):
        link.handle(E.RECV_PULL_REPLY)  # the peer answered something we did not ask
    assert link.state is S.ERROR
    for ev in Event:
        with pytest.raises(LocalProtocolError):
            link.handle(ev)
        assert link.state is S.ERROR


def test_r2_3_parent_without_session_requires_hello() -> None:
    link = Link(Role.PARENT)
    with pytest.raises(RemoteProtocolError) as info:
        link.handle(E.RECV_PUSH)
    assert info.value.code == "HELLO_REQUIRED" and link.state is S.ERROR


def test_r2_1_parent_happy_path_and_fatal_error() -> None:
    link = Link(Role.PARENT)
    assert link.handle(E.RECV_HELLO) is S.HELLO_SENT
    assert link.handle(E.SEND_HELLO_REPLY) is S.READY
    assert link.handle(E.RECV_PUSH) is S.PUSHING
    assert link.handle(E.SEND_FATAL_ERROR) is S.ERROR


def test_table_is_complete_and_closed() -> None:
    for role in Role:
        for state in State:
            assert (role, state) in TRANSITIONS
        assert TRANSITIONS[(role, S.ERROR)] == {} and TRANSITIONS[(role, S.CLOSED)] == {}
    sends = {e for (r, _), moves in TRANSITIONS.items() if r is Role.CHILD for e in moves if e.value.startswith("send_")}
    recvs = {e for (r, _), moves in TRANSITIONS.items() if r is Role.PARENT for e in moves if e.value.startswith("recv_")}
    # every request the child may send is one the parent may receive
    assert {e.value[5:] for e in sends} == {e.value[5:] for e in recvs}
