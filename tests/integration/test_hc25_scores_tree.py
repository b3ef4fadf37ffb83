"""HC-25: 履职积分 is computed by the home's daemon and is the same number at every level.

A year of one 芙蓉区 member's records (``test_scores._history``: caps, a late-December and a
New Year's sign-in), three databases in three TimeZone settings.  Nobody calls
``syncd.refresh_scores()`` by hand: the home's daemon recomputes on its own
(``tuning.score_refresh_s``), and 长沙市 and 湖南省 end with the rows 芙蓉区 computed.  A
mid-year rule change at the home is picked up by the next refresh and travels up too; the copy
at 长沙市 refuses a write.
"""
from __future__ import annotations

import asyncpg
import pytest

from tests.integration.test_scores import EXPECTED_2025, _history
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually

TREE = {"430000": ("湖南省", "province", None), "430100": ("长沙市", "city", "430000"),
        "430102": ("芙蓉区", "county", "430100")}
ZONES = {"430000": "Asia/Shanghai", "430100": "America/New_York", "430102": "UTC"}
COLUMNS = "member_id, year, total, by_category, rule_version, inputs_digest"


async def _summaries(conn: asyncpg.Connection, mid: object) -> list[tuple]:
    return [tuple(r) for r in await conn.fetch(
        f"SELECT {COLUMNS} FROM member_score_summaries WHERE member_id = $1 ORDER BY year", mid)]


async def test_hc25_the_homes_daemon_computes_scores_and_every_level_holds_them(cluster: Cluster) -> None:
    t = Tree(cluster, TREE, tuning={"score_refresh_s": 0.5})
    try:
        await t.prepare()
        for code, zone in ZONES.items():
            await t.conns[code].execute(f"ALTER DATABASE \"{t.dsns[code].rsplit('/', 1)[1]}\" SET timezone = '{zone}'")
        await t.start_all()
        county = t.db("430102")
        await county.execute("SELECT syncd.seed_default_rules('430102')")
        mid = await _history(county)

        async def everywhere(expect_total: float) -> bool | Pending:
            home = await _summaries(county, mid)
            y2025 = [r for r in home if r[1] == 2025]
            if not y2025 or float(y2025[0][2]) != expect_total:
                return Pending(f"home: {home}")
            for code in ("430100", "430000"):
                copy = await _summaries(t.db(code), mid)
                if copy != home:
                    return Pending(f"{code}: {copy} != {home}")
            return True
        await eventually(lambda: everywhere(sum(EXPECTED_2025.values())), timeout=60)
        # a mid-year rule change at the home: 视察 and other activities count 6 from July
        await county.execute("INSERT INTO score_rules (org_code, rule_version, event, points, valid_from) "
                             "VALUES ('430102', 2, 'activity', 6, '2025-07-01')")
        visit = await county.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                      "VALUES ('430102', '视察', '下半年视察', '2025-09-01 09:00+08') RETURNING id")
        await county.execute("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                             "VALUES ('430102', $1, $2, '出席')", visit, mid)
        await eventually(lambda: everywhere(sum(EXPECTED_2025.values()) + 6), timeout=60)
        assert (await _summaries(t.db("430000"), mid))[-1][4] == 2  # the rule version travelled with it
        with pytest.raises(asyncpg.PostgresError, match="READ_ONLY_COPY"):
            await t.db("430100").execute("UPDATE member_score_summaries SET total = 999 WHERE member_id = $1", mid)
        status = await t.status("430102")
        assert status["node"]["scores"] == {"state": "running", "last_error": None}
    finally:
        await t.close()
