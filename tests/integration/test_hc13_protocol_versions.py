"""HC-13 / SPEC R3.1: a tree of mixed protocol versions keeps syncing.

This build speaks N = 4, 3, 2 and 1.  A node restricted to ``versions=(1,)`` puts
exactly the version-1 bytes on the wire (no ``HelloReply.clock``, no ``Push.summary``,
``?v=1`` on every request), as a not-yet-upgraded 长沙市 would.  Both ends of its links
are exercised: the province (v4) is its parent, 芙蓉区 (v4) its child.

A build with no version in common (speaking only 5 and 6) is refused
at hello with ``UNSUPPORTED_VERSION``, shown by name in its status, and syncs once
"upgraded" to a build that shares a version.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest

from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually, running

CHAIN = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
}


@pytest.fixture
async def mixed(cluster: Cluster) -> AsyncIterator[Tree]:
    async with running(Tree(cluster, CHAIN, tuning={"pull_wait_s": 0.5}, versions={"430100": (1,)})) as t:
        yield t



async def test_r3_1_v1_city_in_a_v3_tree_syncs_both_ways(mixed: Tree) -> None:
    t = mixed
    await t.settled()
    await t.db("430102").execute("INSERT INTO members (org_code, name) VALUES ('430102', '旧版路过委员')")
    await t.db("430000").execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                                 "VALUES ('430000', '视察', '跨版本视察', now())")

    async def both_ways() -> bool | str:
        up = await t.db("430000").fetchval("SELECT count(*) FROM members WHERE name = '旧版路过委员'")
        mid = await t.db("430100").fetchval("SELECT count(*) FROM members WHERE name = '旧版路过委员'")
        down = await t.db("430102").fetchval("SELECT count(*) FROM activities WHERE title = '跨版本视察'")
        return (up, mid, down) == (1, 1, 1) or Pending(
            f"province {up} city {mid} county {down}\n{await t.diagnose()}")
    await eventually(both_ways, 30)

    # what was spoken: version 1 on both of the city's links, nothing newer near it
    city, county = t.nodes["430100"].links, t.nodes["430102"].links
    assert city.link.version == 1 and county.link.version == 1
    assert county.clock_offset_ms is None  # a v1 HelloReply has no clock (R3.5)
    assert city.clock_offset_ms is None
    for code in CHAIN:
        assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
    # R3.5: a v1 city pushes no status summaries, so the province never hears of its subtree
    province = {s["node"]: s["state"] for s in (await t.status("430000"))["subtree"]}
    assert province["430100"] == province["430102"] == "missing", province


async def test_r3_1_build_with_no_version_in_common_is_refused_at_hello_by_name(cluster: Cluster) -> None:
    t = Tree(cluster, CHAIN, tuning={"pull_wait_s": 0.5, "failed_probe_s": 1.0},
             versions={"430102": (5, 6)})
    try:
        await t.setup()
        await t.db("430102").execute("INSERT INTO members (org_code, name) VALUES ('430102', '新版委员')")

        async def refused() -> bool | str:
            up = next(ln for ln in (await t.status("430102"))["links"] if ln["direction"] == "parent")
            return (up["state"] == "failed" and (up["last_error"] or {}).get("code") == "UNSUPPORTED_VERSION"
                    or Pending(str(up)))
        await eventually(refused, 20)
        up = next(ln for ln in (await t.status("430102"))["links"] if ln["direction"] == "parent")
        assert "[5, 6]" in up["last_error"]["reason"] and up["last_error"]["hint"], up["last_error"]
        assert await t.db("430100").fetchval("SELECT count(*) FROM members WHERE name = '新版委员'") == 0
        assert await t.db("430100").fetchval(
            "SELECT count(*) FROM syncd.cursors WHERE peer = '430102' AND kind = 'applied'") == 0

        # the operator installs a build that shares a version: it syncs by itself
        await t.stop("430102")
        del t.versions["430102"]
        await t.start("430102")

        async def arrived() -> bool:
            return bool(await t.db("430000").fetchval("SELECT count(*) FROM members WHERE name = '新版委员'"))
        await eventually(arrived, 30)
    finally:
        await t.close()


@pytest.mark.parametrize("city_speaks", [(1, 2, 3), (1, 2, 3, 4)], ids=["v3_city", "v4_city"])
async def test_r9_2_snapshots_carry_the_same_rows_and_versions_at_v3_and_v4(cluster: Cluster,
                                                                           city_speaks: tuple[int, ...]) -> None:
    """R3.1, R9.2: a city loads its snapshot from the province and serves its own to the county;
    at version 3 (a v3 city between v4 nodes: both links speak 3, rows as Versions) and at
    version 4 (stored rows as JSON texts) every node ends with the province's rows, tombstones
    and versions, an edit's replaced version (prev) included."""
    t = Tree(cluster, CHAIN, tuning={"pull_wait_s": 0.5}, versions={"430100": city_speaks})
    try:
        await t.prepare()
        await t.start_all(only={"430000"})
        prov = t.db("430000")
        await prov.execute("INSERT INTO activities (org_code, kind, title, starts_at) SELECT '430000', '视察', "
                           "'快照视察' || g, now() FROM generate_series(1, 30) g")
        await prov.execute("UPDATE activities SET title = title || '（改）' WHERE title IN ('快照视察1', '快照视察2')")
        await prov.execute("DELETE FROM activities WHERE title = '快照视察3'")

        async def versioned() -> bool | str:
            n = await prov.fetchval("SELECT count(*) FROM syncd.rowver WHERE tbl = 'activities'")
            edited = await prov.fetchval("SELECT count(*) FROM syncd.rowver WHERE tbl = 'activities' "
                                         "AND v::jsonb -> 'title' -> 5 <> 'null'::jsonb")
            return (n, edited) == (30, 2) or Pending(f"{n} versioned, {edited} edited")
        await eventually(versioned, 20)
        await t.start("430100")
        await t.start("430102")

        async def state(code: str) -> list[tuple[Any, ...]]:
            return [(r["id"], r["cl"], json.loads(r["v"]), r["title"]) for r in await t.db(code).fetch(
                "SELECT r.id, r.cl, r.v, a.title FROM syncd.rowver r LEFT JOIN activities a ON a.id = r.id "
                "WHERE r.tbl = 'activities' ORDER BY r.id")]
        want = await state("430000")
        assert sum(1 for _, cl, _, _ in want if cl % 2 == 0) == 1

        async def loaded() -> bool | str:
            got = {c: await state(c) for c in ("430100", "430102")}
            return all(g == want for g in got.values()) or Pending(f"{ {c: len(g) for c, g in got.items()} }")
        await eventually(loaded, 30)
        assert t.nodes["430100"].links.link.version == t.nodes["430102"].links.link.version == max(city_speaks)
        for code in CHAIN:
            assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
            assert await t.db(code).fetchval("SELECT count(*) FROM syncd.conflicts") == 0, code
    finally:
        await t.close()
