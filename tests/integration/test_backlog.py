"""A 200k-change backlog catches up in bounded transactions while new writes arrive (issue 5).

芙蓉区 was cut off for a long time: 200,000 微建议 changes wait in its log.  They are made
by cloning one change the real capture path logged (same encoding, new ids, positions, times
and 1k-change origin transactions), because versioning 200k captures one by one would take
minutes of CI without testing anything this test is about.  Then 芙蓉区's daemon starts, and
while it pushes the backlog to 长沙市 an application at 芙蓉区 keeps inserting rows through
the ordinary capture path.  Meanwhile the test samples 长沙市's database: no transaction
there writes for anywhere near as long as the whole catch-up (a long poll's read does not count),
and the link's applied cursor
advances in many steps.  At the end every row is at 长沙市, nothing quarantined or parked.
"""
from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from syncd.store.sequencer import Sequencer
from tests.pg import Cluster
from tests.tree import Tree, eventually

#: a safety net, not a speed goal: on a loaded 2-core machine the catch-up alone can take minutes
pytestmark = pytest.mark.timeout(900)

BACKLOG = 200_000
TREE = {"430100": ("长沙市", "city", None), "430102": ("芙蓉区", "county", "430100")}


async def _make_backlog(conn: asyncpg.Connection, n: int) -> None:
    """``n`` changes in 芙蓉区's log, cloned from one the sequencer logged itself."""
    await conn.execute("INSERT INTO micro_suggestions (org_code, title, body) VALUES ('430102', '模板', '积压的微建议')")
    await Sequencer(me="430102").drain(conn)
    async with conn.transaction():
        await conn.execute("SET LOCAL syncd.applying = 'on'")  # the clones are logged by hand, not captured
        await conn.execute("""
            CREATE TEMP TABLE clone ON COMMIT DROP AS
            SELECT g, gen_random_uuid() AS id FROM generate_series(1, $1) g""", n)
        await conn.execute("""
            INSERT INTO micro_suggestions (id, org_code, title, body, submitted_at)
            SELECT c.id, m.org_code, '积压' || c.g, m.body, m.submitted_at
            FROM clone c, micro_suggestions m WHERE m.title = '模板'""")
        await conn.execute("""
            WITH t AS (SELECT * FROM syncd.log WHERE tbl = 'micro_suggestions' ORDER BY pos DESC LIMIT 1),
                 n AS (SELECT head, hlc FROM syncd.node)
            INSERT INTO syncd.log (pos, epoch, tbl, id, org_code, op, cl, ts, origin, txn, homes, cols)
            SELECT n.head + c.g, t.epoch, t.tbl, c.id, t.org_code, t.op, t.cl, n.hlc + c.g, t.origin,
                   t.txn * 1000000 + c.g / 1000, t.homes, jsonb_set(t.cols::jsonb, '{0,title}', to_jsonb('积压' || c.g))::json
            FROM clone c, t, n""")
        await conn.execute("""
            WITH t AS (SELECT r.* FROM syncd.rowver r JOIN micro_suggestions m ON m.id = r.id WHERE m.title = '模板'),
                 n AS (SELECT hlc FROM syncd.node)
            INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v)
            SELECT t.tbl, c.id, t.org_code, t.cl, t.homes,
                   (SELECT jsonb_object_agg(e.k, jsonb_set(e.v, '{3}', to_jsonb(n.hlc + c.g))) FROM jsonb_each(t.v::jsonb) e(k, v))::json
            FROM clone c, t, n""")
        await conn.execute("UPDATE syncd.node SET head = head + $1, hlc = hlc + $1", n)


async def test_200k_backlog_catches_up_in_bounded_transactions_while_writes_arrive(cluster: Cluster) -> None:
    t = Tree(cluster, TREE)
    try:
        await t.setup()
        await t.settled()
        await t.stop("430102")
        county, city = t.db("430102"), t.db("430100")
        await _make_backlog(county, BACKLOG)
        assert await county.fetchval("SELECT count(*) FROM syncd.log WHERE tbl = 'micro_suggestions'") > BACKLOG

        stop = asyncio.Event()
        longest: list[float] = [0.0]
        cursors: set[int] = set()
        live: list[int] = [0]

        watcher = await asyncpg.connect(t.dsns["430100"])

        async def watch() -> None:  # 长沙市's transactions and the link's applied cursor
            city = watcher
            while not stop.is_set():
                age = await city.fetchval(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 "
                    "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND xact_start IS NOT NULL AND backend_xid IS NOT NULL")  # writing transactions
                longest[0] = max(longest[0], age)
                cursors.add(await city.fetchval(
                    "SELECT coalesce(max(pos), 0) FROM syncd.cursors WHERE peer = '430102' AND kind = 'applied'"))
                await asyncio.sleep(0.05)

        async def writer() -> None:  # the application at 芙蓉区 goes on working
            while not stop.is_set():
                await county.execute("INSERT INTO micro_suggestions (org_code, title) VALUES ('430102', $1)",
                                     f"新的微建议{live[0]}")
                live[0] += 1
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(watch()), asyncio.create_task(writer())]
        started = time.monotonic()
        await t.start("430102")

        async def backlog_arrived() -> bool:
            return await city.fetchval(
                "SELECT count(*) FROM micro_suggestions WHERE title LIKE '积压%'") == BACKLOG
        await eventually(backlog_arrived, 600, 0.5)
        took = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks)
        await watcher.close()

        async def live_arrived() -> bool:
            return await city.fetchval(
                "SELECT count(*) FROM micro_suggestions WHERE title LIKE '新的微建议%'") == live[0]
        await eventually(live_arrived, 60)
        assert live[0] > 0
        # many short transactions, never one for the whole backlog
        assert longest[0] < took / 4, (longest[0], took)
        assert len(cursors) >= 10, sorted(cursors)
        for sql in ("SELECT count(*) FROM syncd.quarantine", "SELECT count(*) FROM syncd.parked"):
            assert await city.fetchval(sql) == 0, sql
    finally:
        await t.close()
