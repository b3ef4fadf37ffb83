"""Helpers of the tests that check the plans PostgreSQL makes for the daemon's statements."""
from __future__ import annotations

import asyncpg


async def drained_and_analysed(conn: asyncpg.Connection, *tables: str) -> None:
    """Bring each of ``tables`` to the state autovacuum leaves a drained queue in: pages but no
    rows, so that the planner estimates one row however many come to wait (and keep it there:
    no autovacuum truncates the table or counts its rows again while the test runs)."""
    for table in tables:
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        await conn.execute(f"DELETE FROM {table}")
        await conn.execute(f"ANALYZE {table}")
    states = await conn.fetch("SELECT relpages, reltuples FROM pg_class WHERE oid = ANY($1::regclass[])", tables)
    assert len(states) == len(tables) and all(pages > 0 and rows == 0 for pages, rows in states), states
