"""Test support: one embedded PostgreSQL cluster per test session, a fresh database per test.

Databases are cloned from a template that already carries syncd's migrations,
so each test starts from a real, empty 政协云 schema in ~50 ms.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import asyncpg

from syncd.store.embedded import EmbeddedPostgres
from syncd.store.migrate import init_node, migrate
from syncd.store.sequencer import Sequencer

TEMPLATE = "syncd_template"
_counter = itertools.count()


class Cluster:
    """The session's PostgreSQL cluster."""

    def __init__(self) -> None:
        base = Path(os.environ.get("SYNCD_TEST_DIR") or tempfile.mkdtemp(prefix="syncd-test-"))
        base = base / os.environ.get("PYTEST_XDIST_WORKER", "main")  # one cluster per test worker
        self.pg = EmbeddedPostgres(base / "cluster", settings={"fsync": "off", "synchronous_commit": "off",
                                                               "full_page_writes": "off"})
        self._template_ready = False

    def start(self) -> "Cluster":
        self.pg.start()
        return self

    def stop(self) -> None:
        self.pg.destroy()

    def dsn(self, db: str = "postgres") -> str:
        return self.pg.dsn(db)

    @asynccontextmanager
    async def connect(self, dsn: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A connection to ``dsn`` (default: the cluster's ``postgres`` database), closed after."""
        conn = await asyncpg.connect(dsn or self.dsn())
        try:
            yield conn
        finally:
            await conn.close()

    async def _ensure_template(self) -> None:
        if self._template_ready:
            return
        async with self.connect() as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        async with self.connect(self.dsn(TEMPLATE)) as conn:
            await migrate(conn)
        self._template_ready = True

    async def new_database(self, prefix: str = "t", migrated: bool = True) -> str:
        """Create an empty database (with syncd's migrations unless ``migrated`` is False)."""
        await self._ensure_template()
        name = f"{prefix}_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        async with self.connect() as admin:
            tmpl = TEMPLATE if migrated else "template0"
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE {tmpl}')
        return self.dsn(name)

    async def new_node_db(self, node_id: str, prefix: str = "n") -> str:
        """A database initialised as node ``node_id`` (schema, triggers, default rules)."""
        dsn = await self.new_database(f"{prefix}{node_id}")
        async with self.connect(dsn) as conn:
            await init_node(conn, node_id)
            await Sequencer(me=node_id).drain(conn)
        return dsn

    async def drop(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        async with self.connect() as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
