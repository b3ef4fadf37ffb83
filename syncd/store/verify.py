"""verify, the database part: read the rows a link shares, in id ranges (HC-33).

:func:`scan` yields the rows of one table in an id range as this node holds them —
``syncd.rowver`` (causal length, route homes, column versions) joined to the table's
values — projected with :func:`syncd.verify.link_row`.  A row in the table with no
version here (written with capture bypassed) comes as an *unversioned* row (cl 0);
a version whose table row is gone (deleted with capture bypassed) comes with NULL
values and its id in :attr:`Scan.missing`.

Callers run it inside :func:`read_snapshot`: one ``REPEATABLE READ`` read-only
transaction with ``TimeZone = UTC``, so every value is rendered the same at both
ends (``to_jsonb`` of a timestamptz follows the session's time zone) and a reply's
sums and position come from one snapshot.  :func:`serve_verify` is the parent's
answer to ``VerifyRequest`` (SPEC R9.3–R9.4).
"""
from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

import asyncpg

from syncd.config import Secret
from syncd.errors import SyncdError
from syncd.proto.change import Version
from syncd.proto.messages import IdRange, RangeSum, SnapshotRow, VerifyReply, VerifyRequest
from syncd.schema.declarations import Schema
from syncd.store.versioning import Capture, _derive, lookup_homes
from syncd.topology import Topology
from syncd.verify import UNVERSIONED_CL, RangeSummer, disjoint_sorted, link_row, span

SCAN_PREFETCH = 1000


@asynccontextmanager
async def read_snapshot(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """One consistent, read-only view of the node's data, values rendered in UTC."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        yield conn


@dataclass
class Scan:
    """The link-projected rows of a range, and ids versioned alive without a table row."""

    rows: list[SnapshotRow] = field(default_factory=list)
    missing: set[uuid.UUID] = field(default_factory=set)


def _query(table: str) -> str:
    return (
        "SELECT coalesce(r.id, x.id) AS id, r.org_code, r.cl, r.homes, r.v, x.j FROM "
        "(SELECT id, org_code, cl, homes, v FROM syncd.rowver WHERE tbl = $1 AND id >= $2 "
        " AND ($3::uuid IS NULL OR id < $3)) r FULL JOIN "
        f'(SELECT t.id, to_jsonb(t) AS j FROM public."{table}" t WHERE t.id >= $2 '
        " AND ($3::uuid IS NULL OR t.id < $3)) x ON x.id = r.id ORDER BY 1")


async def _unversioned(conn: asyncpg.Connection, schema: Schema, table: str,
                       images: list[tuple[uuid.UUID, dict]]) -> list[SnapshotRow]:
    caps = [Capture(0, 0, 0, table, "I", rid, None, img) for rid, img in images]
    homes = await lookup_homes(conn, schema, caps)
    return [SnapshotRow(rid, str(img.get("org_code")), UNVERSIONED_CL, homes.get((table, rid), {}), {})
            for rid, img in images]


@dataclass(frozen=True)
class Side:
    """Which end of the link parent–child this node is, and its id hash key: at a row's
    home, derived columns (``id_card_hash``) are computed when sending, not stored, so
    verify computes them the same way (HC-14)."""

    parent: str
    child: str
    me: str
    id_hash_key: Secret | None = None


async def scan_into(conn: asyncpg.Connection, schema: Schema, topo: Topology, side: Side,
                    table: str, rng: IdRange, sink: "RangeSummer | Scan") -> None:
    """Feed the link-projected rows of ``table`` in ``rng`` to ``sink`` (caller's transaction)."""
    t = schema[table]
    parent, child = side.parent, side.child
    shipped = t.shipped_set
    images: list[tuple[uuid.UUID, dict]] = []
    missing: set[uuid.UUID] = set()
    rows: list[SnapshotRow] = []

    def put(row: SnapshotRow) -> None:
        projected = link_row(t, row, parent, child, topo)
        if projected is None:
            return
        if isinstance(sink, Scan):
            rows.append(projected)
        else:
            sink.add(projected)

    async for r in conn.cursor(_query(table), table, rng.lo, rng.hi, prefetch=SCAN_PREFETCH):
        values = json.loads(r["j"]) if r["j"] is not None else None
        if r["cl"] is None:  # in the table, never versioned here
            images.append((r["id"], values or {}))
            continue
        if values is None and r["cl"] % 2 == 1:
            missing.add(r["id"])
        if values is not None and r["org_code"] == side.me:
            values |= _derive(t, values, side.id_hash_key)
        versions = json.loads(r["v"])
        cols = {c: ((values or {}).get(c), Version.from_list(v[:5])) for c, v in versions.items() if c in shipped}
        put(SnapshotRow(r["id"], r["org_code"], r["cl"], json.loads(r["homes"]), cols))
    for row in await _unversioned(conn, schema, table, images) if images else []:
        put(row)
    if isinstance(sink, Scan):
        sink.rows.extend(sorted(rows, key=lambda x: x.id.int))
        sink.missing |= missing & {x.id for x in rows}


async def scan(conn: asyncpg.Connection, schema: Schema, topo: Topology, side: Side,
               table: str, rng: IdRange) -> Scan:
    """The rows of ``table`` in ``rng`` that the link shares, in id order."""
    out = Scan()
    await scan_into(conn, schema, topo, side, table, rng, out)
    return out


async def sums(conn: asyncpg.Connection, schema: Schema, topo: Topology, side: Side,
               table: str, ranges: Sequence[IdRange]) -> list[RangeSum]:
    """Count and checksum of the shared rows per range (one scan when the ranges are in
    order and disjoint, else one per range)."""
    summer = RangeSummer(ranges)
    if not ranges:
        return []
    ordered = sorted(ranges, key=lambda r: r.lo.int)
    for rng in ([span(ordered)] if disjoint_sorted(ordered) else ordered):
        await scan_into(conn, schema, topo, side, table, rng, summer)
    return summer.sums()


async def outbox_head(conn: asyncpg.Connection, child: str) -> int:
    """The parent's newest log position for ``child``: what its pull cursor reaches when settled."""
    return int(await conn.fetchval("SELECT coalesce(max(pos), 0) FROM syncd.outbox WHERE peer = $1", child))


async def serve_verify(pool: asyncpg.Pool, schema: Schema, topo: Topology, me: str, child: str,
                       msg: VerifyRequest, id_hash_key: Secret | None = None) -> VerifyReply:
    """The parent's ``VerifyReply``: sums of what the link shares, at its outbox head for
    the child, both read in one snapshot (SPEC R9.3)."""
    if msg.table not in schema:
        raise SyncdError("UNKNOWN_TABLE", f"table {msg.table!r} is not replicated here")
    async with pool.acquire() as conn, read_snapshot(conn):
        head = await outbox_head(conn, child)
        out = await sums(conn, schema, topo, Side(me, child, me, id_hash_key), msg.table, msg.ranges)
    return VerifyReply(msg.table, head, tuple(out))
