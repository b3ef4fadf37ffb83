"""Where a node's database is: the configured DSN, or embedded PostgreSQL.

A node without ``dsn`` gets an embedded cluster under ``<data_dir>/pg`` and a
database named ``syncd_<node id>`` in it (created on first use).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncpg

from syncd.config import Config
from syncd.store.embedded import EmbeddedPostgres


@dataclass
class Database:
    dsn: str
    embedded: EmbeddedPostgres | None = None

    def close(self) -> None:
        """Stop the embedded server this process started (a configured DSN is left alone)."""
        if self.embedded is not None and self.embedded.started_here:
            self.embedded.stop()


#: Every statement a node runs is planned for the parameters it runs with.  PostgreSQL plans
#: a prepared statement generically from its sixth run on and keeps that plan, built on the
#: table sizes of that moment, until the next ANALYZE.  A node that starts empty (a new node,
#: a province before its counties report) so kept a sequential scan for its row lookups by
#: an id array (``id = ANY($1)``) while the table grew: 60 ms at 4k member rows, 230 ms at
#: 9k, each apply — quadratic until autovacuum came by.  Planned each time these are index
#: probes; the planning costs PostgreSQL ~20 µs a statement (bench latency scenario, idle).
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def open_pool(dsn: str, reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None) -> asyncpg.Pool:
    """The node's connection pool, each session with :data:`SESSION_SETTINGS`."""
    return await asyncpg.create_pool(dsn, min_size=2, max_size=8, reset=reset, server_settings=SESSION_SETTINGS)


async def ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def open_database(cfg: Config) -> Database:
    """Resolve the node's database, starting embedded PostgreSQL when no DSN is set."""
    if cfg.node.dsn:
        return Database(cfg.node.dsn)
    pg = EmbeddedPostgres(cfg.node.data_dir / "pg").start()
    name = f"syncd_{cfg.node.id}"
    await ensure_database(pg.dsn(), name)
    return Database(pg.dsn(name), pg)
