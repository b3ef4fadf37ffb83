"""Test support: one embedded PostgreSQL cluster per test session, a fresh database per test.

Databases are cloned from a template that already carries syncd's migrations,
so each test starts from a real, empty 政协云 schema in ~50 ms.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from pathlib import Path

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

    async def _ensure_template(self) -> None:
        if self._template_ready:
            return
        admin = await asyncpg.connect(self.dsn())
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.dsn(TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._template_ready = True

    async def new_database(self, prefix: str = "t", migrated: bool = True) -> str:
        """Create an empty database (with syncd's migrations unless ``migrated`` is False)."""
        await self._ensure_template()
        name = f"{prefix}_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        admin = await asyncpg.connect(self.dsn())
        try:
            tmpl = TEMPLATE if migrated else "template0"
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE {tmpl}')
        finally:
            await admin.close()
        return self.dsn(name)

    async def new_node_db(self, node_id: str, prefix: str = "n") -> str:
        """A database initialised as node ``node_id`` (schema, triggers, default rules)."""
        dsn = await self.new_database(f"{prefix}{node_id}")
        conn = await asyncpg.connect(dsn)
        try:
            await init_node(conn, node_id)
            await Sequencer(me=node_id).drain(conn)
        finally:
            await conn.close()
        return dsn

    async def drop(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        admin = await asyncpg.connect(self.dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
