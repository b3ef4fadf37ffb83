"""HC-37: the root is not "just another node" — a city's pull reads its own scope.

In plenary week 湖南省's log is mostly other cities' entries.  A pull by 岳阳市 must read
岳阳市's outbox entries and the log entries they point at, not walk the root log past
长沙市's.  Measured by what PostgreSQL counts, not by time: the rows the pull read of
``syncd.log`` and ``syncd.outbox`` (EXPLAIN ANALYZE of the daemon's own pull query, ``syncd.node.OUTBOX_READ``), with a root log
of 20,000 entries for 长沙市 and 40 for 岳阳市.
"""
from __future__ import annotations

import json

import asyncpg

from syncd.node import OUTBOX_BACKLOG, OUTBOX_READ, SERVER_SETTINGS
from syncd.store.sequencer import Sequencer
from tests.pg import Cluster
from tests.plans import drained_and_analysed
from tests.tree import Tree

TREE = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430600": ("岳阳市", "city", "430000"),
}
OTHERS, MINE = 20_000, 40


async def _fill(conn: asyncpg.Connection, analyse: bool = True) -> None:
    """Clone one logged province change into OTHERS entries for 长沙市 and MINE for 岳阳市;
    ``analyse``: then bring the statistics of the log and the outbox up to date."""
    await conn.execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                       "VALUES ('430000', '全体会议', '模板', now())")
    await Sequencer(me="430000").drain(conn)
    async with conn.transaction():
        await conn.execute("""
            WITH t AS (SELECT * FROM syncd.log WHERE tbl = 'activities' ORDER BY pos DESC LIMIT 1),
                 n AS (SELECT head, hlc FROM syncd.node)
            INSERT INTO syncd.log (pos, epoch, tbl, id, org_code, op, cl, ts, origin, txn, homes, cols)
            SELECT n.head + g, t.epoch, t.tbl, gen_random_uuid(), t.org_code, t.op, t.cl, n.hlc + g, t.origin,
                   t.txn + g, t.homes, t.cols
            FROM generate_series(1, $1) g, t, n""", OTHERS + MINE)
        # 长沙市 is entitled to the first OTHERS, 岳阳市 to the MINE after them
        await conn.execute("""
            INSERT INTO syncd.outbox (peer, pos)
            SELECT CASE WHEN g <= $1::int THEN '430100' ELSE '430600' END, n.head + g
            FROM generate_series(1, $1::int + $2::int) g, (SELECT head FROM syncd.node) n""", OTHERS, MINE)
        await conn.execute("UPDATE syncd.node SET head = head + $1, hlc = hlc + $1", OTHERS + MINE)
    if analyse:
        await conn.execute("ANALYZE syncd.log; ANALYZE syncd.outbox")  # what autovacuum keeps up to date


def _rows_read(plan: dict) -> dict[str, int]:
    """Rows each scan of ``syncd.log`` / ``syncd.outbox`` produced or threw away, over the plan."""
    out: dict[str, int] = {}
    rel = plan.get("Relation Name")
    if rel in ("log", "outbox"):
        loops = plan.get("Actual Loops", 1)
        out[rel] = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    for sub in plan.get("Plans", []):
        for k, v in _rows_read(sub).items():
            out[k] = out.get(k, 0) + v
    return out


async def _read(conn: asyncpg.Connection, child: str, after: int) -> tuple[int, dict[str, int]]:
    """Entries the daemon's pull query returns for ``child`` after ``after``, and the rows it
    read of each table (EXPLAIN ANALYZE of that same query)."""
    n = len(await conn.fetch(OUTBOX_READ, child, after, 1001))
    plan = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + OUTBOX_READ, child, after, 1001))
    return n, _rows_read(plan[0]["Plan"])


async def test_hc37_a_citys_pull_reads_its_own_outbox_not_the_root_log(cluster: Cluster) -> None:
    t = Tree(cluster, TREE)
    try:
        await t.prepare()
        await _fill(t.db("430000"))
        conn = t.db("430000")
        await conn.execute(f"SET plan_cache_mode = {SERVER_SETTINGS['plan_cache_mode']}")  # as a daemon runs it
        start = await conn.fetchval("SELECT min(pos) - 1 FROM syncd.outbox WHERE peer = '430600'")
        # 岳阳市's entries sit after 20,000 of 长沙市's in the log, and its pull starts before them
        n, read = await _read(conn, "430600", 0)
        assert n == MINE, n
        assert read["log"] <= 2 * (n + 1) and read["outbox"] <= 2 * (n + 1), (n, read)
        # the same whether it starts at 0 or right before its entries
        n2, read2 = await _read(conn, "430600", start)
        assert n2 == n and read2["log"] <= 2 * (n + 1), (n2, read2)
        # the measure can fail: a read of 长沙市's scope costs what that scope holds
        big, read_big = await _read(conn, "430100", 0)
        assert big == 1001 and read_big["log"] >= 1000, (big, read_big)
    finally:
        await t.close()


async def test_hc37_a_pull_reads_one_batch_of_the_log_after_the_outbox_was_analysed_drained(cluster: Cluster) -> None:
    """Once ANALYZE has found the outbox and the log drained (retention removes what every
    child has), the planner estimates one row however many wait.  The pull joined a child's
    whole backlog to the log, then sorted and cut it: 20,000 log rows read for a 1,001-entry
    batch, for every batch of a catch-up.  The batch is now cut before the join.  The child's
    backlog in ``/status`` reads one log row, not the backlog."""
    t = Tree(cluster, TREE)
    try:
        await t.prepare()
        conn = t.db("430000")
        await _fill(conn)
        await drained_and_analysed(conn, "syncd.outbox", "syncd.log")
        await conn.execute(f"SET plan_cache_mode = {SERVER_SETTINGS['plan_cache_mode']}")  # as a daemon runs it
        await _fill(conn, analyse=False)  # autovacuum has not come by yet
        first = await conn.fetchval("SELECT min(pos) FROM syncd.outbox WHERE peer = '430100'")
        n, read = await _read(conn, "430100", 0)
        assert n == 1001 and read["log"] <= 2 * (n + 1), (n, read)
        assert [r["pos"] for r in await conn.fetch(OUTBOX_READ, "430100", first + 9, 5)] == list(
            range(first + 10, first + 15))  # the batch after the cursor, in order

        backlog = await conn.fetchrow(OUTBOX_BACKLOG, "430100", first)
        assert (backlog["n"], backlog["head"]) == (OTHERS - 1, first + OTHERS - 1)
        assert backlog["oldest"] == await conn.fetchval("SELECT logged_at FROM syncd.log WHERE pos = $1", first + 1)
        plan = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + OUTBOX_BACKLOG, "430100", 0))
        assert _rows_read(plan[0]["Plan"])["log"] <= 1, plan
    finally:
        await t.close()

