"""Schema migrations and ``syncd init``.

Migrations are the numbered files in ``syncd/schema/migrations``; the applied
ones are recorded in ``syncd.schema_version``.  :func:`init_node` is idempotent:
run twice it changes nothing; run on a database at an older schema version it
upgrades it; run on a populated 政协云 database it brings the existing rows into
the log (HC-20).  Concurrent inits serialise on an advisory lock.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from importlib import resources

import asyncpg

from syncd.schema.declarations import SCHEMA, Schema
from syncd.store.triggers import all_trigger_sql

_INIT_LOCK = 0x5379_6E63_0001  # 'Sync' 1: serialises init/migrate
_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


class InitError(RuntimeError):
    """init cannot proceed (named in the message, with what to do)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every shipped migration, in version order."""
    out = []
    for entry in resources.files("syncd.schema.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda x: x.version)


LATEST = migrations()[-1].version


async def schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('syncd.schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM syncd.schema_version"))


async def migrate(conn: asyncpg.Connection, target: int | None = None) -> list[int]:
    """Apply pending migrations up to ``target`` (default: latest); return those applied."""
    applied = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK)
        await conn.execute("CREATE SCHEMA IF NOT EXISTS syncd")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS syncd.schema_version (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        current = await schema_version(conn)
        for m in migrations():
            if m.version <= current or (target is not None and m.version > target):
                continue
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO syncd.schema_version (version, name) VALUES ($1, $2)",
                               m.version, m.name)
            applied.append(m.version)
    return applied


@dataclass(frozen=True)
class InitResult:
    node_id: str
    incarnation: uuid.UUID
    created: bool
    migrations_applied: list[int]
    rows_seeded: int


async def _ensure_node_row(conn: asyncpg.Connection, node_id: str) -> tuple[uuid.UUID, bool]:
    row = await conn.fetchrow("SELECT id, incarnation FROM syncd.node")
    if row is None:
        inc = uuid.uuid4()
        await conn.execute("INSERT INTO syncd.node (id, incarnation) VALUES ($1, $2)", node_id, inc)
        return inc, True
    if row["id"] != node_id:
        raise InitError(
            f"NODE_ID_MISMATCH: this database belongs to node {row['id']}, the config says {node_id}; "
            "point the config at the right database or fix [node] id")
    return row["incarnation"], False


async def _seed_existing_rows(conn: asyncpg.Connection, schema: Schema, node_id: str) -> int:
    """Capture a full image of every home row not yet versioned (HC-20)."""
    total = 0
    for t in schema.tables:
        status = await conn.execute(
            f"""INSERT INTO syncd.capture (stmt_ts, tbl, op, row_id, old, new)
                SELECT clock_timestamp(), $1, 'I', t.id, NULL, to_json(t) FROM public."{t.name}" t
                 WHERE t.org_code = $2
                   AND NOT EXISTS (SELECT 1 FROM syncd.rowver r WHERE r.tbl = $1 AND r.id = t.id)
                   AND NOT EXISTS (SELECT 1 FROM syncd.capture c WHERE c.tbl = $1 AND c.row_id = t.id)
                 ORDER BY t.id""",
            t.name, node_id)
        total += int(status.split()[-1])
    return total


async def init_node(conn: asyncpg.Connection, node_id: str, schema: Schema = SCHEMA,
                    target: int | None = None) -> InitResult:
    """Create or upgrade syncd in this database for ``node_id`` (idempotent)."""
    applied = await migrate(conn, target)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK)
        incarnation, created = await _ensure_node_row(conn, node_id)
        await conn.execute(all_trigger_sql(schema))
        seeded = await _seed_existing_rows(conn, schema, node_id)
        if await conn.fetchval("SELECT to_regprocedure('syncd.seed_default_rules(text)') IS NOT NULL"):
            await conn.execute("SELECT syncd.seed_default_rules($1)", node_id)
    return InitResult(node_id, incarnation, created, applied, seeded)
