"""Narrowing a column's reach clears it where it may no longer be held (HC-16).

A column's reach (``all``, ``home``, ``up:N``; :func:`syncd.routing.column_reach`) decides
where its values travel; routing never sends a value outside it.  When a release narrows a
reach (``members.work_unit`` from ``all`` to ``home``, with the table's version bumped, so
every node takes the release before it talks to the others again: HC-13), the values 长沙市
and 湖南省 received under the old reach are still in their tables.  Each node clears them
itself at its daemon's start: the declarations are compared with the reach recorded in
``syncd.column_reach`` (migration 0013), and for every column whose reach changed, the values
this node holds at rows outside the new reach are set to NULL and their versions dropped, so
the node holds the column as one that never received it.  Nothing of it is logged or sent:
every node outside the new reach does the same for itself.  Done under the sequencer lock,
as syncd's own write (not captured).  The first start with this release checks every
reach-limited column once (the personal columns ``home`` since the start: nothing to clear).
"""
from __future__ import annotations

import asyncpg

from syncd.routing import column_reach
from syncd.schema.declarations import Column, Schema, Table
from syncd.store.sequencer import lock_applying
from syncd.topology import Topology, TopologyError


async def purge_narrowed(conn: asyncpg.Connection, schema: Schema, topo: Topology, me: str) -> dict[str, int]:
    """Clear the columns whose reach changed since it was recorded, outside their new reach;
    record the reaches.  Returns ``{"table.column": rows cleared}`` for those that cleared any."""
    recorded = {(r["tbl"], r["col"]): r["reach"] for r in await conn.fetch("SELECT tbl, col, reach FROM syncd.column_reach")}
    changed = [(t, c) for t in schema.tables for c in t.columns if recorded.get((t.name, c.name)) != c.reach]
    if not changed:
        return {}
    out: dict[str, int] = {}
    async with conn.transaction():
        await lock_applying(conn)  # no apply or tick meanwhile; these writes are syncd's own
        orgs: dict[str, list[str]] = {}
        for t, c in changed:
            if c.reach != "all":
                if t.name not in orgs:
                    orgs[t.name] = [r[0] for r in await conn.fetch(
                        f'SELECT DISTINCT org_code FROM public."{t.name}" WHERE org_code <> $1', me)]
                n = await _clear(conn, t, c, [o for o in orgs[t.name] if _outside(c, o, topo, me)])
                if n:
                    out[f"{t.name}.{c.name}"] = n
            await conn.execute("INSERT INTO syncd.column_reach (tbl, col, reach) VALUES ($1, $2, $3) "
                               "ON CONFLICT (tbl, col) DO UPDATE SET reach = excluded.reach", t.name, c.name, c.reach)
    return out


def _outside(c: Column, org: str, topo: Topology, me: str) -> bool:
    """May ``me`` not hold ``c`` of a row whose home is ``org``?  A ``home`` column is held at
    the home alone; an ``up:N`` column of a committee the tree does not know yet is kept (it
    is judged at a later start)."""
    try:
        allowed = column_reach(c.reach, org, topo)
    except TopologyError:
        return c.reach == "home"
    return allowed is not None and me not in allowed


async def _clear(conn: asyncpg.Connection, t: Table, c: Column, outside: list[str]) -> int:
    if not outside:
        return 0
    col = '"' + c.name.replace('"', '""') + '"'
    ids = [r["id"] for r in await conn.fetch(
        f'UPDATE public."{t.name}" SET {col} = NULL WHERE org_code = ANY($1::text[]) AND {col} IS NOT NULL '
        "RETURNING id", outside)]
    if ids:
        await conn.execute("UPDATE syncd.rowver SET v = (v::jsonb - $2)::json WHERE tbl = $1 AND id = ANY($3::uuid[])",
                           t.name, c.name, ids)
    return len(ids)
