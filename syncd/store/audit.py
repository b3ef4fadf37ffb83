"""The audit of what crossed each link (HC-15): one row per batch, never a value.

:func:`record` writes one ``syncd.audit`` row per batch sent to or received from a
peer: the peer, ``sent`` or ``received``, the batch id, a ``{table: count}`` map,
the number of changes, and the *names* of the reach-limited (personal) columns the
batch carried — e.g. ``["members.contact_phone"]`` for an ``up:1`` column.  Values
never enter the audit, so the table can be shown to anyone who may see the link.

Call it in the same transaction as the apply (received) or right after the peer
acknowledged the batch (sent); an empty batch (a summary-only push, an empty pull)
writes nothing.  Snapshot chunks are audited the same way by :func:`record_rows`,
named ``snapshot <table> (<after id>, <next id>]`` at both ends.
"""
from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Sequence

import asyncpg

from syncd.proto.change import Change, StoredChange
from syncd.proto.messages import SnapshotRow, StoredRow
from syncd.schema.declarations import SCHEMA, Schema

AuditDirection = Literal["sent", "received"]


def batch_tables(changes: Sequence[Change]) -> dict[str, int]:
    """``{table: number of changes}``, tables in first-seen order."""
    return dict(Counter(c.table for c in changes))


def personal_columns(changes: Sequence[Change | StoredChange], schema: Schema = SCHEMA) -> list[str]:
    """Sorted ``table.column`` names of reach-limited columns present in ``changes``."""
    personal = _personal(schema)  # an opaque column from a newer peer (HC-13) is never personal here
    out: set[str] = set()
    for c in changes:
        names = personal.get(c.table)
        carried = c.names
        if names and not names.isdisjoint(carried):
            out.update(f"{c.table}.{n}" for n in names.intersection(carried))
    return sorted(out)


_PERSONAL: dict[int, tuple[Schema, dict[str, frozenset[str]]]] = {}


def _personal(schema: Schema) -> dict[str, frozenset[str]]:
    """Reach-limited column names per table of ``schema`` (computed once per schema)."""
    hit = _PERSONAL.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = _PERSONAL[id(schema)] = (schema, {t.name: frozenset(c.name for c in t.columns if c.personal)
                                                for t in schema.tables})
    return hit[1]


async def record(conn: asyncpg.Connection, peer: str, direction: AuditDirection,
                 batch_id: uuid.UUID | str | None, changes: Sequence[Change],
                 schema: Schema = SCHEMA) -> int | None:
    """Write the audit row of one batch; return its id, or None for an empty batch.

    Raises ``ValueError`` for a direction other than ``sent``/``received``.
    """
    return await _insert(conn, peer, direction, batch_id, batch_tables(changes), len(changes),
                         personal_columns(changes, schema))


async def record_then(conn: asyncpg.Connection, peer: str, direction: AuditDirection,
                      batch_id: uuid.UUID | str | None, changes: Sequence[Change],
                      then: str, *args: object, schema: Schema = SCHEMA) -> None:
    """Write the audit row of one batch (none for an empty one) and run the statement ``then``
    (parameters ``$1…`` are ``args``; it may start with ``WITH``) in one statement: one round
    trip, and atomic on its own (it needs no transaction around it)."""
    if not changes:
        await conn.execute(then, *args)
        return
    row = _row(peer, direction, batch_id, batch_tables(changes), len(changes), personal_columns(changes, schema))
    then = _shift(then, len(row))
    rest = then[len("WITH "):] if then[:5].upper() == "WITH " else then
    joint = ", " if rest is not then else " "
    await conn.execute(f"WITH audited AS ({_INSERT}){joint}{rest}", *row, *args)


def _shift(sql: str, by: int) -> str:
    """``sql`` with its parameters renumbered ``$n`` → ``$(n + by)``."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", sql)


def snapshot_batch(table: str, after_id: uuid.UUID | None, next_after_id: uuid.UUID | None) -> str:
    """The name of a snapshot chunk in the audit, the same string at both ends."""
    return f"snapshot {table} ({after_id or 'start'}, {next_after_id or 'end'}]"


async def record_rows(conn: asyncpg.Connection, peer: str, direction: AuditDirection, batch_id: str,
                      table: str, rows: Sequence[SnapshotRow | StoredRow], schema: Schema = SCHEMA) -> int | None:
    """The audit row of snapshot rows of ``table`` that crossed a link (a snapshot chunk,
    or the rows verify read to name differences); None when there were none."""
    names = {name for r in rows for name in r.names}
    t = schema[table] if table in schema else None
    personal = sorted(f"{table}.{n}" for n in names if t is not None and n in t.shipped_set and t.column(n).personal)
    return await _insert(conn, peer, direction, batch_id, {table: len(rows)}, len(rows), personal)


_INSERT = ("INSERT INTO syncd.audit (peer, direction, batch_id, tables, changes, personal_columns) "
           "VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb)")


def _row(peer: str, direction: AuditDirection, batch_id: uuid.UUID | str | None, tables: dict[str, int],
         count: int, personal: list[str]) -> tuple[object, ...]:
    """The parameters of :data:`_INSERT`."""
    if direction not in ("sent", "received"):
        raise ValueError(f"audit direction must be 'sent' or 'received', not {direction!r}")
    return (peer, direction, str(batch_id) if batch_id is not None else None,
            json.dumps(tables, ensure_ascii=False), count, json.dumps(personal))


async def _insert(conn: asyncpg.Connection, peer: str, direction: AuditDirection, batch_id: uuid.UUID | str | None,
                  tables: dict[str, int], count: int, personal: list[str]) -> int | None:
    row = _row(peer, direction, batch_id, tables, count, personal)
    if not count:
        return None
    return int(await conn.fetchval(_INSERT + " RETURNING id", *row))


@dataclass(frozen=True)
class AuditRow:
    id: int
    peer: str
    direction: str
    at: str
    batch_id: str | None
    tables: dict[str, int]
    changes: int
    personal_columns: list[str]

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "peer": self.peer, "direction": self.direction, "at": self.at,
                "batch_id": self.batch_id, "tables": self.tables, "changes": self.changes,
                "personal_columns": self.personal_columns}


async def list_audit(conn: asyncpg.Connection, peer: str | None = None, limit: int = 100) -> list[AuditRow]:
    """The latest ``limit`` audit rows (of ``peer`` if given), newest first."""
    recs = await conn.fetch(
        "SELECT * FROM syncd.audit WHERE $1::text IS NULL OR peer = $1 ORDER BY id DESC LIMIT $2", peer, limit)

    def _j(v: object) -> object:
        return json.loads(v) if isinstance(v, str) else v

    return [AuditRow(r["id"], r["peer"], r["direction"], r["at"].isoformat(), r["batch_id"],
                     _j(r["tables"]), r["changes"], _j(r["personal_columns"])) for r in recs]  # type: ignore[arg-type]
