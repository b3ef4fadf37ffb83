"""The transport contract suite's fake parent, message builders and backend rig."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestServer

from syncd.proto.change import Change, ColumnChange, Version
from syncd.proto.messages import (
    Hello, HelloReply, Message, PullReply, PullRequest, Push, PushReply, Quarantined,
    RangeSum, SnapshotChunk, SnapshotRequest, SnapshotRow, TableDecl, VerifyReply, VerifyRequest,
    negotiate,
)
from syncd.proto.signing import Keyring
from syncd.transport.base import ParentLink
from syncd.transport.http import HttpParentLink, HttpParentServer
from syncd.transport.memory import MemoryParentLink
from syncd.transport.nonces import MemoryNonceStore

CHILD = "430102"
PARENT = "430100"
SECRET = "furong-changsha-2026-secret"
INC = uuid.UUID(int=0xC0FFEE)


def change(pos: int, row: int = 7, **kw: object) -> Change:
    base: dict = dict(table="attendance", id=uuid.UUID(int=row), org_code=CHILD, op="U", cl=3, ts=10 + pos,
                      origin=CHILD, txn=pos, homes={"home": CHILD, "organiser": PARENT},
                      cols={"status": ColumnChange("出席", 0, 0, Version(1, 0, 0, 5, PARENT))}, pos=pos)
    base.update(kw)
    return Change(**base)  # type: ignore[arg-type]


def hello(versions: tuple[int, ...] = (1, 2)) -> Hello:
    return Hello(versions, CHILD, uuid.UUID(int=1), uuid.UUID(int=2), 3, 1_767_225_600_000_000, 0, None,
                 {"attendance": TableDecl(1, ("activity_id", "member_id", "status"))})


def push(n: int = 2, summary: tuple[dict, ...] = ({"node": CHILD, "lag": 0},)) -> Push:
    return Push(uuid.uuid4(), 3, 0, n, [change(i + 1, row=100 + i) for i in range(n)], summary)


@dataclass
class FakeParent:
    """A ParentHandler that records what it gets, fails on demand and long-polls."""

    received: list[tuple[str, str, Message]] = field(default_factory=list)
    fail: BaseException | None = None
    pending: list[Change] = field(default_factory=list)
    wake_event: asyncio.Event = field(default_factory=asyncio.Event)

    def _record(self, kind: str, child: str, msg: Message) -> None:
        self.received.append((kind, child, msg))
        if self.fail is not None:
            raise self.fail

    def wake(self, *changes: Change) -> None:
        self.pending.extend(changes)
        self.wake_event.set()

    async def on_hello(self, child: str, msg: Hello) -> HelloReply:
        self._record("hello", child, msg)
        v = negotiate(msg.versions)
        return HelloReply(v, PARENT, INC, 3, None if v == 1 else 1_767_225_600_000_123, 0, None,
                          {"attendance": TableDecl(1, ("activity_id", "member_id", "status"))})

    async def on_push(self, child: str, msg: Push) -> PushReply:
        self._record("push", child, msg)
        return PushReply(msg.to_pos, len(msg.changes) - 1, [Quarantined(msg.to_pos, "FORBIDDEN_SCOPE")])

    async def on_pull(self, child: str, msg: PullRequest) -> PullReply:
        self._record("pull", child, msg)
        if not self.pending:
            try:
                await asyncio.wait_for(self.wake_event.wait(), msg.wait_ms / 1000)
            except asyncio.TimeoutError:
                pass
        self.wake_event.clear()
        changes, self.pending = tuple(self.pending[: msg.limit]), self.pending[msg.limit:]
        last = max((c.pos for c in changes), default=msg.after)
        return PullReply(changes, last, last + len(self.pending), msg.epoch, bool(self.pending))

    async def on_snapshot(self, child: str, msg: SnapshotRequest) -> SnapshotChunk:
        self._record("snapshot", child, msg)
        row = SnapshotRow(uuid.UUID(int=9), CHILD, 1, {"home": CHILD},
                          {"status": ("出席", Version(1, 0, 0, 5, PARENT))})
        return SnapshotChunk(msg.table, msg.position or 5000, [row], None, True)

    async def on_verify(self, child: str, msg: VerifyRequest) -> VerifyReply:
        self._record("verify", child, msg)
        return VerifyReply(msg.table, msg.position or 5000,
                           [RangeSum(r.lo, r.hi, 1, bytes(32)) for r in msg.ranges])


def keyring(*keys: tuple[str, str]) -> Keyring:
    ring = Keyring()
    for key_id, secret in keys:
        ring.add(CHILD, key_id, secret)
    return ring


async def start_http(parent: FakeParent, **server_kw: object) -> tuple[HttpParentServer, TestServer]:
    kw: dict = {"keyrings": {CHILD: keyring(("k1", SECRET))}, "nonces": MemoryNonceStore()}
    kw.update(server_kw)
    server = HttpParentServer(parent, **kw)
    ts = TestServer(server.app, host="127.0.0.1")
    await ts.start_server(auto_decompress=False)  # TestServer() drops runner kwargs
    return server, ts


@dataclass
class Rig:
    """One backend: a fake parent, a way to make links to it, a way to break them."""

    backend: str
    parent: FakeParent
    make_link: Callable[..., Awaitable[ParentLink]]
    break_link: Callable[[ParentLink], Awaitable[None]]


@pytest.fixture(params=["memory", "http"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    parent = FakeParent()
    links: list[ParentLink] = []
    if request.param == "memory":
        async def make_memory(version: int = 2) -> ParentLink:
            link = MemoryParentLink(parent, CHILD, version=version)
            links.append(link)
            return link

        async def cut(link: ParentLink) -> None:
            assert isinstance(link, MemoryParentLink)
            link.cut()

        yield Rig("memory", parent, make_memory, cut)
    else:
        _, ts = await start_http(parent)

        async def make_http(version: int = 2) -> ParentLink:
            link = HttpParentLink(str(ts.make_url("")), CHILD, keyring(("k1", SECRET)), version=version,
                                  timeout=5.0, gzip_min_bytes=1024)
            links.append(link)
            return link

        async def stop(link: ParentLink) -> None:
            await ts.close()

        yield Rig("http", parent, make_http, stop)
        await ts.close()
    for link in links:
        await link.close()
