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
from syncd.proto.change import OP_DELETE, OP_INSERT, Change
from syncd.proto.messages import SnapshotRow, StoredRow, json_text
from syncd.routing import column_reach, reach, reach_rule
from syncd.schema.declarations import Schema
from syncd.store.apply import (ApplyContext, ApplyResult, _Row, _state, lock_and_load, lock_span, park,
                               record_conflicts, write_rows)
from syncd.store.conflicts import close_seen_rows
from syncd.store.fastpath import insert_snapshot_rows
from syncd.store.log import decode_homes, loads
from syncd.store.opaque import has_opaque
from syncd.topology import Topology, TopologyError


def _keep(table: Any, names: tuple[str, ...], held: frozenset[str], homes_text: str, homes: dict[str, str],
          org_code: str, behind: frozenset[str], topo: Topology) -> tuple[str, ...] | None:
    """The columns of a row holding versions for ``names`` (``held``: those kept opaque here,
    HC-13) that may cross to ``behind``, in code-point order (the wire's, R4.2); None: the
    row does not cross at all.  Depends on the table, the names, homes and org_code only, so
    it is memoised per tree."""
    key = ("snapshot_keep", table.name, names, held, homes_text, org_code, behind)
    keep = topo.memo.get(key, _MISSING)
    if keep is _MISSING:
        if len(topo.memo) > 100_000:
            topo.memo.clear()
        keep = topo.memo[key] = _columns_crossing(
            table, sorted(n for n in names if n in table.shipped_set or n in held), homes, org_code, behind, topo)
    return keep  # type: ignore[return-value]


_MISSING = object()
_NONE: frozenset[str] = frozenset()


def _columns_crossing(table: Any, names: list[str], homes: dict[str, str], org_code: str, behind: frozenset[str],
                      topo: Topology) -> tuple[str, ...] | None:
    try:
        reached = reach(table, homes, topo) & behind
    except TopologyError:
        return None
    if not reached:
        return None
    out = []
    for name in names:
        allowed = column_reach(reach_rule(table, name), org_code, topo)
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
                     max_bytes: int = MAX_BATCH_BYTES) -> tuple[list[StoredRow], uuid.UUID | None]:
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
    out: list[StoredRow] = []
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
        # versions are syncd's own 64-bit integers and node codes: orjson reads them exactly;
        # they go on as stored, [cl, round, stage, ts, origin, prev|null] (StoredRow)
        text = r["v"]
        stored = orjson.loads(text)
        names = tuple(stored)
        homes = decode_homes(r["homes"])
        keep = _keep(t, names, frozenset(held) if held else _NONE, r["homes"], homes, r["org_code"], behind, topo)
        if keep is None:
            continue
        vals = {n: values.get(n) for n in keep}  # a tombstone's, or a column's without a value: null
        # held as two texts until they are sent, not as objects per cell; when every column
        # crosses, the versions go as stored
        if len(keep) < len(names):
            text, names = json_text({n: stored[n] for n in keep}), keep
        out.append(StoredRow(r["id"], r["org_code"], r["cl"], homes, vals_json=json_text(vals), vers_json=text,
                             names=names))
        total += size
    return out, nxt


def _pseudo_change(table: str, row: SnapshotRow) -> Change:
    """A stand-in change for bookkeeping (homes, org_code) of a snapshot row."""
    return Change(table, row.id, row.org_code, OP_INSERT if row.cl % 2 else OP_DELETE, row.cl, 0,
                  row.org_code, 0, dict(row.homes), {}, 0)


async def merge_chunk(conn: asyncpg.Connection, ctx: ApplyContext, peer: str, table: str,
                      rows: Sequence[SnapshotRow | StoredRow]) -> ApplyResult:
    """Merge snapshot rows into this node (caller's transaction, ``syncd.applying`` on).
    New live rows go in set-based as they came (a :class:`StoredRow` is not taken apart);
    the others are merged row by row through their :class:`SnapshotRow` view."""
    result = ApplyResult()
    if not rows:
        return result
    snapshot = rows  # all of them: the set-based insert below takes some out of ``rows``
    t = ctx.schema[table]
    existing, held = await lock_span(conn, ctx, table, [r.id for r in rows])
    new = [r for r in rows if r.cl % 2 == 1 and (table, r.id) not in existing and (table, r.id) not in held
           and not has_opaque(t, r.names)]
    if ctx.fast_path and new and await insert_snapshot_rows(conn, t, new):  # the common case, set-based
        result.applied += len(new)
        done = {r.id for r in new}
        rows = [r for r in rows if r.id not in done]
    values, rowver = (await lock_and_load(conn, ctx, [(table, r.id) for r in rows], locked=True) if rows
                      else ({}, {}))
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
