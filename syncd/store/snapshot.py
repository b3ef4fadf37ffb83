"""Snapshots: serve a child the rows it is entitled to, and merge them at the child (HC-22).

Parent side (:func:`read_chunk`): rows of one table in id order after ``after_id``,
with their causal length, route homes and per-column versions, filtered to the
rows that reach the child's subtree and projected to the columns whose reach
includes it.  A snapshot is consistent with p₀, the parent's log head when it
started: every change after p₀ is also in the child's outbox and is replayed by
pulls afterwards (idempotent merges: a replay is no conflict, HC-17).  Each column's
version travels with the one its write replaced (protocol version 3), so two writes that
never saw each other are recorded as the same conflict here as where ``decide`` meets them.

Child side (:func:`merge_chunk`): each row is joined into the local row with
``merge.merge_states`` — never replaced, so home-only personal columns and own
writes not yet pushed survive (HC-22) — and written through the same set-based
path as applies.  :func:`progress` / :func:`save_progress` keep per-table
progress in ``syncd.snapshot_progress`` so a killed bootstrap resumes.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import asyncpg
import orjson

from syncd.batching import MAX_BATCH_BYTES, ROW_OVERHEAD_BYTES, utf8_len
from syncd.merge import RowState, merge_states, state_conflicts
from syncd.proto.change import OP_DELETE, OP_INSERT, Change, Version
from syncd.proto.messages import SnapshotRow
from syncd.routing import column_reach, reach, reach_rule
from syncd.schema.declarations import Schema
from syncd.store.apply import (ApplyContext, ApplyResult, _Row, _state, lock_and_load, lock_targets, park,
                               record_conflicts, write_rows)
from syncd.store.conflicts import close_seen_rows
from syncd.store.fastpath import insert_snapshot_rows
from syncd.store.log import decode_homes, loads
from syncd.store.opaque import has_opaque
from syncd.topology import Topology, TopologyError


def _project(table: Any, row: SnapshotRow, behind: frozenset[str], topo: Topology) -> SnapshotRow | None:
    """The row as it may cross to ``behind`` (None: not at all); the column choice depends
    on the table, homes, org_code and column names only, so it is memoised per tree."""
    key = ("snapshot_project", table.name, tuple(row.homes.items()), row.org_code, tuple(row.cols), behind)
    keep = topo.memo.get(key, _MISSING)
    if keep is _MISSING:
        if len(topo.memo) > 100_000:
            topo.memo.clear()
        keep = topo.memo[key] = _columns_crossing(table, row, behind, topo)
    if keep is None:
        return None
    if len(keep) == len(row.cols):  # type: ignore[arg-type]
        return row
    return SnapshotRow(row.id, row.org_code, row.cl, row.homes,  # type: ignore[union-attr]
                       {n: row.cols[n] for n in keep},
                       {n: row.prevs[n] for n in keep if n in row.prevs})  # type: ignore[union-attr]


_MISSING = object()
_tnew = tuple.__new__  # Version from a stored 5-list, without its Python-level __new__


def _columns_crossing(table: Any, row: SnapshotRow, behind: frozenset[str], topo: Topology) -> tuple[str, ...] | None:
    try:
        reached = reach(table, row.homes, topo) & behind
    except TopologyError:
        return None
    if not reached:
        return None
    out = []
    for name in row.cols:
        allowed = column_reach(reach_rule(table, name), row.org_code, topo)
        if allowed is None or allowed & reached:
            out.append(name)
    return tuple(out)


def id_range(after_id: uuid.UUID | None, upto_id: uuid.UUID | None, first_param: int,
             alias: str = "r") -> tuple[str, list[Any]]:
    """SQL conditions ``<alias>.id > after_id`` / ``<alias>.id <= upto_id`` for the bounds given,
    numbered from ``$first_param``, and their arguments.  Only the bounds that exist are written: a
    ``($n::uuid IS NULL OR r.id > $n)`` cannot be an index condition once PostgreSQL plans the
    prepared statement generically, so each chunk of a scan read the rows before it again —
    quadratic, 850 ms a chunk at a million rows (README, Benchmarks)."""
    sql, args = "", []
    for bound, op in ((after_id, ">"), (upto_id, "<=")):
        if bound is not None:
            args.append(bound)
            sql += f" AND {alias}.id {op} ${first_param + len(args) - 1}"
    return sql, args


async def read_chunk(conn: asyncpg.Connection, schema: Schema, topo: Topology, me: str, child: str,
                     table: str, after_id: uuid.UUID | None, limit: int,
                     max_bytes: int = MAX_BATCH_BYTES) -> tuple[list[SnapshotRow], uuid.UUID | None]:
    """Up to ``limit`` rows of ``table`` for ``child`` after ``after_id``, of about ``max_bytes``
    on the wire at most (:mod:`syncd.batching`; a larger row goes alone); and where to go on.

    Scans in id order; the returned cursor is the last id scanned (None: table done),
    so a chunk may hold fewer rows than ``limit`` when most rows are not the child's.
    """
    t = schema[table]
    bounds, args = id_range(after_id, None, 3)
    recs = await conn.fetch(
        f'SELECT r.id, r.org_code, r.cl, r.homes, r.v, to_jsonb(x) AS j, o.vals FROM syncd.rowver r '
        # the bound again on the joined table: PostgreSQL does not carry r.id > $3 over x.id = r.id,
        # and a merge join would scan the table from its first row at every chunk
        f'LEFT JOIN public."{t.name}" x ON x.id = r.id{id_range(after_id, None, 3, "x")[0]} '
        "LEFT JOIN syncd.opaque o ON o.tbl = r.tbl AND o.id = r.id "
        f"WHERE r.tbl = $1{bounds} ORDER BY r.id LIMIT $2",
        table, limit, *args)
    behind = topo.behind(me, child)
    out = []
    shipped = set(t.shipped_names)
    nxt = recs[-1]["id"] if len(recs) == limit else None
    total = 0
    for i, r in enumerate(recs):
        size = utf8_len(r["j"]) + len(r["v"]) + utf8_len(r["vals"]) + ROW_OVERHEAD_BYTES
        if out and total + size > max_bytes:
            nxt = recs[i - 1]["id"]  # the chunk is full: the next one starts after the last row scanned
            break
        values = loads(r["j"]) if r["j"] else {}
        held = loads(r["vals"]) if r["vals"] else {}  # columns kept opaque here (HC-13)
        if held:
            values.update(held)
        # versions are syncd's own 64-bit integers and node codes: orjson reads them exactly
        stored = orjson.loads(r["v"])
        cols = {c: (values.get(c), _tnew(Version, v[:5])) for c, v in stored.items() if c in shipped or c in held}
        prevs = {c: _tnew(Version, v[5]) for c, v in stored.items() if c in cols and len(v) > 5 and v[5]}
        row = _project(t, SnapshotRow(r["id"], r["org_code"], r["cl"], decode_homes(r["homes"]), cols, prevs),
                       behind, topo)
        if row is not None:
            out.append(row)
            total += size
    return out, nxt


def _pseudo_change(table: str, row: SnapshotRow) -> Change:
    """A stand-in change for bookkeeping (homes, org_code) of a snapshot row."""
    return Change(table, row.id, row.org_code, OP_INSERT if row.cl % 2 else OP_DELETE, row.cl, 0,
                  row.org_code, 0, dict(row.homes), {}, 0)


async def merge_chunk(conn: asyncpg.Connection, ctx: ApplyContext, peer: str, table: str,
                      rows: Sequence[SnapshotRow]) -> ApplyResult:
    """Merge snapshot rows into this node (caller's transaction, ``syncd.applying`` on)."""
    result = ApplyResult()
    if not rows:
        return result
    snapshot = rows  # all of them: the set-based insert below takes some out of ``rows``
    t = ctx.schema[table]
    targets = [(table, r.id) for r in rows]
    existing, held = await lock_targets(conn, ctx, targets)
    new = [r for r in rows if r.cl % 2 == 1 and (table, r.id) not in existing and (table, r.id) not in held
           and not has_opaque(t, r.cols)]
    if ctx.fast_path and new and await insert_snapshot_rows(conn, t, new):  # the common case, set-based
        result.applied += len(new)
        done = {r.id for r in new}
        rows = [r for r in rows if r.id not in done]
        targets = [(table, r.id) for r in rows]
    values, rowver = await lock_and_load(conn, ctx, targets, locked=True)
    merged: list[_Row] = []
    for r in rows:
        key = (table, r.id)
        local = _state(rowver.get(key), values.get(key))
        incoming = RowState(r.cl, dict(r.cols), dict(r.prevs))
        result.conflicts.extend(state_conflicts(table, r.id, local, incoming))
        state = merge_states(local, incoming)
        if state == local:
            continue
        assert state is not None
        dirty = {c for c, cell in state.cols.items() if local is None or local.cols.get(c) != cell}
        if local is not None and state.cl != local.cl:
            dirty |= set(local.cols)
        row = _Row(t, r.id, key in values, state, _pseudo_change(table, r), [_pseudo_change(table, r)], dirty)
        merged.append(row)
    parked = await write_rows(conn, ctx.schema, peer, merged, rowver, result)
    await park(conn, peer, parked)
    result.parked = len(parked)
    await record_conflicts(conn, result.conflicts, {str(r.id): r.org_code for r in rows})
    await close_seen_rows(conn, table, snapshot)
    return result


async def loading(conn: asyncpg.Connection, parent: str) -> bool:
    """True while this node's own snapshot from ``parent`` is unfinished or has never run:
    its rows are not all here yet, so it neither pulls nor serves snapshots to its children."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM syncd.snapshot_progress WHERE peer = $1) "
        "OR NOT EXISTS (SELECT 1 FROM syncd.cursors WHERE peer = $1 AND kind = 'pull')", parent))


@dataclass
class Progress:
    table: str
    position: int
    after_id: uuid.UUID | None
    rows: int
    done: bool


async def progress(conn: asyncpg.Connection, peer: str) -> dict[str, Progress]:
    return {r["tbl"]: Progress(r["tbl"], r["position"], r["after_id"], r["rows"], r["done"])
            for r in await conn.fetch("SELECT * FROM syncd.snapshot_progress WHERE peer = $1", peer)}


async def save_progress(conn: asyncpg.Connection, peer: str, p: Progress) -> None:
    await conn.execute(
        "INSERT INTO syncd.snapshot_progress (peer, tbl, position, after_id, rows, done) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (peer, tbl) DO UPDATE SET position = excluded.position, "
        "after_id = excluded.after_id, rows = excluded.rows, done = excluded.done, updated_at = now()",
        peer, p.table, p.position, p.after_id, p.rows, p.done)


async def clear_progress(conn: asyncpg.Connection, peer: str) -> None:
    await conn.execute("DELETE FROM syncd.snapshot_progress WHERE peer = $1", peer)
