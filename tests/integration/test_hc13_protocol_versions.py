"""HC-13 / SPEC R3.1: a tree of mixed protocol versions keeps syncing.

This build speaks N = 3, 2 and 1.  A node restricted to ``versions=(1,)`` puts
exactly the version-1 bytes on the wire (no ``HelloReply.clock``, no ``Push.summary``,
``?v=1`` on every request), as a not-yet-upgraded 长沙市 would.  Both ends of its links
are exercised: the province (v3) is its parent, 芙蓉区 (v3) its child.

A build with no version in common (speaking only 4 and 5) is refused
at hello with ``UNSUPPORTED_VERSION``, shown by name in its status, and syncs once
"upgraded" to a build that shares a version.
"""
from __future__ import annotations

from typing import AsyncIterator

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
             versions={"430102": (4, 5)})
    try:
        await t.setup()
        await t.db("430102").execute("INSERT INTO members (org_code, name) VALUES ('430102', '新版委员')")

        async def refused() -> bool | str:
            up = next(ln for ln in (await t.status("430102"))["links"] if ln["direction"] == "parent")
            return (up["state"] == "failed" and (up["last_error"] or {}).get("code") == "UNSUPPORTED_VERSION"
                    or Pending(str(up)))
        await eventually(refused, 20)
        up = next(ln for ln in (await t.status("430102"))["links"] if ln["direction"] == "parent")
        assert "[4, 5]" in up["last_error"]["reason"] and up["last_error"]["hint"], up["last_error"]
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
