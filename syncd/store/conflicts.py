"""Conflicts for operators: list, resolve, and close when a resolution arrives (HC-17).

A conflict is recorded wherever two truly concurrent versions of a column meet,
with the same id everywhere (``merge.conflict_id``).  Resolving is an ordinary
write of the chosen value at this node — captured, versioned above both
conflicting versions, replicated like any change.  Every node that then receives
(or makes) a version of that cell whose ``prev`` is at least the conflict's
winner closes its copy of the conflict: the writer had seen it.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, Sequence

import asyncpg

from syncd.errors import OperatorRequestError

from syncd.proto.change import Change, Version
from syncd.proto.messages import SnapshotRow, StoredRow
from syncd.schema.declarations import SCHEMA, Schema


class ConflictError(OperatorRequestError):
    """A resolve request that cannot be carried out (code and hint in the message)."""


@dataclass(frozen=True)
class ConflictRow:
    id: str
    table: str
    row_id: uuid.UUID
    org_code: str
    column: str
    winner: tuple[Any, Version]
    loser: tuple[Any, Version]
    detected_at: str
    resolved_at: str | None
    resolution: Any

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "table": self.table, "row_id": str(self.row_id), "org_code": self.org_code,
                "column": self.column,
                "winner": {"value": self.winner[0], "version": self.winner[1].as_list()},
                "loser": {"value": self.loser[0], "version": self.loser[1].as_list()},
                "detected_at": self.detected_at, "resolved_at": self.resolved_at, "resolution": self.resolution}


def _cell(raw: str) -> tuple[Any, Version]:
    value, ver = json.loads(raw)
    return value, Version.from_list(ver)


def _row(r: asyncpg.Record) -> ConflictRow:
    return ConflictRow(r["id"], r["tbl"], r["row_id"], r["org_code"], r["col"], _cell(r["winner"]),
                       _cell(r["loser"]), r["detected_at"].isoformat(),
                       r["resolved_at"].isoformat() if r["resolved_at"] else None,
                       json.loads(r["resolution"]) if r["resolution"] else None)


async def list_conflicts(conn: asyncpg.Connection, include_resolved: bool = False) -> list[ConflictRow]:
    where = "" if include_resolved else "WHERE resolved_at IS NULL"
    return [_row(r) for r in await conn.fetch(f"SELECT * FROM syncd.conflicts {where} ORDER BY detected_at, id")]


async def resolve(conn: asyncpg.Connection, conflict_id: str, take: Literal["local", "remote", "value"],
                  value: Any = None, schema: Schema = SCHEMA) -> ConflictRow:
    """Write the chosen value of the conflicting cell here and close the conflict.

    ``local`` keeps what this node's table holds now, ``remote`` takes the other
    version's value, ``value`` writes ``value``.  The write is an ordinary local
    write (the check triggers decide whether this node may write that column).
    """
    rec = await conn.fetchrow("SELECT * FROM syncd.conflicts WHERE id = $1", conflict_id)
    if rec is None:
        raise ConflictError("UNKNOWN_CONFLICT", f"no conflict {conflict_id} at this node",
                            "list them with: syncd conflicts")
    c = _row(rec)
    if c.resolved_at is not None:
        raise ConflictError("ALREADY_RESOLVED", f"conflict {conflict_id} was resolved at {c.resolved_at}")
    if c.table not in schema:
        raise ConflictError("UNKNOWN_TABLE", f"table {c.table} is not replicated")
    col = c.column
    async with conn.transaction():
        current = await conn.fetchval(f'SELECT to_jsonb(t)->$2 FROM public."{c.table}" t WHERE id = $1',
                                      c.row_id, col)
        if current is None and take != "value":
            raise ConflictError("ROW_GONE", f"{c.table} {c.row_id} is not held here any more")
        here = json.loads(current) if isinstance(current, str) else current
        chosen = {"local": here, "remote": c.loser[0] if here == c.winner[0] else c.winner[0],
                  "value": value}[take]
        await conn.execute(
            f'UPDATE public."{c.table}" t SET "{col}" = x."{col}" '
            f'FROM jsonb_populate_record(NULL::public."{c.table}", $2::jsonb) x WHERE t.id = $1',
            c.row_id, json.dumps({col: chosen}, ensure_ascii=False))
        if chosen == here:  # an unchanged value ships nothing: record an explicit capture of the cell
            await conn.execute(
                "INSERT INTO syncd.capture (stmt_ts, tbl, op, row_id, old, new) "
                f'SELECT clock_timestamp(), $2, \'U\', t.id, (to_jsonb(t) - $3)::json, to_json(t) '
                f'FROM public."{c.table}" t WHERE t.id = $1', c.row_id, c.table, col)
        await conn.execute(
            "UPDATE syncd.conflicts SET resolved_at = now(), resolution = $2 WHERE id = $1",
            conflict_id, json.dumps({"take": take, "value": chosen}, ensure_ascii=False))
    rec = await conn.fetchrow("SELECT * FROM syncd.conflicts WHERE id = $1", conflict_id)
    return _row(rec)


#: the open conflicts of the rows ($1 tables, $2 ids), through the partial index
#: ``conflicts_open`` (migration 0012): resolved conflicts, kept for the record, are never read
OPEN_BY_ROW = ("SELECT c.id, c.tbl, c.row_id, c.col, c.winner FROM syncd.conflicts c "
               "JOIN unnest($1::text[], $2::uuid[]) k(tbl, id) ON c.tbl = k.tbl AND c.row_id = k.id "
               "WHERE c.resolved_at IS NULL")


#: what a write that names the versions it replaced closes: (table, row id, {column: (the
#: version replaced, the value written, who wrote it)})
Seen = tuple[str, uuid.UUID, dict[str, tuple[Version, Any, str]]]


_PREV = itemgetter(3)  # a column change's prev: None, or a version (a non-empty tuple, true)


async def close_seen(conn: asyncpg.Connection, changes: Sequence[Change]) -> int:
    """Close open conflicts whose cell got a version written by someone who saw them."""
    # only a column write that names the version it replaced can have seen a conflict: a batch
    # of new rows (a catch-up, live inserts) has none, and asks nothing
    return await _close(conn, [(c.table, c.id, {k: (cc.prev, cc.value, c.origin) for k, cc in c.other.items()
                                                if cc.prev is not None})
                               for c in changes if any(map(_PREV, c.other.values()))])


async def close_seen_rows(conn: asyncpg.Connection, table: str, rows: Sequence[SnapshotRow | StoredRow]) -> int:
    """:func:`close_seen` for snapshot rows: a cell whose version replaced the conflict's winner
    (or a later one) closes it, as the change that wrote it would have (DESIGN §5: a
    resolution closes a conflict everywhere, a node that resyncs after it too)."""
    return await _close(conn, [(table, r.id, {k: (p, r.cols[k][0], r.cols[k][1].origin)
                                              for k, p in r.prevs.items() if k in r.cols})
                               for r in rows if r.has_prevs])


async def _close(conn: asyncpg.Connection, seen: list[Seen]) -> int:
    keys = {(t, i) for t, i, _ in seen}
    if not keys:
        return 0
    open_ = await conn.fetch(OPEN_BY_ROW, [k[0] for k in keys], [k[1] for k in keys])
    closed = 0
    for r in open_:
        winner = _cell(r["winner"])[1]
        for table, rid, cols in seen:
            hit = cols.get(r["col"]) if (table, rid) == (r["tbl"], r["row_id"]) else None
            if hit is not None and hit[0] >= winner:
                await conn.execute(
                    "UPDATE syncd.conflicts SET resolved_at = now(), resolution = $2 WHERE id = $1",
                    r["id"], json.dumps({"closed_by": hit[2], "value": hit[1]}, ensure_ascii=False))
                closed += 1
                break
    return closed
