"""Columns this node cannot store yet: kept opaque until its upgrade (HC-13, SPEC R3.4).

A tree upgrades one IT room at a time.  When 湖南省 and 芙蓉区 run a release that adds
``members.wechat_id`` and 长沙市 between them does not, the city still merges, relays
and serves that column:

* its **versions** live in ``syncd.rowver`` like every other column's, so the merge of
  a later change is decided exactly as at an upgraded node;
* its **values** live in ``syncd.opaque`` (``{column: value}`` per row), written by the
  same apply and snapshot merges that write the table (:func:`save`), read beside the
  table's own values (:func:`load`), and served in snapshots;
* the log keeps the change as received, so pulls and pushes relay the column intact.

After the upgrade adds the column (``syncd init`` with the new release), the daemon's
start-up :func:`promote` writes the held values into the table in one transaction,
under the sequencer lock and with the capture triggers standing aside: the versions are
already there, so nothing is logged again and nothing conflicts.

A column counts as opaque when the node's declarations do not ship it.  A declared
column the table lacks is refused at start-up (:func:`missing_columns`), so "declared"
and "storable" mean the same thing while a daemon runs.
"""
from __future__ import annotations

import json
import uuid
from typing import Iterable, Mapping

import asyncpg

from syncd.schema.declarations import Schema, Table

Key = tuple[str, uuid.UUID]


class PromoteError(RuntimeError):
    """Held values cannot be written into an upgraded column (named in the message)."""


async def load(conn: asyncpg.Connection, table: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """Opaque values held for these rows of ``table``."""
    recs = await conn.fetch("SELECT id, vals FROM syncd.opaque WHERE tbl = $1 AND id = ANY($2::uuid[])", table, ids)
    return {r["id"]: json.loads(r["vals"]) for r in recs}


def has_opaque(t: Table, columns: Iterable[str]) -> bool:
    """Some of ``columns`` is not a column ``t`` ships here."""
    return not t.shipped_set.issuperset(columns)


async def save(conn: asyncpg.Connection, rows: Mapping[Key, dict | None]) -> None:
    """Replace the opaque values of rows (``None`` or empty: the row holds none any more)."""
    keep = [(k[0], k[1], json.dumps(v, ensure_ascii=False)) for k, v in rows.items() if v]
    drop = [k for k, v in rows.items() if not v]
    if keep:
        await conn.execute(
            "INSERT INTO syncd.opaque (tbl, id, vals) SELECT * FROM unnest($1::text[], $2::uuid[], $3::jsonb[]) "
            "ON CONFLICT (tbl, id) DO UPDATE SET vals = excluded.vals", *[list(c) for c in zip(*keep)])
    if drop:
        await conn.execute(
            "DELETE FROM syncd.opaque o USING unnest($1::text[], $2::uuid[]) AS k(tbl, id) "
            "WHERE o.tbl = k.tbl AND o.id = k.id", [k[0] for k in drop], [k[1] for k in drop])


async def held(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """What waits for an upgrade: rows per table and column (for status)."""
    recs = await conn.fetch(
        "SELECT tbl, k AS col, count(*) AS n FROM syncd.opaque, jsonb_object_keys(vals) AS k "
        "GROUP BY tbl, k ORDER BY tbl, k")
    return [{"table": r["tbl"], "column": r["col"], "rows": r["n"]} for r in recs]


async def missing_columns(conn: asyncpg.Connection, schema: Schema) -> list[str]:
    """Declared shipped columns the database's tables do not have (``table.column``)."""
    recs = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = ANY($1::text[])", [t.name for t in schema.tables])
    present = {(r["table_name"], r["column_name"]) for r in recs}
    return [f"{t.name}.{c}" for t in schema.tables for c in t.shipped_names if (t.name, c) not in present]


async def promote(conn: asyncpg.Connection, schema: Schema) -> dict[str, int]:
    """Write held values of columns the tables now have into the tables; rows written per
    ``table.column``.  One transaction, sequencer lock held, triggers standing aside."""
    from syncd.store.sequencer import lock_applying

    done: dict[str, int] = {}
    async with conn.transaction():
        await lock_applying(conn)
        held_cols = await conn.fetch("SELECT DISTINCT tbl, jsonb_object_keys(vals) AS col FROM syncd.opaque")
        for r in held_cols:
            tbl, col = r["tbl"], r["col"]
            if tbl not in schema or col not in schema[tbl].shipped_set:
                continue
            name, q = f'public."{tbl}"', '"' + col.replace('"', '""') + '"'
            # only where this node still holds the column's version (a row re-created here
            # since has started its columns afresh)
            try:
                status = await conn.execute(
                    f"UPDATE {name} t SET {q} = x.{q} FROM syncd.opaque o "
                    f"JOIN syncd.rowver rv ON rv.tbl = o.tbl AND rv.id = o.id, "
                    f"jsonb_populate_record(NULL::{name}, o.vals) x "
                    "WHERE o.tbl = $1 AND o.vals ? $2 AND rv.v::jsonb ? $2 AND t.id = o.id", tbl, col)
            except asyncpg.PostgresError as e:  # nothing is promoted; the daemon does not start half-upgraded
                raise PromoteError(f"OPAQUE_PROMOTE_FAILED: held values of {tbl}.{col} do not fit the upgraded "
                                   f"column ({type(e).__name__}); they stay held. Check that this node's migration "
                                   "gives the column the type the newer nodes use") from e
            done[f"{tbl}.{col}"] = int(status.split()[-1])
            await conn.execute("UPDATE syncd.opaque SET vals = vals - $2 WHERE tbl = $1 AND vals ? $2", tbl, col)
        await conn.execute("DELETE FROM syncd.opaque WHERE vals = '{}'::jsonb")
    return done
