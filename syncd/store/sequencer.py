"""The sequencer: the only mover into the log (DESIGN §4, HC-2, HC-3).

One tick is one transaction holding a transaction-scoped advisory lock until
commit: it moves the queued versioned changes (``syncd.pending``, written by
apply) and then versions the committed captures, giving them dense increasing
positions after ``syncd.node.head``.  An apply holds the same lock for its whole
transaction; when the queue is empty it has the sequencer log its relayed changes
there and then (:meth:`Sequencer.log_now`: no queue row written and deleted, no
second commit before the children hear of them).  Nothing else assigns positions,
and whoever does holds the lock until commit, so a reader never finds a change
appearing below a position it has already passed.  No
snapshot-xmin rule is involved: an idle transaction anywhere on the instance
does not hold it back.  Two daemons on one database serialise on the lock.

:meth:`Sequencer.run` loops forever, woken by events, not by a timer: the capture
triggers' ``NOTIFY syncd_capture`` (a local write committed), :meth:`Sequencer.wake`
called in-process after an apply committed changes to relay (``syncd.pending``), and a
re-established LISTEN.  The timer (``interval_s``) is only a safety net for a lost
notification, and costs one read-only query per turn when there is nothing to do.  A
wake-up is not a transaction per change: the loop ticks once per wake-up for everything
committed by then (up to ``batch``) and again at once only while ticks come back full, so
under load many changes share one tick.  After moving anything it sends
``NOTIFY syncd_log, '<head>'`` (for other processes on the database) and calls
``on_logged(head)`` in-process at once.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import asyncpg
import structlog

from syncd.config import Secret
from syncd.retry import LoopHealth
from syncd.proto.change import Change, StoredChange
from syncd.schema.declarations import SCHEMA, Schema
from syncd.store.listen import Listener
from syncd.store.log import append_log, stored_from_record
from syncd.store.lookup import oldest_of_queue
from syncd.store.versioning import Versioner, claim_captures

SEQUENCER_LOCK = 0x5379_6E63_0002  # 'Sync' 2: positions and versions

log = structlog.get_logger("syncd.sequencer")


@dataclass(frozen=True)
class TickResult:
    moved: int  # received changes moved from pending
    versioned: int  # local changes versioned from captures
    head: int
    full: bool = False  # a batch limit was reached: more may be waiting
    peers: frozenset[str] = frozenset()  # the children whose outboxes got entries
    committees: bool = False  # a committees change was logged (the tree may have changed)

    @property
    def total(self) -> int:
        return self.moved + self.versioned


#: Move the oldest pending changes into the log at head+1…, in serial order; return what
#: the outbox rule and the clock need ($1 batch, $2 head, $3 epoch).
_MOVE_PENDING = f"""
WITH moved AS (
    DELETE FROM syncd.pending WHERE {oldest_of_queue('syncd.pending')}
    RETURNING *
), logged AS (
    INSERT INTO syncd.log (pos, epoch, tbl, id, org_code, op, cl, ts, origin, txn, homes, cols, received_from)
    SELECT $2 + row_number() OVER (ORDER BY serial), $3, tbl, id, org_code, op, cl, ts, origin, txn, homes,
           cols, received_from
    FROM moved
    RETURNING pos, tbl, id, org_code, op, cl, ts, origin, txn, homes, received_from,
              CASE WHEN tbl = 'committees' THEN cols ELSE '{{}}'::json END AS cols
)
SELECT * FROM logged ORDER BY pos
"""

#: The new head and clock, and ``NOTIFY syncd_log, '<head>'`` at commit, in one round trip (the
#: payload, a head, marks the sequencer's own notification: a bootstrap's has none)
_MOVE_HEAD = ("UPDATE syncd.node SET head = $1, hlc = greatest(hlc, $2) "
              "FROM (SELECT pg_notify('syncd_log', $3)) AS notified")

#: Anything for a tick to do?  Read-only (no xid, no WAL, no lock): an idle node's turn costs
#: this one query.  Only committed rows are seen, like the tick's own DELETE … RETURNING; a
#: capture or pending row committed after it comes with its own wake-up.  ``min(serial)`` reads
#: the primary key's first live entry: a plain ``EXISTS`` scanned the heap through every dead
#: row a large tick left behind until autovacuum came (5 ms a turn after a 2k-change batch).
_ANYTHING = ("SELECT (SELECT min(serial) FROM syncd.pending) IS NOT NULL AS pending, "
             "(SELECT min(serial) FROM syncd.capture) IS NOT NULL AS captured")

#: The sequencer lock, then the node row locked: one round trip.  The lock is taken in an
#: uncorrelated sub-select, which PostgreSQL runs once (an InitPlan) before it reads the row,
#: so the order is the one every other holder of both keeps (the lock first).
_LOCK_NODE = ("SELECT id, epoch, hlc, head FROM syncd.node "
              "WHERE (SELECT true FROM pg_advisory_xact_lock($1)) FOR UPDATE")


async def lock(conn: asyncpg.Connection) -> None:
    """Take the sequencer lock for the rest of the current transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", SEQUENCER_LOCK)


#: How long an apply (which holds the sequencer lock) waits for a row lock another transaction
#: holds before it gives up and rolls back (HC-3): an application's transactions hold rows for
#: milliseconds, and while an apply waits, no change of this node gets a position.  A psql
#: session left open after an UPDATE, or a long import, would otherwise stall the log for as
#: long as it stays open; the sender retries the batch later (``UNAVAILABLE``).
APPLY_LOCK_TIMEOUT_MS = 1000

#: The sequencer lock, the current transaction's writes marked as syncd's own
#: (``syncd.applying = on``: the capture triggers skip them) and its row-lock waits bounded
#: (:data:`APPLY_LOCK_TIMEOUT_MS`); also a sub-select of an apply's first statement
#: (``store.apply._LOCKED_CURSOR``).  PostgreSQL evaluates the select list in order, so the
#: wait for the sequencer lock itself is not bounded (it is taken before the timeout is set).
LOCK_APPLYING = (f"SELECT pg_advisory_xact_lock({SEQUENCER_LOCK}), set_config('syncd.applying', 'on', true), "
                 f"set_config('lock_timeout', '{APPLY_LOCK_TIMEOUT_MS}ms', true)")


async def lock_applying(conn: asyncpg.Connection) -> None:
    """Take the sequencer lock and mark the current transaction's writes as syncd's own, in
    one round trip (:data:`LOCK_APPLYING`)."""
    await conn.execute(LOCK_APPLYING)


@dataclass
class Sequencer:
    schema: Schema = SCHEMA
    me: str = ""
    id_hash_key: Secret | None = None
    batch: int = 5000
    interval_s: float = 0.2
    #: for each logged (change, received_from): the children whose outboxes get it (HC-37)
    fanout: Callable[[asyncpg.Connection, Sequence[tuple[Change, str | None]]],
                     Awaitable[list[tuple[str, ...]]]] | None = None
    #: called in-process with the tick's result after a tick of :meth:`run` logged anything
    #: (committed): wakes this node's push loop and long polls without a NOTIFY round trip
    on_logged: Callable[[TickResult], None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: server pids of the connections :meth:`run` ticked on: their ``NOTIFY syncd_log, '<head>'``
    #: was (or is about to be) announced in-process by ``on_logged``
    backends: set[int] = field(default_factory=set)
    health: LoopHealth = field(default_factory=lambda: LoopHealth("sequencer", cap_s=5.0, failed_cap_s=10.0))

    async def tick(self, conn: asyncpg.Connection, pending: bool = True, captured: bool = True) -> TickResult:
        """Move pending changes and version captures, in one transaction (``pending`` /
        ``captured`` False: that queue was seen empty just before, leave it for the next tick)."""
        async with conn.transaction():
            node = await conn.fetchrow(_LOCK_NODE, SEQUENCER_LOCK)
            me = self.me or node["id"]
            head = node["head"]
            # received changes move inside PostgreSQL, already encoded; Python sees only what
            # the outbox rule needs (committees rows whole: they may extend the tree)
            moved = await conn.fetch(_MOVE_PENDING, self.batch, head, node["epoch"]) if pending else []
            items: list[tuple[Change | StoredChange, str | None]] = [
                (stored_from_record(r), r["received_from"]) for r in moved]
            caps = await claim_captures(conn, self.batch) if captured else []
            versioner = Versioner(self.schema, me, self.id_hash_key)
            changes, hlc = await versioner.run(conn, caps, node["hlc"])
            if moved:
                head += len(moved)
            if changes:
                head = await append_log(conn, head + 1, node["epoch"], [(c, None) for c in changes])
                items += [(c, None) for c in changes]
            peers: frozenset[str] = frozenset()
            if items:
                peers = await self._fill_outboxes(conn, node["head"] + 1, items)
                seen = max([hlc, *(c.ts for c, _ in items)])
                await conn.execute(_MOVE_HEAD, head, seen, str(head))
            elif caps:  # versioned to nothing (no column changed): the clock may still have moved
                await conn.execute("UPDATE syncd.node SET hlc = greatest(hlc, $1)", hlc)
        return TickResult(len(moved), len(changes), head, full=len(moved) >= self.batch or len(caps) >= self.batch,
                          peers=peers, committees=any(c.table == "committees" for c, _ in items))

    async def log_now(self, conn: asyncpg.Connection, items: list[tuple[Change, str | None]],
                      write: Callable[[asyncpg.Connection, list[tuple[str, int]], int], Awaitable[int | None]]
                      ) -> TickResult | None:
        """Log ``items`` in the caller's transaction, which holds the sequencer lock (an apply's):
        what a tick would do for them once they were queued, without the queue.  ``write(conn,
        outbox, ts)`` logs them after the head in the order of ``items`` — unless the relay queue
        is not empty — with their outbox entries ``(peer, n)`` (n = 1 for the first item), moves
        the head and the clock to ``ts`` and notifies, in one round trip; it returns the new head,
        or None (nothing done: what waits in the queue was logged first by a tick, so the caller
        queues ``items`` behind it).  The lock is held until the caller commits, so positions
        still commit in order (HC-2).  The caller hands the result to :attr:`on_logged` once
        committed."""
        outbox = await self._outbox(conn, items)
        head = await write(conn, outbox, max(c.ts for c, _ in items))
        if head is None:
            return None
        self.backends.add(conn.get_server_pid())  # its NOTIFY is this node's own, announced in-process
        return TickResult(len(items), 0, head, peers=frozenset(peer for peer, _ in outbox),
                          committees=any(c.table == "committees" for c, _ in items))

    async def _outbox(self, conn: asyncpg.Connection, items: list[tuple[Change, str | None]]) -> list[tuple[str, int]]:
        """The outbox entries of ``items``: ``(child, n)``, n = 1 for the first item."""
        if self.fanout is None:
            return []
        return [(peer, i) for i, ps in enumerate(await self.fanout(conn, items), 1) for peer in ps]

    async def _fill_outboxes(self, conn: asyncpg.Connection, first: int,
                             items: list[tuple[Change, str | None]]) -> frozenset[str]:
        """Fill the children's outboxes; return the children that got entries."""
        rows = [(peer, first - 1 + n) for peer, n in await self._outbox(conn, items)]
        if rows:
            await conn.copy_records_to_table("outbox", schema_name="syncd", columns=("peer", "pos"), records=rows)
        return frozenset(peer for peer, _ in rows)

    async def drain(self, conn: asyncpg.Connection) -> int:
        """Tick until nothing is left to move; return how many changes were logged."""
        total = 0
        while True:
            r = await self.tick(conn)
            total += r.total
            if r.total == 0:
                return total

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def _turn(self, conn: asyncpg.Connection) -> None:
        """Tick while there is something to do: once for what is committed now, again only
        while ticks come back full (what commits later brings its own wake-up)."""
        queues = await conn.fetchrow(_ANYTHING)
        if not (queues["pending"] or queues["captured"]):
            return
        self.backends.add(conn.get_server_pid())
        r = await self.tick(conn, queues["pending"], queues["captured"])
        while True:
            if r.total and self.on_logged is not None:
                self.on_logged(r)
            if not r.full:
                return
            r = await self.tick(conn)

    async def run(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """Tick on every wake-up (capture NOTIFY, :meth:`wake`) until ``stop``; with none, look
        every ``interval_s`` anyway (a notification lost with its connection).

        Never dies: a database failure (PostgreSQL restarting, a dropped connection)
        is counted in :attr:`health` and retried with backoff; the LISTEN connection
        is re-established when it was lost.
        """
        listener = Listener(pool, "syncd_capture", self.wake)
        try:
            while not stop.is_set():
                delay = self.interval_s
                # cleared before looking, never after: a wake-up for a commit this turn does
                # not see makes the next turn start at once (it is not lost until the timer)
                self._wake.clear()
                try:
                    await listener.ensure()  # no LISTEN yet (database down): the timer still ticks
                    async with pool.acquire() as conn:
                        await self._turn(conn)
                    self.health.ok()
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - the loop never dies; the error is in status
                    delay = self.health.error(e)
                if stop.is_set():
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            await listener.close()


def log_row_as_json(change: Change, received_from: str | None = None) -> str:
    """One log entry as a JSON line (``syncd log --json``)."""
    return json.dumps({
        "pos": change.pos, "table": change.table, "id": str(change.id), "org_code": change.org_code,
        "op": change.op, "cl": change.cl, "ts": change.ts, "origin": change.origin, "txn": change.txn,
        "homes": dict(change.homes), "received_from": received_from,
        "cols": {k: {"value": v.value, "round": v.round, "stage": v.stage,
                     "prev": v.prev.as_list() if v.prev else None} for k, v in change.cols.items()},
    }, ensure_ascii=False)
