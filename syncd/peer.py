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
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable

import asyncpg
import structlog

from syncd.batching import cut_log, entry_size_sql
from syncd.config import Config
from syncd.errors import SyncdError
from syncd.faults import fault_point
from syncd.proto.change import StoredChange
from syncd.proto.validate import check_tables
from syncd.proto.messages import (PROTOCOL_VERSION, SUPPORTED_VERSIONS, Hello, HelloReply, PullRequest, Push,
                                  SnapshotChunk, SnapshotRequest)
from syncd.retry import LoopHealth
from syncd.stall import CursorWatch
from syncd.status import Metrics
from syncd.routing import project
from syncd.store import audit
from syncd.store import links as linkstate
from syncd.store.apply import ApplyContext, apply_batch, current_topology, retry_parked
from syncd.store.log import CHANGE_COLUMNS, stored_from_record
from syncd.store.resync import adopt_epoch, purge_stale_copies, queue_upward_snapshot
from syncd.store.retention import RESYNC_ALWAYS
from syncd.transport.base import ParentLink

if TYPE_CHECKING:
    from syncd.store.snapshot import Progress

log = structlog.get_logger("syncd.peer")

#: The push loop's longest sleep with nothing logged: it is woken when the log moves, so this
#: only bounds how long a wake-up lost with its connection (``NOTIFY`` during a database
#: restart) could go unnoticed.
PUSH_IDLE_S = 5.0


#: the push cursor and the parent's acknowledgement (with the batch's audit row: one statement)
_SAVE_ACKED = ("WITH acked AS (UPDATE syncd.links SET acked_max = greatest(acked_max, $3) WHERE peer = $1) "
               + linkstate.SAVE_PUSH_CURSOR)


#: A push reads up to this many log entries whole in one query; a longer tail is a backlog,
#: cut on its heads first (:func:`~syncd.batching.cut_log`) so that only what is sent is read and decoded.
SHORT_TAIL = 64
_READ_TAIL = (f"SELECT {CHANGE_COLUMNS}, received_from, {entry_size_sql()}, "
              "(SELECT log_first FROM syncd.node) AS first FROM syncd.log WHERE pos > $1 ORDER BY pos LIMIT $2")
_READ_HEADS = (f"SELECT pos, origin, txn, {entry_size_sql()}, (SELECT log_first FROM syncd.node) AS first "
               "FROM syncd.log WHERE pos > $1 ORDER BY pos LIMIT $2")


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
    push_cursor: int = 0  # own log scanned for the parent: acknowledged, or nothing in it for the parent
    push_acked: int = 0  # the parent's cursor for this node, as it last said (a push's from_pos)
    pull_cursor: int = 0
    epoch: int = 0  # the link epoch adopted from the parent (SPEC §8)
    upward_pending: bool = False  # a resync's upward snapshot is due: push nothing until it is queued
    clock_offset_ms: int | None = None
    summary_every_s: float = 5.0
    #: called after an apply here queued changes in syncd.pending (a pull's ``ApplyResult.queued``)
    #: or may have (parked retry, bootstrap): the sequencer, which this wakes at once (``Sequencer.wake``)
    applied: Callable[[], None] | None = None
    snapshot_state: dict | None = None  # bootstrap progress, shown in status
    versions: tuple[int, ...] = SUPPORTED_VERSIONS  # protocol versions offered at hello (SPEC R3.1)
    push_watch: CursorWatch = field(default_factory=CursorWatch)  # stalled links (syncd.stall)
    pull_watch: CursorWatch = field(default_factory=CursorWatch)
    resyncs: deque = field(default_factory=lambda: deque(maxlen=20))  # MUST_RESYNC answers, shown in status
    metrics: Metrics = field(default_factory=Metrics)  # the node's (status.Metrics)
    _summary_sent: float = float("-inf")  # when the last summary was computed (loop time)
    _summary_ready: tuple[dict, ...] | None = None  # computed in the background, not sent yet
    _summary_task: asyncio.Task[None] | None = None
    _push_saving: asyncio.Task[None] | None = None  # the last push's bookkeeping, committing

    def __post_init__(self) -> None:
        t = self.cfg.tuning
        self.push_health = LoopHealth(f"{self.cfg.node.id}->{self.parent} push", t.retry_cap_s, t.failed_probe_s)
        self.pull_health = LoopHealth(f"{self.cfg.node.id}<-{self.parent} pull", t.retry_cap_s, t.failed_probe_s)
        self._hello_lock = asyncio.Lock()
        self._push_epoch = self._pull_epoch = -1  # the epoch each loop's cursors belong to

    async def _summary(self) -> tuple[dict, ...]:
        """Compact subtree status, at most every ``summary_every_s`` (HC-30).

        Building it reads the whole status (tens of ms), so it is built in the background and
        sent with the next push once ready (the task wakes the push loop): a batch of changes
        never waits for it."""
        if self.summary is None:
            return ()
        if self._summary_ready is not None:
            ready, self._summary_ready = self._summary_ready, None
            return ready
        if self._summary_due() <= 0 and (self._summary_task is None or self._summary_task.done()):
            self._summary_sent = asyncio.get_running_loop().time()
            self._summary_task = asyncio.create_task(self._build_summary())
        return ()

    def _summary_due(self) -> float:
        """Seconds until the next summary is due (≤ 0: now)."""
        return self._summary_sent + self.summary_every_s - asyncio.get_running_loop().time()

    def _idle_s(self) -> float:
        """How long the push loop may sleep with nothing logged."""
        building = self._summary_task is not None and not self._summary_task.done()
        if self.summary is None or building:  # a summary being built wakes the loop when ready
            return PUSH_IDLE_S
        return max(0.01, min(PUSH_IDLE_S, self._summary_due()))

    async def _build_summary(self) -> None:
        assert self.summary is not None
        try:
            self._summary_ready = tuple(await self.summary())
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a summary is best effort; tried again when due
            log.warning("summary_failed", link=self.push_health.name, error=str(e))
            return
        self.wake_push.set()

    def _applied(self) -> None:
        if self.applied is not None:
            self.applied()

    @property
    def parent(self) -> str:
        assert self.cfg.parent is not None
        return self.cfg.parent.id

    def _resync_event(self, channel: str, err: SyncdError) -> None:
        self.resyncs.append({"at": time.time(), "channel": channel, "epoch": err.epoch, "reason": err.reason})
        log.warning("must_resync", link=self.cfg.node.id + "->" + self.parent, channel=channel, epoch=err.epoch,
                    reason=err.reason)

    async def hello(self, channel: str = "push") -> HelloReply:
        """Say hello (SPEC §3, §8): adopt the parent's link epoch — starting a resync when it
        is a new one, or when this node finds it was rewound (HC-7) — and return the reply."""
        async with self._hello_lock:  # the two loops never race through an epoch change
            forced: int | None = None  # the epoch a MUST_RESYNC named
            rewound = False
            for _ in range(4):
                reply = await self._hello_once(0 if rewound and forced is None else forced, channel)
                if isinstance(reply, SyncdError):
                    forced = reply.epoch or 0
                    continue
                async with self.pool.acquire() as conn:
                    st = await linkstate.load(conn, self.parent)
                    parent_new = st.peer_incarnation not in (None, reply.incarnation)
                    if reply.epoch != st.epoch or parent_new or rewound:
                        # first contact (or an upgrade): just take the epoch; anything else resyncs
                        full = rewound or forced is not None or parent_new or st.epoch != 0
                        await adopt_epoch(conn, self.parent, reply.epoch, reply.incarnation, reply.push_cursor,
                                          full=full, rewound=rewound, force=rewound)
                    elif not rewound and await self._rewound(conn, reply):
                        rewound = True  # hello again without an epoch: the parent starts a new one
                        log.warning("rewind_detected", node=self.cfg.node.id, parent=self.parent,
                                    push_cursor=reply.push_cursor)
                        continue
                    st = await linkstate.load(conn, self.parent)
                self.epoch, self.upward_pending = st.epoch, st.upward
                return reply
            raise SyncdError("INTERNAL", f"hello to {self.parent}: the link epoch did not settle")

    async def _hello_once(self, epoch: int | None, channel: str) -> HelloReply | SyncdError:
        from syncd.node import now_us, table_decls

        async with self.pool.acquire() as conn:
            pull = await conn.fetchval(
                "SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'", self.parent) or 0
            st = await linkstate.load(conn, self.parent)
        if epoch:  # hello again after MUST_RESYNC: this node resyncs, its old cursor is moot (SPEC R8.3)
            pull = 0
        sent = now_us()
        try:
            reply = await self.link.hello(Hello(
                versions=self.versions, node=self.cfg.node.id, instance=self.instance,
                incarnation=self.incarnation, epoch=st.epoch if epoch is None else epoch, clock=sent,
                pull_cursor=pull, pull_hash=st.hash_at(pull), tables=table_decls(self.ctx.schema)))
        except SyncdError as err:
            if err.code != "MUST_RESYNC":
                raise
            self._resync_event(f"{channel} hello", err)
            return err
        if reply.clock is not None:
            self.clock_offset_ms = (reply.clock - (sent + now_us()) // 2) // 1000
        check_tables(table_decls(self.ctx.schema), reply.tables)  # SCHEMA_INCOMPATIBLE by name (R3.4)
        return reply

    async def _rewound(self, conn: asyncpg.Connection, reply: HelloReply) -> bool:
        """This node's log no longer holds what the parent acknowledged (SPEC R8.4): a restore
        or VM snapshot rewound it.  Unverifiable (no hash, entry truncated) counts as not."""
        pc = reply.push_cursor
        if pc == 0:
            return False
        node = await conn.fetchrow("SELECT head, log_first FROM syncd.node")
        if pc > node["head"]:
            return True
        if reply.push_hash is None or pc < node["log_first"]:
            return False
        behind = self.ctx.topo.behind(self.cfg.node.id, self.parent)
        return await linkstate.hash_of_own_change(conn, pc, behind, self.ctx.topo,
                                                  not_from=self.parent) != reply.push_hash

    async def _start_push(self) -> None:
        """After hello: where pushing starts (SPEC R7.1, R8.5)."""
        try:
            await self.settle_push()  # the stored cursor and acked_max are read below
        except Exception as e:  # noqa: BLE001 — it failed with the link; the parent's cursor rules
            log.warning("push_save_failed", link=self.push_health.name, error=str(e))
        reply = await self.hello("push")
        self._push_epoch = self.epoch
        self.push_acked = reply.push_cursor
        async with self.pool.acquire() as conn:
            scanned = await conn.fetchval(
                "SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'push'", self.parent) or 0
            st = await linkstate.load(conn, self.parent)
        # the parent lost pushes it had acknowledged (it was restored): send them again;
        # else skip what was scanned already and held nothing for the parent
        self.push_cursor = reply.push_cursor if reply.push_cursor < st.acked_max else max(reply.push_cursor, scanned)

    async def _heartbeat(self) -> None:
        summary = await self._summary()
        if summary:
            await self.link.push(Push(batch_id=uuid.uuid4(), epoch=self._push_epoch, from_pos=self.push_acked,
                                      to_pos=self.push_acked, changes=(), summary=summary))

    async def _push_once(self) -> bool:
        """Send one batch; True if there may be more to send right away."""
        async with self._hello_lock:  # no epoch change while a batch is in flight
            if self.epoch != self._push_epoch:
                raise SyncdError("HELLO_REQUIRED", f"link epoch moved to {self.epoch}")
            return await self._push_batch()

    def _cut(self, heads: list[asyncpg.Record]) -> list[asyncpg.Record]:
        """The log entries (from ``heads``) of the next push: :func:`syncd.batching.cut_log`."""
        return cut_log(heads, self.cfg.tuning.batch_max_changes, self.cfg.tuning.batch_max_bytes)

    async def _push_batch(self) -> bool:
        if self.upward_pending:  # a resync is loading: its upward snapshot goes first
            await self._heartbeat()
            return False
        limit = self.cfg.tuning.batch_max_changes
        async with self.pool.acquire() as conn:
            # a short tail (live traffic) is read whole in one round trip: it is the batch
            short = min(limit, SHORT_TAIL)
            heads = await conn.fetch(_READ_TAIL, self.push_cursor, short + 1)
            if len(heads) <= short:
                cut = self._cut(heads)
                recs = [r for r in cut if r["received_from"] != self.parent]
            else:  # a backlog: the cut is found on (pos, origin, txn, size) alone; only what goes up is decoded
                heads = await conn.fetch(_READ_HEADS, self.push_cursor, limit * 2)
                cut = self._cut(heads)
                recs = await conn.fetch(
                    f"SELECT {CHANGE_COLUMNS} FROM syncd.log WHERE pos > $1 AND pos <= $2 "
                    "AND received_from IS DISTINCT FROM $3 ORDER BY pos", self.push_cursor, cut[-1]["pos"], self.parent)
            first = heads[0]["first"] if heads else await conn.fetchval("SELECT log_first FROM syncd.node")
        if self.push_cursor < first - 1:
            # retention removed entries not yet pushed (the parent was away longer than max_retention,
            # or lost what it had): say so; the parent answers MUST_RESYNC (SPEC R8.5)
            await self.link.push(Push(batch_id=uuid.uuid4(), epoch=self._push_epoch, from_pos=first - 1,
                                      to_pos=first - 1, changes=()))
            raise SyncdError("INTERNAL", f"{self.parent} accepted a push from {first - 1} beyond its cursor")
        if not heads:
            await self._heartbeat()
            return False
        entries = [stored_from_record(r) for r in recs]
        async with self.pool.acquire() as conn:
            topo = self.ctx.topo = await current_topology(conn, self.ctx.topo, entries)
        behind = topo.behind(self.cfg.node.id, self.parent)
        out = [p for c in entries for p in [project(c, behind, topo)] if p is not None]
        summary = await self._summary()
        if out or summary:
            batch_id = uuid.uuid4()
            # the parent's cursor lands on a change it received, so hello can check its hash (HC-7)
            to_pos = out[-1].pos if out else self.push_acked
            reply = await self.link.push(Push(batch_id=batch_id, epoch=self._push_epoch,
                                              from_pos=self.push_acked, to_pos=to_pos, changes=tuple(out),
                                              summary=summary))
            if out:
                self.metrics.sent.labels(self.parent).inc(len(out))
                self.push_acked = max(reply.acked_pos, self.push_acked)
        self.push_cursor = cut[-1]["pos"]
        self.push_watch.observe(self.push_cursor)
        # the bookkeeping commits while the next batch is read and sent (one at a time, in order)
        await self.settle_push()
        self._push_saving = asyncio.create_task(self._save_push(
            self.push_cursor, self.push_acked, (str(batch_id), out) if out else None))
        return len(heads) > len(cut) or len(heads) == limit * 2

    async def _save_push(self, cursor: int, acked: int, sent: tuple[str, list[StoredChange]] | None) -> None:
        """The batch's audit row, the parent's acknowledgement and the push cursor: one commit.

        Nothing waits for it but the next save and the next hello (:meth:`settle_push`): the
        parent holds the batch already, and what a crash before this commit loses is what
        ``before_push_cursor_save`` loses — the push cursor and ``acked_max`` stay behind, the
        next hello starts from the parent's cursor, and the parent drops what it has (R7.1)."""
        fault_point("before_push_cursor_save")
        async with self.pool.acquire() as conn:
            if sent is None:
                await conn.execute(linkstate.SAVE_PUSH_CURSOR, self.parent, cursor)
            else:
                await audit.record_then(conn, self.parent, "sent", *sent, _SAVE_ACKED, self.parent, cursor, acked)

    async def settle_push(self) -> None:
        """Wait for the last push's bookkeeping to commit; raise what it raised."""
        task = self._push_saving
        if task is not None:
            try:
                await asyncio.shield(task)
            finally:
                if task.done() and self._push_saving is task:
                    self._push_saving = None

    async def push_loop(self, stop: asyncio.Event) -> None:
        """Push whenever the log moved (``wake_push``: set in-process by the sequencer, by
        ``NOTIFY syncd_log`` and by a finished summary), never on a timer; what was logged
        during one push goes in the next, so under load batches fill by themselves.  With
        nothing logged the loop sleeps until the next summary is due (a heartbeat), or
        ``PUSH_IDLE_S`` at most."""
        hello_needed = True
        try:
            while not stop.is_set():
                try:
                    if hello_needed:
                        await self._start_push()
                        self.push_watch.observe(self.push_cursor)
                        hello_needed = False
                    self.wake_push.clear()  # before reading: a wake-up during the push is not lost
                    more = await self._push_once()
                    self.push_health.ok()
                    if not more:
                        await _wait_any(stop, self.wake_push, self._idle_s())
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 — the loop never dies; retry.py classifies
                    hello_needed = True
                    self.metrics.link_error(self.parent, e)
                    if getattr(e, "code", None) == "MUST_RESYNC":  # push-side resync (HC-21): hello adopts it
                        self._resync_event("push", e)  # type: ignore[arg-type]
                        continue
                    if _epoch_moved(e):
                        continue
                    await _wait_any(stop, None, self.push_health.error(e))
        finally:
            if self._summary_task is not None:
                self._summary_task.cancel()
            if self._push_saving is not None:  # a stopping node still stores what was acknowledged
                await asyncio.gather(self._push_saving, return_exceptions=True)

    async def _retry_parked_if_any(self) -> None:
        """Parked changes also get a try when the link is idle (their target may have come by
        a snapshot, or the tree may be known now)."""
        from syncd.store.sequencer import lock_applying

        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM syncd.parked)"):
                return
            async with conn.transaction():
                await lock_applying(conn)
                await retry_parked(conn, self.ctx)
        self._applied()

    async def _pull_once(self) -> None:
        from syncd.node import now_us

        if self.epoch != self._pull_epoch:  # the push loop adopted a new epoch: resync first
            raise SyncdError("HELLO_REQUIRED", f"link epoch moved to {self.epoch}")
        wait_ms = int(self.cfg.tuning.pull_wait_s * 1000)
        reply = await self.link.pull(PullRequest(after=self.pull_cursor, epoch=self._pull_epoch,
                                                 limit=self.cfg.tuning.batch_max_changes, wait_ms=wait_ms))
        self.pull_watch.observe(self.pull_cursor, reply.head)
        if reply.last_pos <= self.pull_cursor:
            await self._retry_parked_if_any()
        if reply.last_pos > self.pull_cursor:
            async with self._hello_lock, self.pool.acquire() as conn:
                if self.epoch != self._pull_epoch:  # the link resyncs: this reply is of the old epoch
                    raise SyncdError("HELLO_REQUIRED", f"link epoch moved to {self.epoch}")

                async def record(conn: asyncpg.Connection) -> None:  # in the batch's transaction
                    await linkstate.received(conn, self.parent, f"pull ({self.pull_cursor}, {reply.last_pos}]",
                                             reply.changes, reply.last_pos)

                started = time.perf_counter()
                res = await apply_batch(conn, self.ctx, self.parent, "pull", "from_parent",
                                        list(reply.changes), reply.last_pos, now_us(), also=record)
                self.metrics.batch_applied(self.parent, "pull", res, time.perf_counter() - started)
                if res.queued:
                    self._applied()  # relay what waits in the queue to the children without waiting for a timer
            fault_point("after_pull_apply")
            self.pull_cursor = res.cursor
            self.pull_watch.observe(self.pull_cursor, reply.head)

    async def bootstrap(self) -> None:
        """Load (or resume) a snapshot of everything this node is entitled to, then pull from p₀."""
        from syncd.node import now_us
        from syncd.store.sequencer import lock_applying
        from syncd.store.snapshot import Progress, clear_progress, progress

        async with self.pool.acquire() as conn:
            done = await progress(conn, self.parent)
        position = next((p.position for p in done.values()), None)
        epoch = self.epoch
        resumed = sum(p.rows for p in done.values())  # loaded by an earlier, interrupted run
        state = self.snapshot_state = {"state": "loading", "tables": {n: p.rows for n, p in done.items()},
                                       "position": position, "resumed_rows": resumed, "chunks": 0}
        for t in self.ctx.schema.tables:
            p = done.get(t.name) or Progress(t.name, position or 0, None, 0, False)
            ahead: asyncio.Future[SnapshotChunk] | None = None  # the next chunk, asked for while one merges
            try:
                while not p.done:
                    chunk = await (ahead or self._chunk(t.name, p.after_id, position))
                    ahead = None
                    if self.epoch != epoch:  # a new epoch began meanwhile: start over (hello again)
                        raise SyncdError("HELLO_REQUIRED", f"link epoch moved to {self.epoch} during a snapshot")
                    position = chunk.position
                    if not chunk.done:  # the parent reads and sends the next chunk while this one merges
                        ahead = self._chunk(t.name, chunk.next_after_id, position)
                    p = await self._merge_chunk(t.name, p, chunk, position)
                    state["tables"][t.name] = p.rows
                    state["position"] = position
                    state["chunks"] += 1
            finally:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
            log.info("snapshot_table_done", link=self.pull_health.name, table=t.name, rows=p.rows)
        async with self.pool.acquire() as conn, conn.transaction():
            await lock_applying(conn)
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
            if (await linkstate.load(conn, self.parent, for_update=True)).upward:
                # a resync: now that the parent's rows have merged, send this node's share up
                await queue_upward_snapshot(conn, self.ctx.schema, self.ctx.topo, self.cfg.node.id,
                                            self.ctx.id_hash_key)
                await conn.execute("UPDATE syncd.links SET upward = false WHERE peer = $1", self.parent)
            await conn.execute("NOTIFY syncd_log")  # the node re-reads its tree (committees came by snapshot)
        self.upward_pending = False
        self._applied()  # parked retries and the upward snapshot wait in syncd.pending
        self.wake_push.set()
        self.pull_cursor = position or 0
        self.snapshot_state = {"state": "done", "position": position, "at_us": now_us(), "resumed_rows": resumed,
                               "chunks": state["chunks"]}

    def _chunk(self, table: str, after_id: uuid.UUID | None, position: int | None) -> asyncio.Future[SnapshotChunk]:
        return asyncio.ensure_future(self.link.snapshot(
            SnapshotRequest(table, after_id, self.cfg.tuning.batch_max_changes, position)))

    async def _merge_chunk(self, table: str, p: Progress, chunk: SnapshotChunk, position: int) -> Progress:
        """Merge one snapshot chunk and its progress in one transaction; the new progress."""
        from syncd.store.sequencer import lock_applying
        from syncd.store.snapshot import Progress, merge_chunk, save_progress

        async with self.pool.acquire() as conn, conn.transaction():
            await lock_applying(conn)
            await merge_chunk(conn, self.ctx, self.parent, table, chunk.rows)
            await audit.record_rows(conn, self.parent, "received",
                                    audit.snapshot_batch(table, p.after_id, chunk.next_after_id), table, chunk.rows)
            # copies the parent no longer has were deleted there (HC-21)
            await purge_stale_copies(conn, self.ctx.schema, self.ctx.topo, self.cfg.node.id, table,
                                     p.after_id, chunk.next_after_id, chunk.rows)
            fault_point("mid_snapshot_chunk")  # rows merged, progress not yet committed
            fault_point("after_copy")
            p = Progress(table, position, chunk.next_after_id or p.after_id, p.rows + len(chunk.rows), chunk.done)
            await save_progress(conn, self.parent, p)
        return p

    async def _needs_snapshot(self) -> bool:
        from syncd.store.snapshot import loading

        async with self.pool.acquire() as conn:
            return await loading(conn, self.parent)

    async def pull_loop(self, stop: asyncio.Event) -> None:
        hello_needed = True
        while not stop.is_set():
            try:
                if hello_needed:
                    await self.hello("pull")
                    self._pull_epoch = self.epoch
                    if await self._needs_snapshot():
                        await self.bootstrap()
                        self.pull_health.ok()
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
                self.metrics.link_error(self.parent, e)
                if getattr(e, "code", None) == "MUST_RESYNC":  # an expected event, not a link failure
                    self._resync_event("pull", e)  # type: ignore[arg-type]
                    if e.epoch == self.epoch:  # type: ignore[attr-defined]
                        await self._forget_pull_cursor()  # pull side only: the parent resynchronised
                    continue  # else hello adopts the new epoch and resyncs both ways (SPEC R8.7)
                if _epoch_moved(e):
                    continue
                await _wait_any(stop, None, self.pull_health.error(e))

    async def _forget_pull_cursor(self) -> None:
        """Drop the pull cursor so the next hello resyncs by snapshot (merging, HC-22)."""
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'", self.parent)


def _epoch_moved(e: BaseException) -> bool:
    """This node's own signal that the other loop adopted a new epoch: say hello again now."""
    return isinstance(e, SyncdError) and e.code == "HELLO_REQUIRED" and "epoch moved" in e.reason


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    waits = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


__all__ = ["ChildLinks", "PROTOCOL_VERSION"]
