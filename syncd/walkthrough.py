"""``syncd walkthrough``: capture on embedded PostgreSQL, shown step by step.

Starts an embedded cluster under ``--data-dir``, initialises 芙蓉区 (430102),
writes through plain SQL like any application would, and prints what the log
holds after each step — including the writes syncd refuses and why.
Exits non-zero if any check fails.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from syncd.store.db import ensure_database
from syncd.store.embedded import EmbeddedPostgres
from syncd.store.log import read_log
from syncd.store.migrate import init_node
from syncd.store.sequencer import Sequencer

ME = "430102"


def _show(title: str) -> None:
    print(f"\n== {title}")


async def _log_since(conn: asyncpg.Connection, after: int) -> int:
    await Sequencer(me=ME).drain(conn)
    changes = await read_log(conn, after)
    if len(changes) > 3:
        tables = sorted({c.table for c in changes})
        print(f"   log {changes[0].pos}-{changes[-1].pos}: {len(changes)} inserts into {', '.join(tables)}")
        return changes[-1].pos
    for c in changes:
        cols = ", ".join(f"{k}={v.value!r}" for k, v in c.cols.items() if k in ("name", "work_unit", "title"))
        print(f"   log {c.pos}: {c.op} {c.table} cl={c.cl} columns={sorted(c.cols)[:6]} {cols}")
    return changes[-1].pos if changes else after


async def run_walkthrough(data_dir: Path) -> int:
    failures = 0
    if data_dir.exists():
        shutil.rmtree(data_dir)
    pg = EmbeddedPostgres(data_dir / "pg").start()
    try:
        await ensure_database(pg.dsn(), "walkthrough")
        conn = await asyncpg.connect(pg.dsn("walkthrough"))
        try:
            _show("syncd init: schema, capture triggers, default 履职积分 rules (芙蓉区 430102)")
            res = await init_node(conn, ME)
            print(f"   incarnation {res.incarnation}, migrations {res.migrations_applied}")
            pos = await _log_since(conn, 0)
            _show("an application inserts a member with plain SQL")
            mid = await conn.fetchval(
                "INSERT INTO members (org_code, name, gender, id_card_no, mobile, work_unit) "
                "VALUES ($1, '刘文华', '女', '430102198003031234', '13800001111', '湖南大学') RETURNING id", ME)
            pos = await _log_since(conn, pos)
            _show("it updates one column; the log carries only that column")
            await conn.execute("UPDATE members SET work_unit = '中南大学' WHERE id = $1", mid)
            new_pos = await _log_since(conn, pos)
            failures += new_pos != pos + 1
            pos = new_pos
            _show("a rolled-back transaction and a no-op update leave nothing")
            tr = conn.transaction()
            await tr.start()
            await conn.execute("UPDATE members SET title = '教授' WHERE id = $1", mid)
            await tr.rollback()
            await conn.execute("UPDATE members SET work_unit = work_unit WHERE id = $1", mid)
            new_pos = await _log_since(conn, pos)
            failures += new_pos != pos
            print("   (nothing)" if new_pos == pos else "   UNEXPECTED log entries")
            _show("writes syncd refuses, each with a named error")
            for sql in ("UPDATE members SET org_code = '430104' WHERE id = $1",
                        "INSERT INTO members (org_code, name) VALUES ('430104', '别人的委员') RETURNING $1::uuid",
                        "TRUNCATE members CASCADE"):
                try:
                    await conn.execute(sql, mid) if "$1" in sql else await conn.execute(sql)
                    print(f"   NOT REFUSED: {sql}")
                    failures += 1
                except asyncpg.PostgresError as e:
                    print(f"   refused [{e.sqlstate}] {str(e).splitlines()[0]}")
        finally:
            await conn.close()
    finally:
        pg.stop()
    print("\nwalkthrough " + ("passed" if failures == 0 else f"FAILED ({failures} checks)"))
    return 0 if failures == 0 else 1
