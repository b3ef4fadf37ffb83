"""Scale: a tree of many nodes (all 137 Hunan committees at full size, fewer below).

Every node runs in this process on its own database (``harness.build_tree``).  Measured:

* the province's plenary activity reaching every county (fan-out, two hops down);
* one member row written at every county at once → all visible at the province;
* fan-in: every city (14 pushers at full size) writes its rows at once → the province;
  with, for HC-37, the root log's size beside one city's outbox and the time of that
  city's pull read at the province;
* a plenary sign-in burst: every county signs its members in to the provincial plenary,
  one 1-row transaction per sign-in, all counties at once → the province.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.harness import (SEEN_SQL, Arrivals, Run, build_tree, count, hunan, insert_members, member_rows,
                           percentile, wait_until)

SCENARIO = "scale"
#: the sequencer poll of this scenario's nodes (the others: ``bench.harness.sequencer_interval_ms``)
SEQUENCER_INTERVAL_MS = 200


async def run(r: Run) -> None:
    s = r.size
    tree = hunan(s.scale_cities, s.scale_counties_per_city)
    counties = [c for c, (_, lv, _) in tree.items() if lv == "county"]
    cities = [c for c, (_, lv, _) in tree.items() if lv == "city"]
    members: dict[str, list[uuid.UUID]] = {}

    async def prepare(t: Any) -> None:
        await t.db("430000").execute(SEEN_SQL)
        for c in counties:
            rows = member_rows(c, s.signins, seed=int(c))
            members[c] = [x[0] for x in rows]
            await insert_members(t.db(c), rows)

    t0 = time.perf_counter()
    t = await build_tree(r.cluster, tree, before_start=prepare, sequencer_interval_ms=SEQUENCER_INTERVAL_MS)
    r.add(SCENARIO, f"tree of {len(tree)} nodes built and started ({len(cities)} cities, {len(counties)} counties)",
          time.perf_counter() - t0, "s")
    arrivals = await Arrivals().attach(t.dsns["430000"])
    timeout = 120 + 3 * len(tree)
    try:
        prov = t.db("430000")
        act = await prov.fetchval(
            "INSERT INTO activities (org_code, kind, title, starts_at, half_days) "
            "VALUES ('430000', '全体会议', '省政协全体会议', now(), 4) RETURNING id")
        t1 = time.perf_counter()

        async def everywhere() -> bool:
            for c in counties:
                if not await count(t.db(c), "SELECT count(*) FROM activities WHERE id = $1", act):
                    return False
            return True
        await wait_until(everywhere, timeout, 0.2)
        r.add(SCENARIO, f"province's plenary activity reaches all {len(counties)} counties", time.perf_counter() - t1, "s")

        # one change at every county, at once
        sent: dict[str, float] = {}

        async def one(c: str) -> None:
            rid = uuid.uuid4()
            sent[str(rid)] = time.perf_counter()
            await t.db(c).execute("INSERT INTO members (id, org_code, name, work_unit) VALUES ($1, $2, '探针', 'probe')",
                                  rid, c)
        t1 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in counties))
        await arrivals.wait_for(list(sent), timeout)
        lat = [arrivals.seen[k] - v for k, v in sent.items() if k in arrivals.seen]
        r.add(SCENARIO, f"a change at every county ({len(counties)}) → province: all there", max(lat) * 1000, "ms")
        r.add(SCENARIO, "a change at every county → province: p50", percentile(lat, 50) * 1000, "ms")
        r.add(SCENARIO, "changes from counties not at the province", len(sent) - len(lat), "changes")

        # fan-in from every city at once
        k = s.fanin_rows
        total = k * len(cities)
        t1 = time.perf_counter()
        await asyncio.gather(*(insert_members(t.db(c), member_rows(c, k, seed=500 + i)) for i, c in enumerate(cities)))
        written = time.perf_counter() - t1

        async def fanned_in() -> bool:
            return await count(prov, "SELECT count(*) FROM members WHERE org_code = ANY($1::text[])", cities) >= total
        await wait_until(fanned_in, max(timeout, total / 50), 0.2)
        secs = time.perf_counter() - t1
        r.add(SCENARIO, f"fan-in: {len(cities)} cities × {k} rows → province (written in {written:.1f} s)",
              total / secs, "rows/s", "copy_single", r.ratio_to("copy_single", total / secs))
        svc = t.nodes["430000"].service
        city = cities[0]
        async with t.nodes["430000"].pool.acquire() as conn:
            times = []
            for _ in range(5):
                a = time.perf_counter()
                await svc._read_outbox(conn, city, 0, 2000)
                times.append(time.perf_counter() - a)
            log_n = await count(conn, "SELECT count(*) FROM syncd.log")
            box_n = await count(conn, "SELECT count(*) FROM syncd.outbox WHERE peer = $1", city)
        r.add(SCENARIO, f"HC-37: {city}'s pull read at the province ({box_n} outbox entries, root log {log_n})",
              percentile(times, 50) * 1000, "ms")
        r.extra["scale_hc37"] = {"city": city, "city_outbox": box_n, "root_log": log_n,
                                 "pull_read_ms": [round(x * 1000, 2) for x in times]}

        # plenary sign-in burst
        sent = {}

        async def sign_in(c: str) -> None:
            conn = t.db(c)
            for mid in members[c]:
                at = time.perf_counter()
                rid = await conn.fetchval(
                    "INSERT INTO attendance (org_code, activity_id, member_id, status, sign_in_at, sign_in_method) "
                    "VALUES ($1, $2, $3, '出席', now(), '扫码') RETURNING id", c, act, mid)
                sent[str(rid)] = at
        t1 = time.perf_counter()
        await asyncio.gather(*(sign_in(c) for c in counties))
        written = time.perf_counter() - t1
        await arrivals.wait_for(list(sent), max(timeout, len(sent) / 20))
        lat = [arrivals.seen[k] - v for k, v in sent.items() if k in arrivals.seen]
        done = max(arrivals.seen[k] for k in sent if k in arrivals.seen) - t1 if lat else float("nan")
        r.add(SCENARIO, f"sign-in burst: {len(sent)} sign-ins ({s.signins}/county, 1-row txns, written in "
              f"{written:.1f} s) all at the province", done, "s")
        r.add(SCENARIO, "sign-in burst: per sign-in latency to the province, p50", percentile(lat, 50) * 1000, "ms")
        r.add(SCENARIO, "sign-in burst: p99", percentile(lat, 99) * 1000, "ms")
        r.add(SCENARIO, "sign-ins not at the province", len(sent) - len(lat), "sign-ins")
    finally:
        await arrivals.close()
        await t.close()
