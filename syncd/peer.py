"""The child side of a link: one loop pushing the log up, one long-poll loop pulling down.

Both loops never die (DESIGN §9): every failure is classified by
:mod:`syncd.retry`, counted in the loop's :class:`~syncd.retry.LoopHealth`, and
waited out with capped, jittered backoff; a failed link keeps probing slowly and
recovers by itself (HC-31).  Each loop starts with hello.

Push: own log entries after the push cursor that the parent is entitled to
(``routing.project`` over the parent link; never what came from the parent), cut
at origin-transaction boundaries, sent with positions; the parent applies them
idempotently and acknowledges a position.  Pull: the parent's outbox after the
pull cursor; applied with the cursor advanced in the same transaction.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import asyncpg
import structlog

from syncd.config import Config
from syncd.faults import fault_point
from syncd.proto.change import Change
from syncd.proto.messages import PROTOCOL_VERSION, SUPPORTED_VERSIONS, Hello, PullRequest, Push, SnapshotRequest
from syncd.retry import LoopHealth
from syncd.stall import CursorWatch
from syncd.routing import project
from syncd.store import audit
from syncd.store.apply import ApplyContext, apply_batch, current_topology, retry_parked
from syncd.store.log import change_from_record
from syncd.transport.base import ParentLink

log = structlog.get_logger("syncd.peer")

#: a 'truncated' mark at this position makes a child resync whatever its cursor, until it
#: starts a snapshot (which removes the mark)
RESYNC_ALWAYS = 2**62


def cut_batch(entries: Sequence[Any], max_changes: int) -> list[Any]:
    """At most ``max_changes``, cut only between origin transactions (one oversize txn goes whole).

    ``entries`` are changes or log records: anything with ``origin`` and ``txn`` items."""
    if len(entries) <= max_changes:
        return list(entries)

    def txn(e: Any) -> tuple[str, int]:
        return (e.origin, e.txn) if isinstance(e, Change) else (e["origin"], e["txn"])
    cut = max_changes
    while cut > 0 and txn(entries[cut - 1]) == txn(entries[cut]):
        cut -= 1
    if cut == 0:  # a single transaction larger than the cap travels in one batch
        cut = max_changes
        while cut < len(entries) and txn(entries[cut]) == txn(entries[0]):
            cut += 1
    return list(entries[:cut])


@dataclass
class ChildLinks:
    """Push and pull loops of one node towards its parent."""

    cfg: Config
    pool: asyncpg.Pool
    link: ParentLink
    ctx: ApplyContext
    incarnation: uuid.UUID
    instance: uuid.UUID
    summary: Callable[[], Awaitable[list[dict]]] | None = None
    wake_push: asyncio.Event = field(default_factory=asyncio.Event)
    push_cursor: int = 0
    pull_cursor: int = 0
    clock_offset_ms: int | None = None
    summary_every_s: float = 5.0
    snapshot_state: dict | None = None  # bootstrap progress, shown in status
    versions: tuple[int, ...] = SUPPORTED_VERSIONS  # protocol versions offered at hello (SPEC R3.1)
    push_watch: CursorWatch = field(default_factory=CursorWatch)  # stalled links (syncd.stall)
    pull_watch: CursorWatch = field(default_factory=CursorWatch)
    _summary_sent: float = 0.0

    def __post_init__(self) -> None:
        t = self.cfg.tuning
        self.push_health = LoopHealth(f"{self.cfg.node.id}->{self.parent} push", t.retry_cap_s, t.failed_probe_s)
        self.pull_health = LoopHealth(f"{self.cfg.node.id}<-{self.parent} pull", t.retry_cap_s, t.failed_probe_s)

    async def _summary(self) -> tuple[dict, ...]:
        """Compact subtree status, at most every ``summary_every_s`` (HC-30)."""
        now = asyncio.get_running_loop().time()
        if self.summary is None or now - self._summary_sent < self.summary_every_s:
            return ()
        self._summary_sent = now
        return tuple(await self.summary())

    @property
    def parent(self) -> str:
        assert self.cfg.parent is not None
        return self.cfg.parent.id

    async def hello(self) -> int:
        """Say hello; return the parent's push cursor for us."""
        from syncd.node import now_us, table_decls

        async with self.pool.acquire() as conn:
            pull = await conn.fetchval(
                "SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'", self.parent) or 0
            epoch = await conn.fetchval("SELECT epoch FROM syncd.node")
        sent = now_us()
        reply = await self.link.hello(Hello(
            versions=self.versions, node=self.cfg.node.id, instance=self.instance,
            incarnation=self.incarnation, epoch=epoch, clock=sent, pull_cursor=pull, pull_hash=None,
            tables=table_decls(self.ctx.schema)))
        if reply.clock is not None:
            self.clock_offset_ms = (reply.clock - (sent + now_us()) // 2) // 1000
        return reply.push_cursor

    async def _push_once(self) -> bool:
        """Send one batch; True if there may be more to send right away."""
        limit = self.cfg.tuning.batch_max_changes
        async with self.pool.acquire() as conn:
            # the cut is found on (pos, origin, txn) alone; only what goes up is decoded
            heads = await conn.fetch("SELECT pos, origin, txn FROM syncd.log WHERE pos > $1 ORDER BY pos LIMIT $2",
                                     self.push_cursor, limit * 2)
            cut = cut_batch(heads, limit)
            recs = [] if not cut else await conn.fetch(
                "SELECT * FROM syncd.log WHERE pos > $1 AND pos <= $2 AND received_from IS DISTINCT FROM $3 "
                "ORDER BY pos", self.push_cursor, cut[-1]["pos"], self.parent)
        if not heads:
            summary = await self._summary()
            if summary:
                await self.link.push(Push(batch_id=uuid.uuid4(), epoch=0, from_pos=self.push_cursor,
                                          to_pos=self.push_cursor, changes=(), summary=summary))
            return False
        entries = [change_from_record(r) for r in recs]
        async with self.pool.acquire() as conn:
            topo = self.ctx.topo = await current_topology(conn, self.ctx.topo, entries)
        behind = topo.behind(self.cfg.node.id, self.parent)
        out = [p for c in entries for p in [project(c, behind, topo)] if p is not None]
        to_pos = cut[-1]["pos"]
        summary = await self._summary()
        if out or summary:
            batch_id = uuid.uuid4()
            reply = await self.link.push(Push(batch_id=batch_id, epoch=0, from_pos=self.push_cursor,
                                              to_pos=to_pos, changes=tuple(out), summary=summary))
            to_pos = max(reply.acked_pos, self.push_cursor) if out else to_pos
            if out:
                async with self.pool.acquire() as conn:
                    await audit.record(conn, self.parent, "sent", str(batch_id), out)
        self.push_cursor = to_pos
        self.push_watch.observe(to_pos)
        fault_point("before_push_cursor_save")
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, 'push', $2) "
                "ON CONFLICT (peer, kind) DO UPDATE SET pos = excluded.pos, updated_at = now()",
                self.parent, self.push_cursor)
        return len(heads) > len(cut) or len(heads) == limit * 2

    async def push_loop(self, stop: asyncio.Event) -> None:
        hello_needed = True
        while not stop.is_set():
            try:
                if hello_needed:
                    self.push_cursor = await self.hello()
                    self.push_watch.observe(self.push_cursor)
                    hello_needed = False
                self.wake_push.clear()  # before reading: a NOTIFY during the push is not lost
                more = await self._push_once()
                self.push_health.ok()
                if not more:
                    await _wait_any(stop, self.wake_push, self.cfg.tuning.sequencer_interval_ms / 1000 * 5)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — the loop never dies; retry.py classifies
                hello_needed = True
                await _wait_any(stop, None, self.push_health.error(e))

    async def _retry_parked_if_any(self) -> None:
        """Parked changes also get a try when the link is idle (their target may have come by
        a snapshot, or the tree may be known now)."""
        from syncd.store.sequencer import lock

        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM syncd.parked)"):
                return
            async with conn.transaction():
                await conn.execute("SET LOCAL syncd.applying = 'on'")
                await lock(conn)
                await retry_parked(conn, self.ctx)

    async def _pull_once(self) -> None:
        from syncd.node import now_us

        wait_ms = int(self.cfg.tuning.pull_wait_s * 1000)
        reply = await self.link.pull(PullRequest(after=self.pull_cursor, epoch=0,
                                                 limit=self.cfg.tuning.batch_max_changes, wait_ms=wait_ms))
        self.pull_watch.observe(self.pull_cursor, reply.head)
        if reply.last_pos <= self.pull_cursor:
            await self._retry_parked_if_any()
        if reply.last_pos > self.pull_cursor:
            async with self.pool.acquire() as conn:
                res = await apply_batch(conn, self.ctx, self.parent, "pull", "from_parent",
                                        list(reply.changes), reply.last_pos, now_us())
                if not res.duplicate:
                    await audit.record(conn, self.parent, "received",
                                       f"pull ({self.pull_cursor}, {reply.last_pos}]", reply.changes)
            fault_point("after_pull_apply")
            self.pull_cursor = res.cursor
            self.pull_watch.observe(self.pull_cursor, reply.head)

    async def bootstrap(self) -> None:
        """Load (or resume) a snapshot of everything this node is entitled to, then pull from p₀."""
        from syncd.node import now_us
        from syncd.store.sequencer import lock
        from syncd.store.snapshot import Progress, clear_progress, merge_chunk, progress, save_progress

        async with self.pool.acquire() as conn:
            done = await progress(conn, self.parent)
        position = next((p.position for p in done.values()), None)
        resumed = sum(p.rows for p in done.values())  # loaded by an earlier, interrupted run
        state = self.snapshot_state = {"state": "loading", "tables": {n: p.rows for n, p in done.items()},
                                       "position": position, "resumed_rows": resumed, "chunks": 0}
        for t in self.ctx.schema.tables:
            p = done.get(t.name) or Progress(t.name, position or 0, None, 0, False)
            while not p.done:
                chunk = await self.link.snapshot(SnapshotRequest(t.name, p.after_id, self.cfg.tuning.batch_max_changes,
                                                                 position))
                position = chunk.position
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute("SET LOCAL syncd.applying = 'on'")
                    await lock(conn)
                    await merge_chunk(conn, self.ctx, self.parent, t.name, chunk.rows)
                    await audit.record_rows(conn, self.parent, "received",
                                            audit.snapshot_batch(t.name, p.after_id, chunk.next_after_id),
                                            t.name, chunk.rows)
                    fault_point("mid_snapshot_chunk")  # rows merged, progress not yet committed
                    fault_point("after_copy")
                    p = Progress(t.name, position, chunk.next_after_id or p.after_id, p.rows + len(chunk.rows),
                                 chunk.done)
                    await save_progress(conn, self.parent, p)
                state["tables"][t.name] = p.rows
                state["position"] = position
                state["chunks"] += 1
            log.info("snapshot_table_done", link=self.pull_health.name, table=t.name, rows=p.rows)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL syncd.applying = 'on'")
            await lock(conn)
            await retry_parked(conn, self.ctx)  # changes that waited for the tree or a FK target
            await conn.execute(
                "INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, 'pull', $2) "
                "ON CONFLICT (peer, kind) DO UPDATE SET pos = excluded.pos, updated_at = now()",
                self.parent, position or 0)
            await clear_progress(conn, self.parent)
            # rows merged from a snapshot are not in this node's log: its own children resync
            await conn.execute(
                "INSERT INTO syncd.cursors (peer, kind, pos) SELECT c, 'truncated', $2 FROM "
                "unnest($1::text[]) c ON CONFLICT (peer, kind) DO UPDATE SET pos = excluded.pos, updated_at = now()",
                [c.id for c in self.cfg.children], RESYNC_ALWAYS)
            await conn.execute("NOTIFY syncd_log")  # the node re-reads its tree (committees came by snapshot)
        self.pull_cursor = position or 0
        self.snapshot_state = {"state": "done", "position": position, "at_us": now_us(), "resumed_rows": resumed,
                               "chunks": state["chunks"]}

    async def _needs_snapshot(self) -> bool:
        async with self.pool.acquire() as conn:
            unfinished = await conn.fetchval("SELECT count(*) FROM syncd.snapshot_progress WHERE peer = $1",
                                             self.parent)
            pulled = await conn.fetchval("SELECT count(*) FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'",
                                         self.parent)
        return bool(unfinished) or not pulled

    async def pull_loop(self, stop: asyncio.Event) -> None:
        hello_needed = True
        while not stop.is_set():
            try:
                if hello_needed:
                    await self.hello()
                    if await self._needs_snapshot():
                        await self.bootstrap()
                    async with self.pool.acquire() as conn:
                        self.pull_cursor = await conn.fetchval(
                            "SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'", self.parent) or 0
                    hello_needed = False
                await self._pull_once()
                self.pull_health.ok()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                hello_needed = True
                if getattr(e, "code", None) == "MUST_RESYNC":  # below the parent's retained log (HC-21)
                    await self._forget_pull_cursor()  # an expected event, not a link failure
                    continue
                await _wait_any(stop, None, self.pull_health.error(e))

    async def _forget_pull_cursor(self) -> None:
        """Drop the pull cursor so the next hello resyncs by snapshot (merging, HC-22)."""
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'", self.parent)
        log.warning("must_resync", link=self.pull_health.name)


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    waits = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


__all__ = ["ChildLinks", "cut_batch", "PROTOCOL_VERSION"]
