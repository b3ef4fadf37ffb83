"""Long values travel in batches cut by size, not only by count (syncd.batching, HC-32).

1,300 changes of ~14 kB each are ~19 MB: one batch of them (the count bound is 2,000) is
over the 16 MiB message cap, so the parent refuses the push (413 ``BODY_TOO_LARGE``) and
the child refuses the pull reply, again at every retry, and the link never moves.  Cut
at ``batch_max_bytes`` (4 MiB by default) they arrive in a handful of batches, up by
push (芙蓉区's members, written in 100-row transactions while it was down), down by pull
(湖南省's activities, written in one transaction: a transaction larger than the message
cap is cut inside) and in a new node's snapshot (岳麓区 starting afterwards).
"""
from __future__ import annotations

import asyncpg
import pytest

from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually

pytestmark = pytest.mark.timeout(300)

TREE = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
    "430104": ("岳麓区", "county", "430100"),
}
N = 1300
#: ~14 kB of UTF-8: a long 履职 record in a text column
LONG = "长沙市政协委员履职记录：调研、视察与协商。" * 240


async def insert_long_members(county: asyncpg.Connection) -> None:
    """``N`` 芙蓉区 members with a ``LONG`` title each (~19 MB), in 100-row transactions."""
    for k in range(0, N, 100):
        await county.execute(
            "INSERT INTO members (org_code, name, title) "
            "SELECT '430102', '委员' || g, $1 || g FROM generate_series($2::int, $3::int) g", LONG, k + 1, k + 100)


async def _count(conn: asyncpg.Connection, sql: str, want: int) -> bool | Pending:
    got = await conn.fetchval(sql)
    return True if got == want else Pending(f"{got} of {want}: {sql}")


async def test_hc32_changes_over_the_message_cap_arrive_in_size_bounded_batches(cluster: Cluster) -> None:
    t = Tree(cluster, TREE)
    try:
        await t.prepare()
        await t.start_all(only={"430000", "430100", "430102"})
        await t.settled()
        await t.stop("430102")
        county, province = t.db("430102"), t.db("430000")
        assert len(LONG.encode()) * N > 16 * 1024 * 1024
        await insert_long_members(county)  # 13 transactions
        await province.execute(  # one transaction of N activities for every county
            "INSERT INTO activities (org_code, kind, title, starts_at, place) "
            "SELECT '430000', '视察', '全省视察' || g, now(), $1 || g FROM generate_series(1, $2::int) g", LONG, N)
        await t.start("430102")
        await t.start("430104")  # a new node: the activities come in its snapshot
        members = "SELECT count(*) FROM members WHERE org_code = '430102' AND length(title) > 1000"
        activities = "SELECT count(*) FROM activities WHERE org_code = '430000' AND length(place) > 1000"
        for code, sql in (("430100", members), ("430000", members), ("430100", activities),
                          ("430102", activities), ("430104", activities)):
            await eventually(lambda: _count(t.db(code), sql, N), timeout=180)
        for code in TREE:
            assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, await t.diagnose()
        # the pushes were cut by size: several batches, none over the bound (the audit counts each)
        pushes = await t.db("430100").fetch(
            "SELECT changes FROM syncd.audit WHERE peer = '430102' AND direction = 'received' AND changes > 0")
        assert len(pushes) >= 5 and max(r["changes"] for r in pushes) * len(LONG.encode()) <= 4 * 1024 * 1024
    finally:
        await t.close()
