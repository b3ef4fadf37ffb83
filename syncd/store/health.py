"""Capture health: are the capture triggers there, enabled, and does capture work? (HC-29)

Each bypass an operator can cause shows as a named problem:

* ``CAPTURE_TRIGGER_MISSING`` — a trigger was dropped, or the table recreated
  (``pg_restore`` of a single table, ``CREATE TABLE … AS``).
* ``CAPTURE_TRIGGER_DISABLED`` — ``ALTER TABLE … DISABLE TRIGGER`` (as
  ``pg_restore --disable-triggers`` does) or a trigger not set ``ENABLE ALWAYS``,
  which ``session_replication_role = replica`` would skip.
* ``TABLE_RECREATED`` — the table's oid differs from the one syncd installed on.
* ``TABLE_MISSING`` — a declared table is gone.
* ``CAPTURE_HEARTBEAT_FAILED`` — a probe write (rolled back) left no capture row.
"""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from syncd.schema.declarations import SCHEMA, Schema
from syncd.store.triggers import TRIGGER_NAMES


@dataclass(frozen=True)
class CaptureProblem:
    code: str
    table: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "table": self.table, "detail": self.detail}


async def _heartbeat(conn: asyncpg.Connection) -> bool:
    """Write a probe score rule in a transaction we roll back; True if it was captured."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(
            "INSERT INTO public.score_rules (org_code, rule_version, event, points) "
            "VALUES (syncd.self_id(), -1, 'syncd_heartbeat', 0)")
        n = await conn.fetchval(
            "SELECT count(*) FROM syncd.capture WHERE tbl = 'score_rules' AND xid = pg_current_xact_id() "
            "AND new->>'event' = 'syncd_heartbeat'")
        return bool(n)
    except asyncpg.PostgresError:
        return False
    finally:
        await tr.rollback()


async def capture_health(conn: asyncpg.Connection, schema: Schema = SCHEMA,
                         heartbeat: bool = True) -> list[CaptureProblem]:
    """Every capture problem found; an empty list means capture is healthy."""
    problems: list[CaptureProblem] = []
    installed = {r["tbl"]: r["table_oid"] for r in await conn.fetch("SELECT tbl, table_oid FROM syncd.capture_tables")}
    trig = await conn.fetch(
        "SELECT c.relname, t.tgname, t.tgenabled, c.oid FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND t.tgname LIKE 'syncd_%'")
    by_table: dict[str, dict[str, str]] = {}
    oids: dict[str, int] = {}
    for r in trig:
        enabled = r["tgenabled"].decode() if isinstance(r["tgenabled"], bytes) else str(r["tgenabled"])
        by_table.setdefault(r["relname"], {})[r["tgname"]] = enabled
        oids[r["relname"]] = r["oid"]
    for t in schema.tables:
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", f'public."{t.name}"')
        if oid is None:
            problems.append(CaptureProblem("TABLE_MISSING", t.name, "the replicated table does not exist"))
            continue
        if t.name in installed and installed[t.name] != oid:
            problems.append(CaptureProblem("TABLE_RECREATED", t.name,
                                           "the table was recreated after syncd init; run syncd init"))
        have = by_table.get(t.name, {})
        for name in TRIGGER_NAMES:
            if name not in have:
                problems.append(CaptureProblem("CAPTURE_TRIGGER_MISSING", t.name,
                                               f"trigger {name} is missing; run syncd init"))
            elif have[name] != "A":
                problems.append(CaptureProblem(
                    "CAPTURE_TRIGGER_DISABLED", t.name,
                    f"trigger {name} is not enabled ALWAYS (state {have[name]!r}); "
                    "writes are not captured: run syncd init, then check the rows written meanwhile"))
    if heartbeat and not problems:
        problems += await heartbeat_problems(conn)
    return problems


async def heartbeat_problems(conn: asyncpg.Connection) -> list[CaptureProblem]:
    """``[CAPTURE_HEARTBEAT_FAILED]`` when a probe write (rolled back) left no capture row
    (a capture function replaced by one that records nothing, say), else ``[]``."""
    if await _heartbeat(conn):
        return []
    return [CaptureProblem("CAPTURE_HEARTBEAT_FAILED", "score_rules", "a probe write was not captured")]


async def capture_backlog(conn: asyncpg.Connection) -> int:
    """Captured rows not yet versioned into the log."""
    return int(await conn.fetchval("SELECT count(*) FROM syncd.capture"))
