"""One contract suite for every ParentLink backend (Litestream ``RunWithReplicaClient`` style).

Each test runs twice: against :class:`MemoryParentLink` and against
:class:`HttpParentLink` talking to :class:`HttpParentServer` on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from syncd import retry
from syncd.errors import SyncdError, must_resync
from syncd.proto.messages import IdRange, PullRequest, SnapshotRequest, VerifyRequest
from syncd.transport.base import ParentHandler, ParentLink, TransportError
from tests.contract.fakes import CHILD, FakeParent, Rig, change, hello, push


async def test_backends_implement_the_protocols(rig: Rig) -> None:
    assert isinstance(rig.parent, ParentHandler)
    assert isinstance(await rig.make_link(), ParentLink)


async def test_hello_round_trips_equal_messages(rig: Rig) -> None:
    link = await rig.make_link()
    sent = hello()
    reply = await link.hello(sent)
    assert rig.parent.received == [("hello", CHILD, sent)]
    assert reply == await rig.parent.on_hello(CHILD, sent)
    assert reply.version == 2 and reply.clock is not None


async def test_push_round_trips_changes_and_summary(rig: Rig) -> None:
    link = await rig.make_link()
    await link.hello(hello())
    sent = push(3)
    reply = await link.push(sent)
    kind, child, got = rig.parent.received[-1]
    assert (kind, child, got) == ("push", CHILD, sent)
    assert reply.acked_pos == 3 and reply.applied == 2
    assert [(q.pos, q.code) for q in reply.quarantined] == [(3, "FORBIDDEN_SCOPE")]


async def test_large_push_and_pull_round_trip(rig: Rig) -> None:
    """Big enough to be gzipped both ways on HTTP (threshold 1 KiB in the rig)."""
    link = await rig.make_link()
    sent = push(300)
    assert (await link.push(sent)).acked_pos == 300
    assert rig.parent.received[-1][2] == sent
    rig.parent.wake(*sent.changes)
    reply = await link.pull(PullRequest(0, 3, 10_000, 0))
    assert reply.changes == sent.changes and reply.last_pos == 300 and not reply.more


async def test_pull_returns_pending_changes_at_once(rig: Rig) -> None:
    link = await rig.make_link()
    rig.parent.wake(change(5), change(6, row=8))
    start = time.monotonic()
    reply = await link.pull(PullRequest(4, 3, 1, 10_000))
    assert time.monotonic() - start < 2
    assert reply.changes == (change(5),) and reply.last_pos == 5 and reply.more
    assert rig.parent.received[-1] == ("pull", CHILD, PullRequest(4, 3, 1, 10_000))


async def test_long_poll_returns_when_woken(rig: Rig) -> None:
    link = await rig.make_link()
    task = asyncio.create_task(link.pull(PullRequest(0, 3, 100, 20_000)))
    await asyncio.sleep(0.2)
    assert not task.done(), "the pull must wait while there is nothing to send"
    start = time.monotonic()
    rig.parent.wake(change(1))
    reply = await asyncio.wait_for(task, 5)
    assert time.monotonic() - start < 2
    assert reply.changes == (change(1),) and reply.last_pos == 1


async def test_long_poll_times_out_empty(rig: Rig) -> None:
    link = await rig.make_link()
    start = time.monotonic()
    reply = await link.pull(PullRequest(42, 3, 100, 300))
    assert 0.25 <= time.monotonic() - start < 3
    assert reply.changes == () and reply.last_pos == 42


async def test_snapshot_and_verify_round_trip(rig: Rig) -> None:
    link = await rig.make_link()
    req = SnapshotRequest("attendance", None, 100, None)
    chunk = await link.snapshot(req)
    assert chunk == await rig.parent.on_snapshot(CHILD, req) and chunk.done
    vreq = VerifyRequest("attendance", 77, [IdRange(uuid.UUID(int=0), uuid.UUID(int=2**127)),
                                            IdRange(uuid.UUID(int=2**127), None)])
    vrep = await link.verify(vreq)
    assert vrep == await rig.parent.on_verify(CHILD, vreq)
    assert rig.parent.received[-2:] == [("verify", CHILD, vreq)] * 2  # ours, then the test's own call


@pytest.mark.parametrize("err", [
    must_resync(8, "cursor 12 is below the retained log"),
    SyncdError("NOT_A_CHILD", "430199 is not a child of 430100"),
    SyncdError("SNAPSHOT_BUSY", "12 snapshots in progress"),
    SyncdError("HELLO_REQUIRED", "no session"),
    SyncdError("NEWER_PEER_CODE", "a code this build does not know", "some hint", retryable=True),
], ids=lambda e: e.code)
async def test_handler_refusal_reaches_child_unchanged(rig: Rig, err: SyncdError) -> None:
    link = await rig.make_link()
    rig.parent.fail = err
    with pytest.raises(SyncdError) as info:
        await link.push(push())
    assert not isinstance(info.value, TransportError)
    assert info.value == err  # code, reason, hint, retryable and details
    assert info.value.epoch == err.epoch
    assert retry.classify(info.value) == retry.classify(err)  # the same verdict as at the parent
    assert (retry.classify(info.value) == "final") == (not err.retryable)


async def test_handler_bug_is_internal_without_its_text(rig: Rig) -> None:
    link = await rig.make_link()
    rig.parent.fail = KeyError("DETAIL: Key (id)=(张三 13800000000) already exists")
    with pytest.raises(SyncdError) as info:
        await link.hello(hello())
    assert info.value.code == "INTERNAL" and info.value.retryable
    assert "张三" not in str(info.value.to_wire()) and "DETAIL" not in str(info.value.to_wire())
    assert "request" in info.value.reason


async def test_v1_child_negotiates_and_drops_v2_fields(rig: Rig) -> None:
    link = await rig.make_link(version=1)
    reply = await link.hello(hello(versions=(1,)))
    assert reply.version == 1 and reply.clock is None
    await link.push(push(2))
    got = rig.parent.received[-1][2]
    assert got.summary == () and len(got.changes) == 2  # type: ignore[union-attr]


async def test_hello_switches_the_link_to_the_chosen_version(rig: Rig) -> None:
    link = await rig.make_link(version=1)
    assert (await link.hello(hello(versions=(1, 2)))).version == 2
    sent = push(1)
    await link.push(sent)
    assert rig.parent.received[-1][2] == sent  # the summary survived: spoken at v2


async def test_unsupported_version_is_refused_at_hello(rig: Rig) -> None:
    link = await rig.make_link()
    with pytest.raises(SyncdError) as info:
        await link.hello(hello(versions=(7,)))
    assert info.value.code == "UNSUPPORTED_VERSION" and retry.classify(info.value) == "final"


async def test_broken_link_is_a_retryable_transport_error(rig: Rig) -> None:
    link = await rig.make_link()
    await link.hello(hello())
    await rig.break_link(link)
    with pytest.raises(TransportError) as info:
        await link.push(push())
    assert info.value.status is None and info.value.code == "UNREACHABLE"
    assert retry.classify(info.value) == "retry"


async def test_closed_link_refuses(rig: Rig) -> None:
    link = await rig.make_link()
    await link.close()
    await link.close()  # idempotent
    with pytest.raises(TransportError):
        await link.hello(hello())
    assert rig.parent.received == []


async def test_concurrent_channels_share_one_link(rig: Rig) -> None:
    parent: FakeParent = rig.parent
    link = await rig.make_link()
    pull = asyncio.create_task(link.pull(PullRequest(0, 3, 100, 10_000)))
    await asyncio.sleep(0.05)
    pushed = await asyncio.wait_for(link.push(push(2)), 5)  # not blocked by the long poll
    assert pushed.acked_pos == 2
    parent.wake(change(9))
    assert (await asyncio.wait_for(pull, 5)).last_pos == 9
