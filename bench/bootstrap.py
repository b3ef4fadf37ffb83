"""Bootstrap: a new city loads everything it is entitled to from a running province (HC-36).

The volume is stated, not implied: 长沙市 joins empty, entitled to M of its own members (held
at the province without their personal columns) and A attendance rows of those members at
provincial plenary sessions — ``full``: 30k members and 1M attendance rows, the goal's case.
The province's rows and their versions are written with SQL before the nodes start (as if
replicated over the years), so the measure is the snapshot alone: from the city's start until
its tables hold every row, with the chunks, merges and progress bookkeeping of the real path.

Memory: both nodes run in this process, so the RSS sampled (psutil, every 50 ms) is the
province's and the city's together; the growth over the bootstrap is shown beside it.
"""
from __future__ import annotations

import time

from bench.catchup import RssSampler
from bench.harness import Run, Tree, build_tree, count, hunan, wait_until
from syncd.schema.declarations import SCHEMA

SCENARIO = "bootstrap"
GOAL_S = "< 60 s (full: 30k members + 1M attendance)"
GOAL_RSS = "< 150 MB"
#: (members, activities) per size; attendance = members × activities
VOLUME = {"tiny": (300, 4), "small": (3_000, 20), "full": (30_000, 34)}


def _versions_sql(table: str, org_expr: str) -> str:
    """rowver rows for every row of ``table`` at the province: version 1 of each column it holds."""
    t = SCHEMA[table]
    held = [c.name for c in t.shipped if not c.personal]
    pairs = ", ".join(f"'{c}', json_build_array(1, 0, 0, $1::bigint, {org_expr}, NULL)" for c in held)
    return (f"INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v) "
            f"SELECT '{table}', x.id, x.org_code, 1, {{homes}}, json_build_object({pairs}) FROM {table} x")


async def _seed(t: Tree, members: int, activities: int) -> None:
    prov = t.db("430000")
    ts = time.time_ns() // 1000 - 3600 * 10**6
    async with prov.transaction():
        await prov.execute("SET LOCAL syncd.applying = 'on'")  # written as replicated rows, not captured
        await prov.execute("""
            INSERT INTO members (org_code, name, gender, party, sector_code, work_unit, title, term)
            SELECT '430100', '委员' || g, CASE WHEN g % 2 = 0 THEN '男' ELSE '女' END, '民盟', 'JJ',
                   '长沙市第' || (g % 97) || '中学', '教授', '第十三届'
            FROM generate_series(1, $1) g""", members)
        await prov.execute("""
            INSERT INTO activities (org_code, kind, title, starts_at)
            SELECT '430000', '全体会议', '省政协全体会议第' || g || '次', now() - g * interval '7 days'
            FROM generate_series(1, $1) g""", activities)
        await prov.execute("""
            INSERT INTO attendance (org_code, activity_id, member_id, status, sign_in_method, sign_in_at)
            SELECT m.org_code, a.id, m.id, '出席', '扫码', a.starts_at FROM activities a CROSS JOIN members m""")
        await prov.execute(_versions_sql("members", "'430100'").format(homes="""'{"home": "430100"}'::jsonb"""), ts)
        await prov.execute(_versions_sql("activities", "'430000'").format(homes="""'{"home": "430000"}'::jsonb"""),
                           ts)
        await prov.execute(_versions_sql("attendance", "'430100'").format(
            homes="""'{"home": "430100", "organiser": "430000"}'::jsonb"""), ts)
    await prov.execute("ANALYZE")


async def run(r: Run) -> None:
    members, activities = VOLUME[r.size.name]
    attendance = members * activities
    full = hunan()
    tree = {c: full[c] for c in ("430000", "430100")}
    rss = RssSampler()
    started: list[float] = []

    async def seed(t: Tree) -> None:
        await _seed(t, members, activities)
        rss.start()
        started.append(time.perf_counter())

    t = await build_tree(r.cluster, tree, before_start=seed)
    try:
        city = t.db("430100")
        base = rss.peak

        async def done() -> bool:
            return (await count(city, "SELECT count(*) FROM attendance") >= attendance
                    and await count(city, "SELECT count(*) FROM members") >= members)
        await wait_until(done, max(300.0, attendance / 200), 0.5)
        secs = time.perf_counter() - started[0]
        peak = await rss.stop()
        rows = members + activities + attendance
        r.add(SCENARIO, f"new city entitled to {members:,} members + {attendance:,} attendance rows: time to converged",
              secs, "s", goal=GOAL_S, ok=secs < 60 if r.size.name == "full" else None)
        r.add(SCENARIO, "snapshot rows loaded per second", rows / secs, "rows/s", "copy_single",
              r.ratio_to("copy_single", rows / secs))
        r.add(SCENARIO, "peak process RSS during the bootstrap (province + city in one process)", peak / 2**20, "MiB",
              goal=GOAL_RSS, ok=peak / 2**20 < 150 if r.size.name == "full" else None)
        r.add(SCENARIO, "RSS growth during the bootstrap", (peak - base) / 2**20, "MiB")
        r.extra["bootstrap_volume"] = {"members": members, "activities": activities, "attendance": attendance,
                                       "conflicts_at_city": await count(city, "SELECT count(*) FROM syncd.conflicts"),
                                       "quarantined_at_city": await count(city, "SELECT count(*) FROM syncd.quarantine")}
    finally:
        await t.close()
