"""Ceilings: what PostgreSQL alone does with the same rows on the same cluster.

* ``copy_single``: one COPY of N member rows into an empty table (the reference rate);
* ``copy_1k_txn``: the same rows, COPY in 1k-row transactions;
* ``upsert_batched``: staged COPY + ``INSERT … ON CONFLICT (id) DO UPDATE`` in 5k-row
  batches into a table already holding N rows (the set-based apply sketch of DESIGN §5);
* ``update_batched``: staged COPY + ``UPDATE … FROM`` of U rows in 1k-row batches.

The tables are ``LIKE members INCLUDING ALL`` (same columns, defaults, checks, indexes),
without syncd's triggers.
"""
from __future__ import annotations

import asyncpg

from bench.harness import MEMBER_COLS, Run, Timer, member_rows

SCENARIO = "ceilings"


async def run(r: Run) -> None:
    n, u = r.size.rows, r.size.updates
    rows = member_rows("430102", n, seed=1)
    other = member_rows("430102", n, seed=2, start=n)
    dsn = await r.cluster.new_database("ceil")
    conn = await asyncpg.connect(dsn)
    try:
        for t in ("m_single", "m_1k", "m_upsert"):
            await conn.execute(f"CREATE TABLE {t} (LIKE members INCLUDING ALL)")
        await conn.execute("CREATE UNLOGGED TABLE stage (LIKE members INCLUDING DEFAULTS)")
        await conn.execute("CREATE UNLOGGED TABLE ustage (id uuid, work_unit text, title text)")

        await r.cluster.checkpoint()
        with Timer() as tm:
            await conn.copy_records_to_table("m_single", records=rows, columns=MEMBER_COLS)
        r.rates["copy_single"] = n / tm.s
        r.add(SCENARIO, f"single COPY of {n} member rows", n / tm.s, "rows/s", "copy_single", 1.0)
        size = await conn.fetchval("SELECT avg(pg_column_size(t.*))::int FROM m_single t")
        r.extra["avg_row_bytes"] = size
        r.add(SCENARIO, "average member row size (pg_column_size)", size, "bytes")

        await r.cluster.checkpoint()
        with Timer() as tm:
            for i in range(0, n, 1000):
                async with conn.transaction():
                    await conn.copy_records_to_table("m_1k", records=rows[i:i + 1000], columns=MEMBER_COLS)
        r.rates["copy_1k_txn"] = n / tm.s
        r.add(SCENARIO, "COPY in 1k-row transactions", n / tm.s, "rows/s", "copy_single",
              r.ratio_to("copy_single", n / tm.s))

        await conn.copy_records_to_table("m_upsert", records=other, columns=MEMBER_COLS)
        cols = ", ".join(MEMBER_COLS)
        sets = ", ".join(f"{c} = excluded.{c}" for c in MEMBER_COLS if c != "id")
        await r.cluster.checkpoint()
        with Timer() as tm:
            for i in range(0, n, 5000):
                async with conn.transaction():
                    await conn.execute("TRUNCATE stage")
                    await conn.copy_records_to_table("stage", records=rows[i:i + 5000], columns=MEMBER_COLS)
                    await conn.execute(f"INSERT INTO m_upsert ({cols}) SELECT {cols} FROM stage "
                                       f"ON CONFLICT (id) DO UPDATE SET {sets}")
        r.rates["upsert_batched"] = n / tm.s
        r.add(SCENARIO, "staged COPY + upsert, 5k-row batches, populated table", n / tm.s, "rows/s",
              "copy_single", r.ratio_to("copy_single", n / tm.s))

        upd = [(row[0], "长沙理工大学交通学院", "院长") for row in rows[:u]]
        await r.cluster.checkpoint()
        with Timer() as tm:
            for i in range(0, u, 1000):
                async with conn.transaction():
                    await conn.execute("TRUNCATE ustage")
                    await conn.copy_records_to_table("ustage", records=upd[i:i + 1000],
                                                     columns=("id", "work_unit", "title"))
                    await conn.execute("UPDATE m_single m SET work_unit = s.work_unit, title = s.title "
                                       "FROM ustage s WHERE m.id = s.id")
        r.rates["update_batched"] = u / tm.s
        r.add(SCENARIO, f"batched UPDATE of {u} rows (1k-row batches)", u / tm.s, "rows/s", "copy_single",
              r.ratio_to("copy_single", u / tm.s))
    finally:
        await conn.close()
        await r.cluster.drop(dsn)
