"""Bootstrap: a new city loads everything it is entitled to from a running province (HC-36).

The volume is stated, not implied: 长沙市 joins empty, entitled to M of its own members (held
at the province without their personal columns) and A attendance rows of those members at
provincial plenary sessions — ``full``: 30k members and 1M attendance rows, the goal's case.
The province's rows and their versions are written with SQL before the nodes start (as if
replicated over the years), so the measure is the snapshot alone: from the city's start until
its tables hold every row, with the chunks, merges and progress bookkeeping of the real path.

Memory: both nodes run in this process, so the RSS sampled (psutil, every 50 ms) is the
province's and the city's together; the growth over the bootstrap is shown beside it.

The bootstrap runs once more with each node its own ``syncd run`` process (a deployment's
shape: the province serves from its server, the city loads on its own; ``tests.faults.daemons``):
the time from the city daemon's first /healthz until its tables hold every row, the city
daemon's peak RSS (the goal's "RSS of the daemon") and the CPU each daemon spent per 1k
rows.  On this machine both daemons and PostgreSQL share two cores.
"""
from __future__ import annotations

import time
from typing import Any

import asyncpg
import psutil

from bench.catchup import DAEMON_TUNING, CpuMeter, RssSampler, process_cpu_s
from bench.harness import Run, Tree, build_tree, count, hunan, wait_until
from syncd.schema.declarations import SCHEMA
from tests.faults.daemons import DaemonTree

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


async def _seed(t: Any, members: int, activities: int) -> None:
    """The province's rows and versions (``t``: a tree of in-process nodes or of daemons)."""
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

        await _converged(city, members, attendance)
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
    await _as_processes(r, tree, members, activities)


async def _converged(city: asyncpg.Connection, members: int, attendance: int) -> None:
    """Until the city's snapshot is over and its tables hold every row.  The snapshot's end is
    asked first, cheaply: a count(*) of a million rows at every poll took a fifth of a core."""
    async def loaded() -> bool:
        return not await city.fetchval("SELECT EXISTS (SELECT 1 FROM syncd.snapshot_progress) OR NOT EXISTS "
                                       "(SELECT 1 FROM syncd.cursors WHERE kind = 'pull')")

    async def complete() -> bool:
        return (await count(city, "SELECT count(*) FROM attendance") >= attendance
                and await count(city, "SELECT count(*) FROM members") >= members)
    timeout = max(300.0, attendance / 200)
    await wait_until(loaded, timeout, 0.2)
    await wait_until(complete, timeout, 0.5)


async def _as_processes(r: Run, tree: dict[str, tuple[str, str, str | None]], members: int, activities: int) -> None:
    """The bootstrap again, each node its own daemon process (see the module's text)."""
    attendance = members * activities
    t = await DaemonTree(r.cluster, tree, tuning=DAEMON_TUNING).setup()
    try:
        await _seed(t, members, activities)
        await t.daemons["430000"].start()
        await t.daemons["430100"].start(wait=False)
        procs = {c: psutil.Process(d.proc.pid) for c, d in t.daemons.items()}  # type: ignore[union-attr]
        rss = RssSampler(procs["430100"].pid)
        rss.start()
        await t.daemons["430100"].wait_healthy()
        # the clock starts at the city's first /healthz: an interpreter's start-up is not the
        # bootstrap (the in-process nodes pay none)
        t0 = time.perf_counter()
        cpu = CpuMeter(r.cluster)
        cpu.start()
        before = {c: process_cpu_s(p) for c, p in procs.items()}
        await _converged(t.db("430100"), members, attendance)
        secs = time.perf_counter() - t0
        spent = {c: process_cpu_s(p) - before[c] for c, p in procs.items()}
        _, pg_s = cpu.stop()
        peak = await rss.stop()
        rows = members + activities + attendance
        r.add(SCENARIO, "the same, every node its own daemon process: time to converged", secs, "s",
              goal=GOAL_S, ok=secs < 60 if r.size.name == "full" else None)
        r.add(SCENARIO, "  snapshot rows loaded per second (daemon processes)", rows / secs, "rows/s", "copy_single",
              r.ratio_to("copy_single", rows / secs))
        r.add(SCENARIO, "  peak RSS of the city daemon", peak / 2**20, "MiB",
              goal=GOAL_RSS, ok=peak / 2**20 < 150 if r.size.name == "full" else None)
        r.add("memory", f"peak RSS of a daemon while {rows:,} rows stream through a hop (the bootstrap's city, "
              "its own process)", peak / 2**20, "MiB")
        k = rows / 1000
        r.add(SCENARIO, "  CPU per 1k rows: province daemon (serves) / city daemon (loads)", spent["430000"] / k,
              f"s / {spent['430100'] / k:.3f} s")
        r.add(SCENARIO, "  CPU per 1k rows: PostgreSQL (all processes)", pg_s / k,
              f"s ({cpu.pg_kinds_text(max(1, rows // 1000))})")
        r.extra["bootstrap_processes"] = {"rows": rows, "seconds": round(secs, 3), "city_peak_rss_mib": round(
            peak / 2**20, 1), "cpu_s_per_1k": {c: round(v / k, 4) for c, v in spent.items()},
            "postgresql_cpu_s_per_1k": round(pg_s / k, 4)}
    finally:
        await t.close()
