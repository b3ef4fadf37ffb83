"""The Hunan tree in one process: every node a real daemon on its own database of one
embedded PostgreSQL cluster, seeded with a small realistic load (issue 8, item 9).

:func:`run_tree_check` is shared by the CI test (``tests/integration/test_full_tree.py``,
a reduced tree) and the bench (``python -m bench --only tree137``, all 137 nodes).  It
checks, in order, each step bounded by its own timeout:

1. the seed (members, proposals, an activity with attendance at every committee) has
   rolled up: every committee's members are at the province;
2. a new member written at every county at once reaches the province;
3. a provincial activity reaches every county;
4. the province's ``/status`` roll-up lists every node of the tree as ``healthy``.

It returns the seconds each step took (figures for the bench and the README).
"""
from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import asyncpg

from syncd.demo import PARTIES, UNITS, person, subtree
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually

#: members seeded per committee by level: about 1/10 of a real committee
MEMBERS = {"province": 40, "city": 20, "county": 10}
#: a tree this size: sequencers woken by NOTIFY, so their timer can be slow
TUNING = {"sequencer_interval_ms": 1000, "pull_wait_s": 5.0, "retry_cap_s": 2.0, "failed_probe_s": 5.0}


def hunan(cities: list[str] | None = None) -> dict[str, tuple[str, str, str | None]]:
    """The province and the given cities (all 14 if None) with all their counties, from the
    real divisions shipped with syncd (the demo's tree)."""
    return subtree(cities)


async def seed(conn: asyncpg.Connection, code: str, level: str, rng: random.Random) -> int:
    """One committee's small load: members, five proposals, one activity with the members'
    attendance.  Returns the number of members."""
    n = MEMBERS[level]
    members = [(uuid.UUID(int=rng.getrandbits(128), version=4), code, person(rng), rng.choice("男女"),
                f"{rng.randint(1960, 1990)}-{rng.randint(1, 12):02d}", f"{code}{rng.randint(1960, 1990)}{i:08d}",
                f"138{rng.randint(10_000_000, 99_999_999)}", rng.choice(PARTIES), rng.choice(UNITS))
               for i in range(n)]
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO members (id, org_code, name, gender, birth_month, id_card_no, mobile, party, work_unit, term) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '十三届')", members)
        await conn.execute(
            "INSERT INTO proposals (org_code, term, session, seq, title, proposer_id, status, submitted_at) "
            "SELECT $1, 13, 4, row_number() OVER (), '关于' || name || '所提问题的建议', id, '已提交', now() "
            "FROM members WHERE org_code = $1 LIMIT 5", code)
        act = await conn.fetchval(
            "INSERT INTO activities (org_code, kind, title, starts_at) VALUES ($1, '视察', $2, now()) RETURNING id",
            code, f"{code}专题视察")
        await conn.executemany(
            "INSERT INTO attendance (org_code, activity_id, member_id, status) VALUES ($1, $2, $3, $4)",
            [(code, act, m[0], rng.choice(("出席", "出席", "出席", "请假"))) for m in members])
    return n


async def build(cluster: Cluster, tree: dict[str, tuple[str, str, str | None]], seed_rng: int = 2026,
                **tuning: Any) -> tuple[Tree, int]:
    """Databases for every node, committees at the root, the seed, then every node started
    top-down.  Returns the tree and the number of members seeded."""
    t = Tree(cluster, tree, tuning={**TUNING, **tuning})
    rng = random.Random(seed_rng)
    seeded = 0
    try:
        await t.prepare()
        for code, (_, level, _) in tree.items():
            seeded += await seed(t.conns[code], code, level, rng)
        await t.start_all()
    except BaseException:
        await t.close()
        raise
    return t, seeded


async def _count_everywhere(t: Tree, codes: list[str], sql: str, *args: Any) -> list[str]:
    """The nodes among ``codes`` where ``sql`` counts nothing."""
    return [c for c in codes if not await t.db(c).fetchval(sql, *args)]


async def _rollup(t: Tree, root: str) -> dict[str, str]:
    return {n["node"]: n["state"] for n in (await t.status(root))["subtree"]}


async def run_tree_check(t: Tree, seeded: int, timeout: float) -> dict[str, float]:
    """Steps 1-4 of the module docstring on a built tree; each step within ``timeout`` s."""
    tree = t.tree
    root = next(c for c, (_, _, p) in tree.items() if p is None)
    counties = [c for c, (_, lv, _) in tree.items() if lv == "county"]
    prov = t.db(root)
    figures: dict[str, float] = {"nodes": len(tree), "counties": len(counties), "members_seeded": seeded}

    t0 = time.monotonic()

    async def seed_rolled_up() -> bool | str:
        n = await prov.fetchval("SELECT count(*) FROM members")
        return n == seeded or Pending(f"{n} of {seeded} members at the province")
    await eventually(seed_rolled_up, timeout, 0.5)
    figures["seed_at_province_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    ids = {c: uuid.uuid4() for c in counties}
    await asyncio.gather(*(t.db(c).execute("INSERT INTO members (id, org_code, name, work_unit) "
                                           "VALUES ($1, $2, '新任委员', '县政协机关')", ids[c], c) for c in counties))

    async def members_up() -> bool | str:
        n = await prov.fetchval("SELECT count(*) FROM members WHERE id = ANY($1::uuid[])", list(ids.values()))
        return n == len(counties) or Pending(
            f"{n} of {len(counties)} counties' new members at the province")
    await eventually(members_up, timeout, 0.2)
    figures["county_members_to_province_s"] = time.monotonic() - t0

    t0 = time.monotonic()
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at, half_days) "
                              "VALUES ($1, '全体会议', '省政协全体会议', now(), 4) RETURNING id", root)

    async def activity_down() -> bool | str:
        missing = await _count_everywhere(t, counties, "SELECT count(*) FROM activities WHERE id = $1", act)
        return not missing or Pending(f"not yet at {len(missing)} counties, e.g. {missing[:5]}")
    await eventually(activity_down, timeout, 0.3)
    figures["province_activity_to_counties_s"] = time.monotonic() - t0

    t0 = time.monotonic()

    async def all_healthy() -> bool | str:
        states = await _rollup(t, root)
        bad = {c: s for c, s in states.items() if s != "healthy"}
        return (set(states) == set(tree) and not bad) or Pending(
            f"{len(states)} nodes listed; not healthy: {bad}")
    await eventually(all_healthy, timeout, 1.0)
    figures["rollup_all_healthy_s"] = time.monotonic() - t0
    for code in tree:
        assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
    return figures
