"""Resync after a new link epoch: the child's side (SPEC R8.7, HC-7, HC-21, HC-22).

When a child adopts a new epoch from its parent (:func:`adopt_epoch`) it cannot trust
either cursor of the link any more, so in one transaction it

* drops its pull cursor: the pull loop loads a snapshot of everything it is entitled
  to and merges it — never replaces (HC-22) — which also brings back rows whose home is
  this node that only the parent still had (return-to-home, HC-7);
* raises its log head to at least the parent's push cursor, so its next positions are
  above anything the parent holds of its old log, and stops pushing the old log;
* marks an **upward snapshot** due.

Once the snapshot has merged, :func:`queue_upward_snapshot` puts this node's own share
of every row — each cell written in its subtree, with the version it has (ts, origin,
round, stage, prev), and the tombstones of rows homed in its subtree — into the log as
ordinary versioned changes.  They travel by push like any change, so the parent merges
them with the same join as everything else (a version it holds or has seen beaten is a
no-op, never a conflict, HC-17), relays what is new to it, and nothing is replaced.
Their ``received_from`` is :data:`UPWARD` so they never go down to this node's children.

While merging snapshot chunks, :func:`purge_stale_copies` removes copies of rows homed
outside this node's subtree that the parent no longer has (deleted there and their
tombstones collected while this node was away, HC-21) — unless this node created them.
A removed copy is forgotten (its version state too), so if the parent has it again later
(a parent that was restored and resyncs) the next snapshot brings it back.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

import asyncpg
import structlog

from syncd.config import Secret
from syncd.proto.change import OP_DELETE, OP_UPDATE, UPWARD_TXN_BASE, Change, ColumnChange
from syncd.proto.messages import SnapshotRow, StoredRow
from syncd.schema.declarations import Schema, Table
from syncd.store import links
from syncd.store.log import add_pending
from syncd.store.snapshot import id_range
from syncd.store.versioning import RowVer, id_card_hash
from syncd.topology import Topology, TopologyError

log = structlog.get_logger("syncd.resync")

#: ``received_from`` of an upward snapshot's log entries (not a node id: ids never hold "~")
UPWARD = "~upward"
_CHUNK = 2000


def _in(topo: Topology, code: str, root: str) -> bool:
    try:
        return topo.in_subtree(code, root)
    except TopologyError:
        return False


def _cell_value(t: Table, col: str, rv: RowVer, values: dict[str, Any], key: Secret | None) -> Any:
    """A cell's value as it was shipped.  A derived column (the ID hash, HC-14) is not stored
    in the home's own table: it is computed again from its source when both were written
    together (same version), else the stored copy (a row that came back from upstream)."""
    src = t.column(col).derived_from
    if src is not None and rv.v.get(src) == rv.v.get(col):
        return id_card_hash(key, values.get(src))
    return values.get(col)


def row_changes(t: Table, row_id: uuid.UUID, rv: RowVer, values: dict[str, Any] | None,
                mine: Any, txn: int, key: Secret | None = None) -> list[Change]:
    """This node's share of one row as versioned changes (pure).

    ``mine(code)`` says whether a node lies in this node's subtree.  A tombstone homed
    here becomes one delete; a live row one update per distinct ``(ts, origin)`` of the
    cells written here, each cell with its version and ``prev``.  Cells written elsewhere
    are the parent's to know (they came from there).  All share ``txn`` so a batch never
    splits a row.  ``key`` is the ID-hash key, for derived columns."""
    if rv.cl % 2 == 0:
        if not mine(rv.org_code):
            return []
        return [Change(t.name, row_id, rv.org_code, OP_DELETE, rv.cl, 0, rv.org_code, txn, dict(rv.homes), {}, 0)]
    if values is None:  # versioned but not in the table (its write failed): nothing to show
        return []
    groups: dict[tuple[int, str], dict[str, ColumnChange]] = {}
    for col, ver in rv.v.items():
        if col not in t.shipped_set or ver.cl != rv.cl or not mine(ver.origin):
            continue
        groups.setdefault((ver.ts, ver.origin), {})[col] = ColumnChange(_cell_value(t, col, rv, values, key),
                                                                         ver.round, ver.stage, rv.prevs.get(col))
    return [Change(t.name, row_id, rv.org_code, OP_UPDATE, rv.cl, ts, origin, txn, dict(rv.homes), cols, 0)
            for (ts, origin), cols in sorted(groups.items())]


async def queue_upward_snapshot(conn: asyncpg.Connection, schema: Schema, topo: Topology, me: str,
                                key: Secret | None = None) -> int:
    """Queue this node's share of every row for the sequencer (caller's transaction, with the
    sequencer lock); return the number of changes queued."""
    cache: dict[str, bool] = {}

    def mine(code: str) -> bool:
        if code not in cache:
            cache[code] = _in(topo, code, me)
        return cache[code]

    total, txn = 0, UPWARD_TXN_BASE
    for t in schema.tables:  # foreign-key order, as the parent applies
        after: uuid.UUID | None = None
        while True:
            bounds, args = id_range(after, None, 3)
            recs = await conn.fetch(
                f'SELECT r.id, r.org_code, r.cl, r.homes, r.v, to_jsonb(x) AS j FROM syncd.rowver r '
                f'LEFT JOIN public."{t.name}" x ON x.id = r.id{id_range(after, None, 3, "x")[0]} '
                f'WHERE r.tbl = $1{bounds} '
                "ORDER BY r.id LIMIT $2", t.name, _CHUNK, *args)
            if not recs:
                break
            items: list[tuple[Change, str | None]] = []
            for r in recs:
                txn += 1
                rv = RowVer.from_db(r["org_code"], r["cl"], r["homes"], r["v"])
                values = json.loads(r["j"]) if r["j"] is not None else None
                items += [(c, UPWARD) for c in row_changes(t, r["id"], rv, values, mine, txn, key)]
            await add_pending(conn, items)
            total += len(items)
            after = recs[-1]["id"]
    log.info("upward_snapshot_queued", node=me, changes=total)
    return total


def created_here(rv: RowVer, mine: Any) -> bool:
    """The row was created in this node's subtree: one of its cells written here replaced
    nothing (an insert's cells have no ``prev``)."""
    return any(mine(v.origin) and rv.prevs.get(c) is None for c, v in rv.v.items())


def live_outside_chunk(bounds: str) -> str:
    """The live rows (``syncd.rowver``) of table $1 in the id range ``bounds`` whose ids are not
    in $2 — the chunk's.  The ids are compared through a hashed subplan (``NOT IN``; ids are
    never NULL): written as ``NOT EXISTS (… unnest($2) …)`` PostgreSQL planned the prepared
    statement generically as a nested-loop anti-join searching the chunk's ids for every row of
    the range, 2,000 × 2,000 comparisons and ~200 ms a chunk — 28 s of a 64 s bootstrap of
    300k rows (``auto_explain``, session 11)."""
    return (f"SELECT r.id, r.org_code, r.cl, r.homes, r.v FROM syncd.rowver r WHERE r.tbl = $1 AND r.cl % 2 = 1{bounds} "
            "AND r.id NOT IN (SELECT unnest($2::uuid[]))")


async def purge_stale_copies(conn: asyncpg.Connection, schema: Schema, topo: Topology, me: str, table: str,
                             after_id: uuid.UUID | None, next_after_id: uuid.UUID | None,
                             rows: Sequence[SnapshotRow | StoredRow]) -> int:
    """Remove live copies in the id range a snapshot chunk covered that the parent did not
    send: rows homed outside this subtree and not created here (caller's transaction,
    ``syncd.applying`` on, sequencer lock held).  Return how many."""
    bounds, args = id_range(after_id, next_after_id, 3)
    recs = await conn.fetch(live_outside_chunk(bounds), table, [r.id for r in rows], *args)

    def mine(code: str) -> bool:
        return _in(topo, code, me)

    stale = [r for r in recs if not mine(r["org_code"])
             and not created_here(RowVer.from_db(r["org_code"], r["cl"], r["homes"], r["v"]), mine)]
    purged = 0
    for r in stale:
        try:
            async with conn.transaction():
                await conn.execute(f'DELETE FROM public."{schema[table].name}" WHERE id = $1', r["id"])
                # forgotten, not tombstoned: a made-up delete would beat the row if it comes back
                await conn.execute("DELETE FROM syncd.rowver WHERE tbl = $1 AND id = $2", table, r["id"])
            purged += 1
        except asyncpg.IntegrityConstraintViolationError:
            continue  # still referenced here: kept until its referrers go
    if purged:
        log.warning("stale_copies_purged", table=table, count=purged,
                    reason="deleted upstream while this node was behind retention")
    return purged


async def adopt_epoch(conn: asyncpg.Connection, parent: str, epoch: int, parent_incarnation: uuid.UUID,
                      push_cursor: int, *, full: bool, rewound: bool, force: bool = False) -> bool:
    """Adopt the parent's link epoch (SPEC R8.7); with ``full`` start a resync both ways.
    ``rewound``: this node found itself restored, its own node epoch goes up too.
    Idempotent unless ``force``: False when the link already stands at ``epoch`` with this parent."""
    from syncd.store.sequencer import lock

    async with conn.transaction():
        st = await links.load(conn, parent, for_update=True)
        if st.epoch == epoch and st.peer_incarnation == parent_incarnation and not force:
            return False
        await conn.execute("UPDATE syncd.links SET epoch = $2, peer_incarnation = $3, updated_at = now() "
                           "WHERE peer = $1", parent, epoch, parent_incarnation)
        if not full:
            return True
        await lock(conn)  # the head moves: no sequencer tick in between
        head = await conn.fetchval("UPDATE syncd.node SET head = greatest(head, $1), epoch = epoch + $2 "
                                   "RETURNING head", push_cursor, 1 if rewound else 0)
        await conn.execute(links.SAVE_PUSH_CURSOR, parent, head)
        await conn.execute("DELETE FROM syncd.cursors WHERE peer = $1 AND kind = 'pull'", parent)
        await conn.execute("DELETE FROM syncd.snapshot_progress WHERE peer = $1", parent)
        await conn.execute("UPDATE syncd.links SET hash_pos = 0, hash = NULL, acked_max = $2, upward = true "
                           "WHERE peer = $1", parent, push_cursor)
    log.warning("resync_started", parent=parent, epoch=epoch, rewound=rewound, head=head)
    return True
