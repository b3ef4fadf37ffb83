"""Capture overhead: the application's writes with syncd's capture triggers vs without.

One database initialised as 芙蓉区 (``init_node``: statement capture triggers, checks).
``members`` carries the triggers; ``plain_members`` is ``LIKE members INCLUDING ALL``
without them.  Measured, each with vs without (ratio = time with / time without):

* INSERT in 1k-row transactions (one multi-row INSERT per transaction);
* UPDATE of 2 columns in 1k-row transactions (one UPDATE per transaction);
* INSERT and UPDATE in 1-row transactions (one statement per transaction, the sign-in case).

No daemon runs, so only the write path (append to ``syncd.capture``) is measured.
"""
from __future__ import annotations

import asyncpg

from bench.harness import Run, Timer, insert_members, member_rows, update_members

SCENARIO = "capture"
GOAL = "≤ 2×"


async def _pair(r: Run, label: str, with_fn, without_fn, repeats: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Time ``without_fn(i)`` then ``with_fn(i)`` ``repeats`` times (interleaved, a checkpoint
    before each) and report the median ratio: one pair swings by ±50 % on a shared machine."""
    ratios, runs = [], []
    for i in range(repeats):
        await r.cluster.checkpoint()
        with Timer() as plain:
            await without_fn(i)
        await r.cluster.checkpoint()
        with Timer() as captured:
            await with_fn(i)
        ratios.append(captured.s / plain.s)
        runs.append({"with_s": captured.s, "without_s": plain.s})
    ratio = sorted(ratios)[len(ratios) // 2]
    shown = label if repeats == 1 else f"{label}, median of {repeats}"
    r.add(SCENARIO, f"{shown}: time with / without capture", ratio, "×", goal=GOAL, ok=ratio <= 2.0)
    r.extra.setdefault("capture", {})[label] = {"ratios": ratios, "runs": runs}


async def run(r: Run) -> None:
    n, s = r.size.capture_rows, r.size.capture_single
    dsn = await r.cluster.new_node_db("430102", prefix="cap")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE plain_members (LIKE members INCLUDING ALL)")
        rows = member_rows("430102", n, seed=11)
        single = member_rows("430102", s, seed=12, start=n)
        ids = [x[0] for x in rows]
        sids = [x[0] for x in single]

        await _pair(r, f"INSERT, 1k-row transactions ({n} rows)",
                    lambda _: insert_members(conn, rows),
                    lambda _: insert_members(conn, rows, table="plain_members"))
        # updates repeat (each time a new value, so every row changes)
        await _pair(r, f"UPDATE, 1k-row transactions ({n} rows)",
                    lambda i: update_members(conn, ids, f"湖南省社会科学院{i}"),
                    lambda i: update_members(conn, ids, f"湖南省社会科学院{i}", table="plain_members"), repeats=3)
        await _pair(r, f"INSERT, 1-row transactions ({s} rows)",
                    lambda _: insert_members(conn, single, per_txn=1),
                    lambda _: insert_members(conn, single, per_txn=1, table="plain_members"))
        await _pair(r, f"UPDATE, 1-row transactions ({s} rows)",
                    lambda i: update_members(conn, sids, f"湖南省图书馆{i}", per_txn=1),
                    lambda i: update_members(conn, sids, f"湖南省图书馆{i}", per_txn=1, table="plain_members"),
                    repeats=3)
        r.extra["capture_rows_queued"] = await conn.fetchval("SELECT count(*) FROM syncd.capture")
    finally:
        await conn.close()
        await r.cluster.drop(dsn)
