"""Poison rows: a change that breaks a local constraint waits for an operator, the link flows on (HC-11, HC-12).

长沙市 has a vendor CHECK constraint its counties know nothing about.  A 芙蓉区 row that
breaks it is quarantined ``POISON`` at the city with the constraint's name (never the
row's values), the city still relays it to 湖南省, later rows keep arriving, ``/status``
counts it, and after the constraint is dropped :func:`release_quarantined` applies it.
"""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from syncd.store.quarantine import release_quarantined
from tests.faults.daemons import duplicates
from tests.pg import Cluster
from tests.tree import Tree, eventually, running

pytestmark = pytest.mark.timeout(120)

CHAIN = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
}


@pytest.fixture
async def tree(cluster: Cluster) -> AsyncIterator[Tree]:
    async with running(Tree(cluster, CHAIN, tuning={"pull_wait_s": 1.0, "retry_cap_s": 0.5})) as t:
        yield t



async def _has(t: Tree, code: str, row: object) -> bool:
    return bool(await t.db(code).fetchval("SELECT count(*) FROM members WHERE id = $1", row))


async def test_hc11_poison_row_quarantined_link_flows_relayed_and_released_after_fix(tree: Tree) -> None:
    city, county = tree.db("430100"), tree.db("430102")
    await city.execute("ALTER TABLE members ADD CONSTRAINT vendor_no_title CHECK (title IS DISTINCT FROM '禁用职务')")
    bad = await county.fetchval(
        "INSERT INTO members (org_code, name, title) VALUES ('430102', '毒行', '禁用职务') RETURNING id")
    later = await county.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '后来者') RETURNING id")

    await eventually(lambda: _has(tree, "430000", bad))  # relayed all the same (HC-12)
    await eventually(lambda: _has(tree, "430100", later))  # the link keeps flowing
    assert not await _has(tree, "430100", bad)
    q = await city.fetchrow("SELECT id, code, reason FROM syncd.quarantine WHERE row_id = $1", bad)
    assert q["code"] == "POISON" and "vendor_no_title" in q["reason"] and "禁用职务" not in q["reason"]
    status = await tree.status("430100")
    assert status["quarantined"] == 1
    assert {ln["peer"]: ln["state"] for ln in status["links"]}["430102"] == "running"

    await city.execute("ALTER TABLE members DROP CONSTRAINT vendor_no_title")
    res = await release_quarantined(city, tree.nodes["430100"].ctx, q["id"])
    assert res.outcome == "applied"
    assert await city.fetchval("SELECT title FROM members WHERE id = $1", bad) == "禁用职务"
    assert await city.fetchval("SELECT released_at IS NOT NULL FROM syncd.quarantine WHERE id = $1", q["id"])
    assert (await tree.status("430100"))["quarantined"] == 0
    # a release is no concurrent edit: no conflict is recorded for it (HC-17)
    assert await city.fetchval("SELECT count(*) FROM syncd.conflicts WHERE row_id = $1", bad) == 0
    # releasing re-applies here only: nothing is logged twice anywhere
    more = await county.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '释放后') RETURNING id")
    await eventually(lambda: _has(tree, "430000", more))
    for code in CHAIN:
        assert not await duplicates(tree.db(code)), code
