"""Retention: the log, the outboxes and tombstones do not grow without bound (DESIGN §4, HC-21).

Theory of operation
-------------------
Log entries are removed below a **horizon**: the highest of

* the entries every configured peer has passed — strictly below the lowest of: each
  child's served position (the ``after`` of its last pull, or p₀ of the snapshot it is
  loading) and the parent's push position (the log scanned and acknowledged by pushes);
  the entry *at* a peer's position is kept, so hello can still check its hash (HC-7);
* the entries older than ``max_retention`` (``logged_at``);
* all but the newest ``max_retention_entries`` (when that is not 0),

so a peer that stays away longer than ``max_retention`` does not pin the log.  A child
that has never pulled does not pin it either: it starts with a snapshot.

Outbox rows go with their log entries.  Per child, when an entry it had not yet pulled
goes, the highest such position is kept as its ``truncated`` cursor; a pull (or push)
from a child whose position is below it is answered ``MUST_RESYNC`` (SPEC R8.6).  The
first position kept is ``syncd.node.log_first`` (shown in status).

Tombstones — rows with an even causal length — are noted when retention first sees
them and collected once older than ``max_retention`` and no log entry of the row is left,
so they live as long as the log keeps a peer able to miss the delete — except while the
node owes its parent an upward snapshot (retention dropped entries the parent never got):
then its tombstones are the only record of its deletes and none is collected.  :func:`run_once`
does one pass; :func:`retention_loop` runs it forever (``tuning.retention_interval_s``).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg
import structlog

from syncd.config import Config
from syncd.retry import LoopHealth, run_every

log = structlog.get_logger("syncd.retention")

#: a ``truncated`` cursor at or above this asks for a resync whatever the position (set by
#: a node that resynchronised from its parent: rows merged from a snapshot are not in its log)
RESYNC_ALWAYS = 2**62


@dataclass(frozen=True)
class Horizon:
    """Where the log may be cut: entries at positions ≤ ``through`` go."""

    through: int
    log_first: int
    head: int
    by_peers: int
    by_age: int
    by_count: int

    @property
    def removes(self) -> bool:
        return self.through >= self.log_first


async def _last_older_than(conn: asyncpg.Connection, lo: int, hi: int, cutoff: datetime) -> int:
    """The highest log position in ``[lo, hi]`` logged before ``cutoff``, else ``lo - 1``.

    ``logged_at`` grows with the position (one sequencer at a time assigns both), so a
    binary search over primary-key lookups finds it without an index on time."""
    async def first_from(x: int) -> asyncpg.Record | None:
        return await conn.fetchrow("SELECT pos, logged_at FROM syncd.log WHERE pos >= $1 AND pos <= $2 "
                                   "ORDER BY pos LIMIT 1", x, hi)

    def older(r: asyncpg.Record | None) -> bool:
        return r is not None and r["logged_at"] < cutoff

    if hi < lo or not older(await first_from(lo)):
        return lo - 1
    a, b = lo, hi
    while a < b:
        mid = (a + b + 1) // 2
        if older(await first_from(mid)):
            a = mid
        else:
            b = mid - 1
    r = await first_from(a)
    return int(r["pos"]) if r is not None else lo - 1


async def peer_positions(conn: asyncpg.Connection, cfg: Config) -> dict[str, int]:
    """The positions of this node's log each configured peer still needs entries after."""
    out: dict[str, int] = {}
    rows = {(r["peer"], r["kind"]): int(r["pos"]) for r in await conn.fetch(
        "SELECT peer, kind, pos FROM syncd.cursors WHERE kind IN ('push', 'served')")}
    if cfg.parent is not None:
        out[cfg.parent.id] = rows.get((cfg.parent.id, "push"), 0)
    for c in cfg.children:
        if (c.id, "served") in rows:  # a child that never pulled starts with a snapshot
            out[c.id] = rows[(c.id, "served")]
    return out


async def horizon(conn: asyncpg.Connection, cfg: Config, now: datetime | None = None) -> Horizon:
    node = await conn.fetchrow("SELECT head, log_first FROM syncd.node")
    head, first = int(node["head"]), int(node["log_first"])
    peers = await peer_positions(conn, cfg)
    by_peers = min(min(peers.values()) - 1, head) if peers else head
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=cfg.tuning.max_retention_s)
    by_age = await _last_older_than(conn, first, head, cutoff)
    n = cfg.tuning.max_retention_entries
    by_count = head - n if n > 0 else 0
    through = min(max(by_peers, by_age, by_count), head)
    return Horizon(through, first, head, by_peers, by_age, by_count)


#: positions removed per transaction, so a long backlog is cut in short transactions
SLICE = 50_000


async def truncate(conn: asyncpg.Connection, cfg: Config, h: Horizon) -> int:
    """Remove log and outbox entries at or below ``h.through``, a slice per transaction;
    return how many log entries went."""
    removed = 0
    lo = h.log_first
    while lo <= h.through:
        hi = min(lo + SLICE - 1, h.through)
        removed += await _truncate_through(conn, Horizon(hi, lo, h.head, h.by_peers, h.by_age, h.by_count))
        lo = hi + 1
    return removed


async def _truncate_through(conn: asyncpg.Connection, h: Horizon) -> int:
    async with conn.transaction():
        served = {r["peer"]: int(r["pos"]) for r in await conn.fetch(
            "SELECT peer, pos FROM syncd.cursors WHERE kind = 'served'")}
        gone = await conn.fetch("SELECT peer, max(pos) AS pos FROM syncd.outbox WHERE pos <= $1 GROUP BY peer",
                                h.through)
        # a child with no served position is either new (it loads a snapshot first, which clears
        # the mark) or was away since before this build: it resyncs rather than miss entries
        behind = [(r["peer"], int(r["pos"])) for r in gone if served.get(r["peer"], -1) < int(r["pos"])]
        if behind:  # children that had not pulled these entries yet must resync (SPEC R8.6)
            await conn.executemany(
                "INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, 'truncated', $2) ON CONFLICT (peer, kind) "
                "DO UPDATE SET pos = greatest(syncd.cursors.pos, excluded.pos), updated_at = now()", behind)
        await conn.execute("DELETE FROM syncd.outbox WHERE pos <= $1", h.through)
        status = await conn.execute("DELETE FROM syncd.log WHERE pos <= $1", h.through)
        await conn.execute("UPDATE syncd.node SET log_first = greatest(log_first, $1)", h.through + 1)
    removed = int(status.split()[-1])
    log.info("log_truncated", through=h.through, removed=removed, by_peers=h.by_peers, by_age=h.by_age,
             by_count=h.by_count, children_behind=sorted(p for p, _ in behind))
    return removed


async def collect_tombstones(conn: asyncpg.Connection, max_age_s: float) -> int:
    """Note new tombstones; collect those older than ``max_age_s`` with no log entry left."""
    from syncd.store.sequencer import lock

    async with conn.transaction():
        await lock(conn)  # rowver is read and written under the sequencer lock
        await conn.execute("INSERT INTO syncd.tombstones (tbl, id) SELECT tbl, id FROM syncd.rowver "
                           "WHERE cl % 2 = 0 ON CONFLICT DO NOTHING")
        status = await conn.execute(
            "DELETE FROM syncd.rowver r USING syncd.tombstones t WHERE r.tbl = t.tbl AND r.id = t.id "
            "AND r.cl % 2 = 0 AND t.seen_at < now() - make_interval(secs => $1) "
            "AND NOT EXISTS (SELECT 1 FROM syncd.log l WHERE l.tbl = r.tbl AND l.id = r.id)", max_age_s)
        await conn.execute("DELETE FROM syncd.tombstones t WHERE NOT EXISTS (SELECT 1 FROM syncd.rowver r "
                           "WHERE r.tbl = t.tbl AND r.id = t.id AND r.cl % 2 = 0)")
    n = int(status.split()[-1])
    if n:
        log.info("tombstones_collected", count=n)
    return n


async def owes_parent(conn: asyncpg.Connection, cfg: Config) -> bool:
    """Retention removed log entries the parent never got, and the upward snapshot that stands
    for them has not gone into the log yet: until it has, this node's tombstones are the only
    record of its deletes, so none is collected (else a delete would be lost, HC-21)."""
    if cfg.parent is None:
        return False
    row = await conn.fetchrow(
        "SELECT (SELECT log_first FROM syncd.node) AS first, "
        "(SELECT pos FROM syncd.cursors WHERE peer = $1 AND kind = 'push') AS scan, "
        "(SELECT upward FROM syncd.links WHERE peer = $1) AS upward", cfg.parent.id)
    return bool(row["upward"]) or (row["scan"] or 0) < row["first"] - 1


async def run_once(conn: asyncpg.Connection, cfg: Config) -> tuple[Horizon, int, int]:
    """One retention pass: (horizon, log entries removed, tombstones collected)."""
    h = await horizon(conn, cfg)
    removed = await truncate(conn, cfg, h)
    collected = 0
    if not await owes_parent(conn, cfg):
        collected = await collect_tombstones(conn, cfg.tuning.max_retention_s)
    return h, removed, collected


async def retention_loop(pool: asyncpg.Pool, cfg: Config, stop: asyncio.Event, health: LoopHealth) -> None:
    """Run :func:`run_once` every ``retention_interval_s`` until ``stop``; never dies."""
    async def once() -> None:
        async with pool.acquire() as conn:
            await run_once(conn, cfg)
    await run_every(lambda: cfg.tuning.retention_interval_s, once, stop, health)
