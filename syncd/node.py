"""One node = its store, its sequencer, its server (for children) and its links (to the parent).

A :class:`Node` holds no global state, so tests and the demo run many nodes in one
process, each on its own database and loopback port.  The parent side of the
protocol (:class:`ParentService`) answers hello, push and pull for the configured
children; the child side lives in :mod:`syncd.peer`.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import asyncpg
import structlog

from syncd.batching import cut_log, entry_size_sql
from syncd.config import Config
from syncd.errors import SyncdError
from syncd.proto.validate import check_tables, push_problems, schema_columns
from syncd.store import audit
from syncd.store import epochs
from syncd.store import opaque
from syncd.store import links as linkstate
from syncd.store.resync import UPWARD
from syncd.retry import LoopHealth, run_every
from syncd.store.purge import purge_narrowed
from syncd.store.retention import retention_loop
from syncd.faults import fault_point
from syncd.merge import clock_check
from syncd.proto.change import StoredChange
from syncd.proto.messages import (PROTOCOL_VERSION, SUPPORTED_VERSIONS, Hello, HelloReply, PullReply,
                                  PullRequest, Push, PushReply, Quarantined, SnapshotChunk, SnapshotRequest,
                                  StoredRow, TableDecl, VerifyReply, VerifyRequest)
from syncd.routing import next_hops, project
from syncd.schema.declarations import SCHEMA, Schema
from syncd.store.apply import ApplyContext, apply_batch, current_topology
from syncd.store.fastpath import prepare_session
from syncd.store.log import CHANGE_COLUMNS, stored_from_record
from syncd.stall import CursorWatch, apply_stall, child_link_stall, parent_link_stall
from syncd.status import Metrics, add_routes
from syncd.store.sequencer import Sequencer, TickResult
from syncd.topology import Topology, TopologyError

log = structlog.get_logger("syncd.node")

INSTANCE_GRACE_S = 5.0
SNAPSHOT_IDLE_S = 30.0  # a snapshot slot is freed after this long without a request


def now_us() -> int:
    return time.time_ns() // 1000


def wire_key_id(child: str, key_id: str) -> str:
    """The key id on the wire names the link's child too (``430102.k1``), so a parent
    finds the right secret among all its children's (SPEC R11.1)."""
    return f"{child}.{key_id}"


def table_decls(schema: Schema) -> dict[str, TableDecl]:
    return {t.name: TableDecl(t.version, t.shipped_names) for t in schema.tables}


async def load_topology(conn: asyncpg.Connection, cfg: Config) -> Topology:
    """The tree from the replicated committees table, completed with this node's own links.

    Until the province's committees rows arrive, the config's parent and children
    are enough to route this node's own traffic.
    """
    rows = {r["code"]: dict(r) for r in await conn.fetch(
        "SELECT code, name, level, parent_code, aliases FROM committees")}
    me = cfg.node.id
    known = set(rows) | {a for r in rows.values() for a in (r["aliases"] or [])}

    def add(code: str, parent: str | None, level: str) -> None:
        if code not in known:
            rows[code] = {"code": code, "name": code, "level": level, "parent_code": parent, "aliases": []}
            known.add(code)

    if cfg.parent is not None:
        add(cfg.parent.id, None, "province")
    # until the province's committees rows arrive, guess the level from the links
    add(me, cfg.parent.id if cfg.parent else None,
        "province" if cfg.parent is None else ("city" if cfg.children else "county"))
    for c in cfg.children:
        add(c.id, me, "county")
    return Topology.from_rows(list(rows.values()))


#: a child's pull reads its own outbox and the log entries it names, never the rest of the
#: log (HC-37: a city's pull at the root costs what its scope holds, not the root log's size).
#: The batch is cut in the outbox before the join: joined first, then sorted and cut, the
#: planner read every entry of the child's backlog for each batch once ANALYZE had found the
#: outbox drained (``syncd.store.lookup``): 20,000 log rows for a 2,000-entry batch
OUTBOX_READ = (f"SELECT {', '.join('l.' + c for c in CHANGE_COLUMNS.split(', '))}, {entry_size_sql('l')} "
               "FROM (SELECT pos FROM syncd.outbox WHERE peer = $1 AND pos > $2 ORDER BY pos LIMIT $3) AS o "
               "JOIN syncd.log l ON l.pos = o.pos ORDER BY o.pos")
#: what waits in a child's outbox after $2: how many, the newest position, and when the oldest
#: was logged (``logged_at`` grows with the position); one log row read, not the whole backlog
OUTBOX_BACKLOG = ("SELECT count(*) AS n, max(o.pos) AS head, "
                  "(SELECT l.logged_at FROM syncd.log l WHERE l.pos = min(o.pos)) AS oldest "
                  "FROM syncd.outbox o WHERE o.peer = $1 AND o.pos > $2")


@dataclass
class ReadAhead:
    """A snapshot chunk being read before its child asks for it (:meth:`ParentService._read_ahead`)."""

    key: tuple[str, uuid.UUID, int]  # table, after_id, limit
    task: asyncio.Future[tuple[list[StoredRow], uuid.UUID | None]]

    async def take(self, key: tuple[str, uuid.UUID | None, int] | None
                   ) -> tuple[list[StoredRow], uuid.UUID | None] | None:
        """The rows if ``key`` is what was read ahead and the read went well, else None (the
        read is cancelled or its failure dropped: the caller reads again)."""
        if key != self.key:
            await self.drop()
            return None
        try:
            return await self.task
        except Exception:  # noqa: BLE001 - read again in the request, which reports its own error
            return None

    async def drop(self) -> None:
        """Cancel the read and wait for it to end."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class ParentService:
    """The parent side of the protocol for one node (implements ``ParentHandler``)."""

    cfg: Config
    pool: asyncpg.Pool
    ctx: ApplyContext
    incarnation: uuid.UUID
    schema: Schema = SCHEMA
    log_seq: int = 0  # bumped whenever the log moved (any child's outbox)
    _log_waiters: dict[str, set[asyncio.Future[None]]] = field(default_factory=dict)  # child -> long polls
    instances: dict[str, tuple[uuid.UUID, float]] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)  # child -> wall time of last good request
    pull_after: dict[str, int] = field(default_factory=dict)  # child -> cursor it last pulled from
    snapshots: dict[str, float] = field(default_factory=dict)  # child -> last snapshot request (monotonic)
    #: child -> the next chunk of its snapshot, read while the one served last is on its way
    #: (:meth:`_read_ahead`)
    read_ahead: dict[str, "ReadAhead"] = field(default_factory=dict)
    clock_offsets: dict[str, int] = field(default_factory=dict)  # child -> its clock minus ours at hello, ms
    versions: tuple[int, ...] = SUPPORTED_VERSIONS  # protocol versions spoken (SPEC R3.1)
    pull_watch: dict[str, CursorWatch] = field(default_factory=dict)  # child -> its pull cursor (syncd.stall)
    served: dict[str, int] = field(default_factory=dict)  # child -> served position as last stored
    #: called after a push's apply queued changes in syncd.pending (``ApplyResult.queued``) for
    #: the sequencer, which this wakes at once (the node wires it to ``Sequencer.wake``)
    applied: Callable[[], None] | None = None
    metrics: Metrics = field(default_factory=Metrics)  # the node's (status.Metrics)

    #: child -> columns its pushes may carry: ours plus the additive columns it declared at
    #: hello (SPEC R3.4, HC-13); absent until the child's first hello since this start
    child_columns: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)

    @functools.cached_property
    def columns(self) -> dict[str, frozenset[str]]:
        return schema_columns(self.schema)

    def _child(self, child: str) -> None:
        if self.cfg.child(child) is None:
            raise SyncdError("NOT_A_CHILD", f"{child} is not a configured child of {self.cfg.node.id}")

    async def on_hello(self, child: str, msg: Hello) -> HelloReply:
        self._child(child)
        if msg.node != child:
            raise SyncdError("NOT_A_CHILD", f"hello names node {msg.node} but is signed by {child}")
        common = set(msg.versions) & set(self.versions)
        if not common:
            raise SyncdError("UNSUPPORTED_VERSION", f"child speaks {list(msg.versions)}, "
                             f"this node speaks {list(self.versions)}")
        t = self.cfg.tuning
        offset = msg.clock - now_us()
        self.clock_offsets[child] = offset // 1000  # shown in status, refused or not (HC-23)
        if clock_check(msg.clock, now_us(), t.clock_soft_ms * 1000, t.clock_hard_ms * 1000) == "refuse" or \
                -offset > t.clock_hard_ms * 1000:
            raise SyncdError("CLOCK_SKEW", f"{child}'s clock is {offset // 1000} ms off {self.cfg.node.id}'s "
                             f"(bound {t.clock_hard_ms} ms)", details={"offset_s": offset // 1_000_000})
        columns = check_tables(table_decls(self.schema), msg.tables)  # SCHEMA_INCOMPATIBLE by name
        seen = self.instances.get(child)
        ttl = self.cfg.tuning.pull_wait_s + INSTANCE_GRACE_S  # a live daemon polls at least this often
        if seen and seen[0] != msg.instance and time.monotonic() - seen[1] < ttl:
            raise SyncdError("DUPLICATE_INSTANCE",
                             f"another live daemon of {child} (instance {seen[0]}) is connected")
        self.instances[child] = (msg.instance, time.monotonic())
        self.last_seen[child] = time.time()
        self.child_columns[child] = columns
        async with self.pool.acquire() as conn:
            try:
                st, pos = await epochs.on_hello(conn, self.cfg.node.id, self.ctx.topo, child, msg)
            except SyncdError:
                self._resyncing(child)
                raise
        return HelloReply(version=max(common), node=self.cfg.node.id, incarnation=self.incarnation,
                          epoch=st.epoch, clock=now_us(), push_cursor=pos, push_hash=st.hash_at(pos),
                          tables=table_decls(self.schema))

    async def _store_served(self, conn: asyncpg.Connection, child: str, pos: int) -> None:
        """Store (and remember) the position ``child`` was served from: retention keeps the log
        above it for the child (HC-21)."""
        await conn.execute(
            "INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, 'served', $2) ON CONFLICT (peer, kind) "
            "DO UPDATE SET pos = excluded.pos, updated_at = now()", child, pos)
        self.served[child] = pos

    def _resyncing(self, child: str) -> None:
        """A MUST_RESYNC went to ``child``: its served position is no longer stored, and a
        long poll of its other channel must wake to see the new epoch."""
        self.served.pop(child, None)
        self.log_moved()

    def _touch(self, child: str) -> None:
        self.last_seen[child] = time.time()
        seen = self.instances.get(child)
        if seen:
            self.instances[child] = (seen[0], time.monotonic())

    async def on_push(self, child: str, msg: Push) -> PushReply:
        self._child(child)
        self._touch(child)
        # signed but invalid content is refused whole (R5.4-R5.6); a future ts only
        # quarantines its own change, in apply (HC-23)
        allowed = self.child_columns.get(child)
        problems = [p for p in push_problems(msg, allowed or self.columns, now_us(),
                                             self.cfg.tuning.clock_hard_ms * 1000) if p.code != "FUTURE_TS"]
        if problems and allowed is None and any(p.code == "UNKNOWN_COLUMN" for p in problems):
            # this daemon restarted since the child's hello: it may be a newer build's column
            raise SyncdError("HELLO_REQUIRED", f"{child} pushes columns not declared here; say hello again")
        if problems:
            raise problems[0].error()
        async with self.pool.acquire() as conn:
            if msg.epoch:
                try:
                    await epochs.on_push(conn, self.cfg.node.id, child, msg)
                except SyncdError:
                    self._resyncing(child)
                    raise
            if msg.summary:
                await self._store_summaries(conn, child, msg.summary)

            async def record(conn: asyncpg.Connection) -> None:  # in the batch's transaction
                await linkstate.received(conn, child, str(msg.batch_id), msg.changes, msg.to_pos)

            started = time.perf_counter()
            res = await apply_batch(conn, self.ctx, child, "applied", "from_child", list(msg.changes),
                                    msg.to_pos, now_us(), also=record)
            self.metrics.batch_applied(child, "push", res, time.perf_counter() - started)
            if res.queued and self.applied is not None:
                self.applied()  # relay what waits in the queue without waiting for the sequencer's timer
            fault_point("after_commit_before_response")
        return PushReply(acked_pos=res.cursor, applied=res.applied,
                         quarantined=tuple(Quarantined(pos, code) for pos, code in res.quarantined))

    async def _store_summaries(self, conn: asyncpg.Connection, child: str, summaries: Any) -> None:
        """Keep the compact status of nodes in the child's subtree; drop any other (HC-30)."""
        import json
        from datetime import datetime

        topo = self.ctx.topo
        for s in summaries:
            node = str(s.get("node", ""))
            try:
                inside = topo.in_subtree(node, child)
            except Exception:  # noqa: BLE001 - an unknown code is outside too
                inside = False
            if not inside:
                log.warning("summary_refused", child=child, node=node, reason="outside the child's subtree")
                continue
            try:
                reported = datetime.fromisoformat(str(s.get("reported_at")).replace("Z", "+00:00"))
            except ValueError:
                continue
            await conn.execute(
                "INSERT INTO syncd.subtree_status (node, via, summary, reported_at, received_at) "
                "VALUES ($1, $2, $3, $4, now()) ON CONFLICT (node) DO UPDATE SET via = excluded.via, "
                "summary = excluded.summary, reported_at = excluded.reported_at, received_at = now() "
                "WHERE syncd.subtree_status.reported_at <= excluded.reported_at",
                node, child, json.dumps(dict(s), ensure_ascii=False, default=str), reported)

    async def link_status(self, conn: asyncpg.Connection) -> list[dict[str, Any]]:
        """One entry per configured child (``direction: child``)."""
        from syncd.status import child_link_view

        out = []
        for c in self.cfg.children:
            after = self.pull_after.get(c.id)
            row = await conn.fetchrow(OUTBOX_BACKLOG, c.id, after or 0)
            lag_s = round(time.time() - row["oldest"].timestamp(), 3) if row["oldest"] else 0.0
            view = child_link_view(self, c.id, int(row["n"]), lag_s)
            view["epoch"] = await conn.fetchval("SELECT epoch FROM syncd.links WHERE peer = $1", c.id)
            out.append(apply_stall(view, child_link_stall(
                self.pull_watch.get(c.id), c.id, int(row["n"]), row["head"], lag_s, self.cfg.tuning.stall_after_s)))
        return out

    async def _read_outbox(self, conn: asyncpg.Connection, child: str, after: int,
                           limit: int) -> list[StoredChange]:
        """The child's next changes: at most ``limit`` and about ``batch_max_bytes``, cut at an
        origin-transaction boundary (:func:`syncd.batching.cut_log`)."""
        recs = await conn.fetch(OUTBOX_READ, child, after, limit + 1)
        recs = cut_log(recs, limit, self.cfg.tuning.batch_max_bytes)
        return [stored_from_record(r) for r in recs]

    async def on_pull(self, child: str, msg: PullRequest) -> PullReply:
        self._child(child)
        self._touch(child)
        async with self.pool.acquire() as conn:
            try:
                epoch = await epochs.on_pull(conn, self.cfg.node.id, child, msg)
            except SyncdError:
                self._resyncing(child)
                raise
            if self.served.get(child) != msg.after:  # what retention keeps for the child (HC-21)
                await self._store_served(conn, child, msg.after)
        self.pull_after[child] = msg.after
        self.pull_watch.setdefault(child, CursorWatch()).observe(msg.after)
        limit = min(msg.limit or self.cfg.tuning.batch_max_changes, self.cfg.tuning.batch_max_changes)
        deadline = time.monotonic() + msg.wait_ms / 1000
        while True:
            seq = self.log_seq
            async with self.pool.acquire() as conn:
                changes = await self._read_outbox(conn, child, msg.after, limit)
                head = await conn.fetchval("SELECT coalesce(max(pos), 0) FROM syncd.outbox WHERE peer = $1", child)
                # retention may have removed entries between the check above and this read, or
                # the link's epoch moved while the poll waited (woken by log_moved)
                try:
                    await epochs.on_pull(conn, self.cfg.node.id, child, msg)
                except SyncdError:
                    self.served.pop(child, None)
                    raise
            if changes or time.monotonic() >= deadline:
                break
            await self.wait_log(seq, deadline - time.monotonic(), child)
        behind = self.ctx.topo.behind(self.cfg.node.id, child)
        out = [p for p in (project(c, behind, self.ctx.topo) for c in changes) if p is not None]
        last = changes[-1].pos if changes else msg.after
        if out:
            async with self.pool.acquire() as conn:
                await audit.record(conn, child, "sent", f"pull ({msg.after}, {last}]", out)
            self.metrics.sent.labels(child).inc(len(out))
        return PullReply(changes=tuple(out), last_pos=last, head=max(head, last), epoch=epoch,
                         more=last < head)

    def log_moved(self, children: Any = None) -> None:
        """The log grew: wake the long polls of ``children`` (those whose outboxes got entries),
        or of every child (``None``: not known which, or a link's epoch moved)."""
        self.log_seq += 1
        for child in list(self._log_waiters) if children is None else children:
            for fut in self._log_waiters.pop(child, ()):
                if not fut.done():
                    fut.set_result(None)

    async def wait_log(self, seq: int, timeout: float, child: str = "") -> None:
        """Wait until the log moved past ``seq`` for ``child`` (no wake-up is lost between
        check and wait: any move bumps ``log_seq``)."""
        if self.log_seq != seq or timeout <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._log_waiters.setdefault(child, set())
        waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiters.discard(fut)
            if not waiters and self._log_waiters.get(child) is waiters:
                del self._log_waiters[child]

    async def on_snapshot(self, child: str, msg: SnapshotRequest) -> SnapshotChunk:
        """One chunk of a bootstrap/resync snapshot, admission-controlled (HC-22); none is
        started while this node's own snapshot from its parent is unfinished."""
        from syncd.store.snapshot import loading, read_chunk

        self._child(child)
        self._touch(child)
        if msg.table not in self.schema:
            raise SyncdError("UNKNOWN_TABLE", f"table {msg.table!r} is not replicated here")
        now = time.monotonic()
        active = {c for c, at in self.snapshots.items() if now - at < SNAPSHOT_IDLE_S}
        if child not in active and len(active) >= self.cfg.tuning.snapshot_slots:
            raise SyncdError("SNAPSHOT_BUSY", f"{len(active)} snapshots are being served; "
                             f"{child} will be served when one finishes")
        limit = max(1, min(msg.limit, self.cfg.tuning.batch_max_changes))
        # taken before a connection is: a request holding one while its read-ahead waits for one
        # could take the pool's last
        ahead = self.read_ahead.pop(child, None)
        wanted = None if msg.position is None else (msg.table, msg.after_id, limit)  # a new snapshot reads afresh
        got = await ahead.take(wanted) if ahead is not None else None
        async with self.pool.acquire() as conn:
            if msg.position is None and self.cfg.parent is not None and await loading(conn, self.cfg.parent.id):
                # a snapshot of a node still loading its own would miss rows, and the child would
                # load a second one when this node's bootstrap ends (its children resync then)
                raise SyncdError("SNAPSHOT_BUSY", f"{self.cfg.node.id} is still loading its own snapshot from "
                                 f"{self.cfg.parent.id}; {child} will be served once it has")
            self.snapshots[child] = now
            if msg.position is None:  # a new snapshot covers whatever was truncated before it
                await conn.execute("DELETE FROM syncd.cursors WHERE peer = $1 AND kind = 'truncated'", child)
            position = msg.position if msg.position is not None else await conn.fetchval(
                "SELECT head FROM syncd.node")
            if msg.position is None:  # retention keeps the log from p0 on for the child's first pull
                await self._store_served(conn, child, position)
            rows, nxt = got or await read_chunk(conn, self.schema, self.ctx.topo, self.cfg.node.id, child,
                                                msg.table, msg.after_id, limit, self.cfg.tuning.batch_max_bytes)
            self._read_ahead(child, msg.table, nxt, limit)
            await audit.record_rows(conn, child, "sent", audit.snapshot_batch(msg.table, msg.after_id, nxt),
                                    msg.table, rows)
        done = nxt is None
        if done and msg.table == self.schema.tables[-1].name:
            self.snapshots.pop(child, None)  # the last table: free the slot
        return SnapshotChunk(msg.table, position, tuple(rows), nxt, done)

    def _read_ahead(self, child: str, table: str, after_id: uuid.UUID | None, limit: int) -> None:
        """Read ``child``'s next snapshot chunk (``after_id`` on, None: the table is done) now,
        on a connection of its own, for :meth:`on_snapshot` to serve when it is asked for.

        A child asks for chunk n + 1 as soon as chunk n has come, and merges n meanwhile; reading
        n + 1 here while n is sent and decoded takes the parent's read off that path.  A chunk
        read a moment before it is asked for is as good as one read when asked: either holds the
        rows as they were at some time after the snapshot's position, and the pull from that
        position replays what came since (SPEC R9).  A read-ahead that is not what comes next
        (the child retried, moved on or went away) is dropped, as are all at stop."""
        from syncd.store.snapshot import read_chunk

        if after_id is None:
            return

        async def read() -> tuple[list[StoredRow], uuid.UUID | None]:
            async with self.pool.acquire() as c:
                return await read_chunk(c, self.schema, self.ctx.topo, self.cfg.node.id, child, table, after_id,
                                        limit, self.cfg.tuning.batch_max_bytes)
        replaced = self.read_ahead.get(child)
        if replaced is not None:  # two requests of one child at once: the later one's read stays
            replaced.task.cancel()
        self.read_ahead[child] = ReadAhead((table, after_id, limit), asyncio.ensure_future(read()))

    async def drop_read_aheads(self) -> None:
        """Cancel every read-ahead (the node stops) and wait for them to end."""
        aheads, self.read_ahead = list(self.read_ahead.values()), {}
        for a in aheads:
            await a.drop()

    async def on_verify(self, child: str, msg: VerifyRequest) -> VerifyReply:
        """Range checksums of what this link shares, at the child's outbox head (HC-33)."""
        from syncd.store.verify import serve_verify

        self._child(child)
        self._touch(child)
        return await serve_verify(self.pool, self.schema, self.ctx.topo, self.cfg.node.id, child, msg,
                                  self.cfg.node.id_hash_key)


def http_parent_link(cfg: Config, version: int = PROTOCOL_VERSION, metrics: Metrics | None = None) -> Any:
    """The signed HTTP link to ``cfg``'s parent (the daemon's loops and ``syncd verify`` use it);
    with ``metrics``, its bytes counted under the parent's id."""
    from syncd.proto.signing import Keyring
    from syncd.transport.http import HttpParentLink

    assert cfg.parent is not None
    ring = Keyring()
    for s in cfg.parent.secrets:  # a link's keys are filed under its child on both sides
        ring.add(cfg.node.id, wire_key_id(cfg.node.id, s.key_id), s.secret)
    parent = cfg.parent.id
    on_bytes = None if metrics is None else (
        lambda _url, kind, direction, n: metrics.count_bytes(parent, kind, direction, n))
    return HttpParentLink(cfg.parent.url, cfg.node.id, ring, tls_verify=cfg.parent.tls_verify,
                          window_s=cfg.tuning.signature_window_s, version=version, on_bytes=on_bytes)


def make_fanout(cfg: Config, topo_ref: "TopologyRef", ctx_ref: Any) -> Any:
    """The sequencer's outbox rule: which configured children each logged change goes to.

    A change naming a committee this node's topology does not know yet makes it
    re-read the committees table inside the sequencer's transaction first, so no
    change is left out of an outbox for want of a tree (HC-37).
    """
    children = {c.id for c in cfg.children}

    async def fanout(conn: asyncpg.Connection, items: Any) -> list[tuple[str, ...]]:
        changes = [c for c, _ in items]
        topo = await current_topology(conn, topo_ref.topo, changes)
        if topo is not topo_ref.topo:
            topo_ref.topo = topo
            if ctx_ref() is not None:
                ctx_ref().topo = topo
        out: list[tuple[str, ...]] = []
        memo = topo.memo  # the children depend on the table, homes and sender only: a batch repeats a few
        for change, received_from in items:
            if received_from == UPWARD:  # an upward snapshot goes to the parent only
                out.append(())
                continue
            key = ("fanout", change.table, tuple(change.homes.items()), received_from)
            hops = memo.get(key)
            if hops is None:
                try:
                    hops = tuple(h for h in next_hops(change.table, change.homes, cfg.node.id, topo, received_from)
                                 if h in children)
                except TopologyError:
                    log.error("fanout_unknown_node", table=change.table, id=str(change.id))
                    out.append(())
                    continue
                if len(memo) > 100_000:
                    memo.clear()
                memo[key] = hops
            out.append(hops)
        return out

    return fanout


#: Young-generation threshold while a node runs.  A batch makes tens of thousands of
#: short-lived objects; at CPython's default (700) the collector runs every few hundred
#: rows and walks the batch each time, which cost up to 4× in decide() (README, Benchmarks).
#: The count is objects made minus objects freed, so it peaks with the batches alive at once:
#: at 50,000 a 2,000-change batch still set it off once a batch (~50 ms a run, ~1 s of a
#: 20k-row catch-up's ~10 s of Python); at 200,000 it did not run once.  What waits for it is
#: garbage in reference cycles only (everything else is freed at once), so memory stays put
#: (bench: peak RSS during the catch-up and the bootstrap).
GC_GEN0_THRESHOLD = 200_000


def tune_gc(freeze: bool = False) -> None:
    """Collect less often while nodes run; ``freeze`` (``syncd run``, once after start-up)
    also moves the objects made so far out of the collector's sight."""
    if gc.get_threshold()[0] < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    if freeze:
        gc.freeze()


#: Session settings of the daemon's connections, set as each opens (:func:`_open_session`).
#: ``plan_cache_mode``: syncd's statements are prepared once a connection and run thousands of
#: times, and none needs a plan made for its parameters' values (the ones that pick staged rows
#: by a list are written for a generic plan: ``fastpath._PICKED``, tested in
#: ``tests/integration/test_fastpath.py``).  Under PostgreSQL's ``auto`` the relay's and the
#: lookups' statements were planned afresh on every run, their custom plan for a one-row batch
#: looking cheaper than the generic one: with single-row batches (idle traffic, 500 two-hop
#: probes) planning was 0.41 of the city's 1.03 s of statement time and 0.38 of the province's
#: 0.92 s; forced generic, 0.10 and 0.07.
SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


async def _open_session(conn: asyncpg.Connection) -> None:
    """A new pool connection's settings, with ``SET`` rather than as startup parameters (a
    connection pooler in front of PostgreSQL, PgBouncer, refuses startup parameters it does not
    know, and passes a ``SET`` on), and the apply's stage (:func:`fastpath.prepare_session`)."""
    for name, value in SERVER_SETTINGS.items():
        await conn.execute(f"SET {name} = {value}")
    await prepare_session(conn)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released pool connection keeps its session: its settings (:data:`SERVER_SETTINGS`)
    stay, the daemon sets nothing else beyond a transaction (``SET LOCAL``, transaction
    advisory locks, cursors inside transactions) and
    its one LISTEN (``store.listen``) UNLISTENs before release, so asyncpg's default reset
    (``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()``) would be a round trip
    for nothing on every release — 3–4 per push.  asyncpg still rolls back an open transaction."""


@dataclass
class TopologyRef:
    """The node's current topology, swapped when committees change."""

    topo: Topology


def make_sequencer(cfg: Config, topo_ref: TopologyRef, ctx_ref: Any = lambda: None,
                   schema: Schema = SCHEMA) -> Sequencer:
    return Sequencer(me=cfg.node.id, schema=schema, id_hash_key=cfg.node.id_hash_key,
                     batch=cfg.tuning.sequencer_batch, interval_s=cfg.tuning.sequencer_interval_ms / 1000,
                     fanout=make_fanout(cfg, topo_ref, ctx_ref) if cfg.children else None)


__all__ = ["ParentService", "load_topology", "make_sequencer", "TopologyRef", "now_us", "PROTOCOL_VERSION"]


def _resync_view(e: dict[str, Any]) -> dict[str, Any]:
    from syncd.status import iso

    return {**e, "at": iso(e["at"])}


class Node:
    """A running node: pool, sequencer, parent service + HTTP server, child links.

    ``start()`` and ``stop()`` are idempotent; ``stop()`` drains the loops and
    closes the server (SIGTERM in ``syncd run`` calls it).
    """

    def __init__(self, cfg: Config, dsn: str, *, link: Any = None, schema: Schema = SCHEMA,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS):
        self.cfg, self.dsn, self.schema = cfg, dsn, schema
        self.versions = versions  # fewer than SUPPORTED_VERSIONS only to play an older build (tests)
        self._link = link
        self.instance = uuid.uuid4()
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.pool: asyncpg.Pool | None = None
        self.service: ParentService | None = None
        self.links: Any = None
        self.runner: Any = None
        self.port: int | None = None
        self.started_at = time.time()
        self._reloading = False
        self.metrics = Metrics()
        self._reload_task: asyncio.Task[None] | None = None
        t = cfg.tuning
        self.retention_health = LoopHealth(f"{cfg.node.id} retention", t.retry_cap_s, t.failed_probe_s)
        self.scores_health = LoopHealth(f"{cfg.node.id} scores", t.retry_cap_s, t.failed_probe_s)
        self.heartbeat_at = -math.inf  # capture's last probe write for /status, and what it found
        self.heartbeat_problems: list[Any] = []

    async def start(self) -> "Node":
        from syncd.peer import ChildLinks

        tune_gc()
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=8, init=_open_session,
                                              reset=_keep_session)
        try:
            async with self.pool.acquire() as conn:
                node = await conn.fetchrow("SELECT id, incarnation FROM syncd.node")
                if node is None or node["id"] != self.cfg.node.id:
                    raise RuntimeError(f"NODE_NOT_INITIALISED: run syncd init for node {self.cfg.node.id}")
                self.incarnation = node["incarnation"]
                await self._upgrade_columns(conn)
                self.topo_ref = TopologyRef(await load_topology(conn, self.cfg))
                purged = await purge_narrowed(conn, self.schema, self.topo_ref.topo, self.cfg.node.id)
                if purged:
                    log.info("narrowed_reach_purged", node=self.cfg.node.id, cleared=purged)
        except BaseException:
            await self.pool.close()
            raise
        t = self.cfg.tuning
        self.ctx = ApplyContext(self.schema, self.cfg.node.id, self.topo_ref.topo, self.cfg.node.id_hash_key,
                                t.clock_soft_ms * 1000, t.clock_hard_ms * 1000)
        self.sequencer = make_sequencer(self.cfg, self.topo_ref, lambda: self.ctx, self.schema)
        self.sequencer.on_logged = self._logged
        self.ctx.sequencer = self.sequencer  # an apply logs its relayed changes itself when it can
        self.tasks.append(asyncio.create_task(self._listen_loop()))
        self.tasks.append(asyncio.create_task(self.sequencer.run(self.pool, self.stop_event)))
        self.tasks.append(asyncio.create_task(retention_loop(self.pool, self.cfg, self.stop_event,
                                                             self.retention_health)))
        if t.score_refresh_s > 0:
            self.tasks.append(asyncio.create_task(run_every(
                lambda: self.cfg.tuning.score_refresh_s, self._refresh_scores, self.stop_event, self.scores_health,
                at_start=False)))  # a start (and a test tree's) is not held up by a refresh
        self.service = ParentService(self.cfg, self.pool, self.ctx, self.incarnation, self.schema,
                                     versions=self.versions, applied=self.sequencer.wake, metrics=self.metrics)
        await self._serve()
        if self.cfg.parent is not None:
            link = self._link or self._http_link()
            self.links = ChildLinks(self.cfg, self.pool, link, self.ctx, self.incarnation, self.instance,
                                    summary=self.subtree_summaries, versions=self.versions,
                                    applied=self.sequencer.wake, metrics=self.metrics)
            self.tasks.append(asyncio.create_task(self.links.push_loop(self.stop_event)))
            self.tasks.append(asyncio.create_task(self.links.pull_loop(self.stop_event)))
        log.info("node_started", node=self.cfg.node.id, port=self.port)
        return self

    async def _refresh_scores(self) -> None:
        """Recompute the 履职积分 summaries of this committee's members (HC-25): written as
        local changes where their inputs changed, so they are logged and travel up."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            changed = await conn.fetchval("SELECT syncd.refresh_scores()")
        if changed:
            log.info("scores_refreshed", node=self.cfg.node.id, summaries=changed)

    async def _upgrade_columns(self, conn: asyncpg.Connection) -> None:
        """Every declared column must exist in the tables; values held opaque for columns an
        upgrade has just added are written into them (HC-13, :mod:`syncd.store.opaque`)."""
        missing = await opaque.missing_columns(conn, self.schema)
        if missing:
            raise RuntimeError(f"SCHEMA_NOT_MIGRATED: declared columns missing in the database: "
                               f"{', '.join(missing)}; run syncd init with this release first")
        promoted = await opaque.promote(conn, self.schema)
        if promoted:
            log.info("opaque_columns_promoted", node=self.cfg.node.id, rows=promoted)

    async def _listen_loop(self) -> None:
        """Keep a LISTEN syncd_log connection, re-established after a database restart."""
        from syncd.store.listen import Listener

        assert self.pool is not None
        self.listener = Listener(self.pool, "syncd_log", self._on_notify)
        try:
            while not self.stop_event.is_set():
                if await self.listener.ensure():
                    self._on_log()  # catch up on anything logged while not listening
                await asyncio.sleep(1.0)
        finally:
            await self.listener.close()

    def _logged(self, r: TickResult) -> None:
        """This node's sequencer logged up to ``r.head`` (committed): wake the push loop and the
        long polls of the children whose outboxes grew, now; reload the tree only if committees
        changed.  The ``NOTIFY syncd_log`` of the same tick is recognised and skipped."""
        self.metrics.captured.inc(r.versioned)
        if self.service is not None and r.peers:
            self.service.log_moved(r.peers)
        if self.links is not None:
            self.links.wake_push.set()
        if r.committees:
            self._reload_soon()

    def _on_notify(self, _conn: object, pid: int, _channel: str, payload: str) -> None:
        """``NOTIFY syncd_log``: from another process (a second daemon, ``syncd init``), a
        bootstrap (no payload), or this node's own sequencer — a tick :meth:`_logged` handles
        in-process (the notification may come just before or just after it)."""
        if payload.isdigit() and pid in self.sequencer.backends:
            return
        self._on_log()

    def _on_log(self, *_: object) -> None:
        """The log moved, nothing more known: wake every loop and re-read the tree."""
        if self.service is not None:
            self.service.log_moved()
        if self.links is not None:
            self.links.wake_push.set()
        self._reload_soon()

    def _reload_soon(self) -> None:
        if not self._reloading and not self.stop_event.is_set():
            self._reloading = True
            self._reload_task = asyncio.create_task(self._reload_topology())

    async def _reload_topology(self) -> None:
        """Committees may have changed: rebuild the topology (at most one reload at a time)."""
        assert self.pool is not None
        try:
            await asyncio.sleep(0.05)
            self._reloading = False
            async with self.pool.acquire() as conn:
                topo = await load_topology(conn, self.cfg)
        except (asyncpg.PostgresError, OSError):
            return
        if len(topo.nodes) >= len(self.topo_ref.topo.nodes):  # never fall back to a smaller tree
            self.topo_ref.topo = topo
            self.ctx.topo = topo

    def _http_link(self) -> Any:
        return http_parent_link(self.cfg, version=min(max(self.versions), PROTOCOL_VERSION),  # hello: R3.2
                                metrics=self.metrics)

    async def _serve(self) -> None:
        from aiohttp import web

        from syncd.proto.signing import Keyring
        from syncd.transport.http import HttpParentServer
        from syncd.transport.nonces import PgNonceStore

        rings: dict[str, Keyring] = {}
        for c in self.cfg.children:
            rings[c.id] = Keyring()
            for s in c.secrets:
                rings[c.id].add(c.id, wire_key_id(c.id, s.key_id), s.secret)
        assert self.pool is not None and self.service is not None
        server = HttpParentServer(self.service, rings, PgNonceStore(self.pool),
                                  window_s=self.cfg.tuning.signature_window_s, versions=self.versions,
                                  on_bytes=self.metrics.count_bytes)
        self.server = server  # its keyrings are swapped by a SIGHUP reload
        app = server.app
        add_routes(app, self)
        self.runner = server.runner(access_log=None)  # auto_decompress off: signatures cover gzip bytes
        await self.runner.setup()
        host, port = self.cfg.node.listen.rsplit(":", 1)
        site = web.TCPSite(self.runner, host, int(port))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def link_status(self, conn: asyncpg.Connection) -> list[dict[str, Any]]:
        """Every link of this node as ``/status`` shows it: the parent first, then each child."""
        from syncd.status import SEVERITY, parent_link_view

        out: list[dict[str, Any]] = []
        if self.links is not None:
            ln = self.links
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(logged_at) AS oldest FROM syncd.log WHERE pos > $1 "
                "AND received_from IS DISTINCT FROM $2", ln.push_cursor, ln.parent)
            lag_s = round(time.time() - row["oldest"].timestamp(), 3) if row["oldest"] else 0.0
            worst = max((ln.push_health, ln.pull_health), key=lambda h: SEVERITY[h.state])
            err = worst.last_error or ln.push_health.last_error or ln.pull_health.last_error
            view = parent_link_view(ln, int(row["n"]), lag_s)
            view.update(epoch=ln.epoch, last_resync=_resync_view(ln.resyncs[-1]) if ln.resyncs else None)
            out.append(apply_stall(view, parent_link_stall(ln, int(row["n"]), lag_s, self.cfg.tuning.stall_after_s,
                                                           err)))
        if self.service is not None:
            out += await self.service.link_status(conn)
        return out

    async def subtree_summaries(self) -> list[dict[str, Any]]:
        """What this node pushes up: its own summary and those of its subtree (HC-30)."""
        from syncd.status import build_status

        status = await build_status(self)
        return [s for s in status["subtree"] if s["state"] != "missing"]

    async def stop(self) -> None:
        self.stop_event.set()
        self.sequencer.wake()
        if self._reload_task is not None:
            self.tasks.append(self._reload_task)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.links is not None:
            await self.links.link.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.service is not None:  # no request comes any more: none is read ahead after this
            await self.service.drop_read_aheads()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
