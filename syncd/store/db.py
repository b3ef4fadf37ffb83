"""Where a node's database is: the configured DSN, or embedded PostgreSQL.

A node without ``dsn`` gets an embedded cluster under ``<data_dir>/pg`` and a
database named ``syncd_<node id>`` in it (created on first use).
"""
from __future__ import annotations

from dataclasses import dataclass

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
