"""Partition: 长沙市 cut off from 湖南省 while everyone keeps writing (DESIGN §9, HC-17, HC-31).

The city reaches the province through a :class:`TcpProxy`.  During the cut the
province, the city and both its counties write, and the province (organiser) and
芙蓉区 (the member's committee) both change one sign-in's status — a true conflict.
The city's parent link shows the failure in ``/status``; after ``restore()`` every
row is everywhere it reaches, the sign-in has one value everywhere, the conflict is
recorded once per node (same id), and nothing is logged twice.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from syncd.node import Node
from tests.faults.daemons import duplicates, wait_until
from tests.faults.proxy import TcpProxy
from tests.pg import Cluster
from tests.tree import Tree, eventually, node_config, running

pytestmark = pytest.mark.timeout(120)

TREE = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
    "430104": ("岳麓区", "county", "430100"),
}
CUT_S = 8.0  # "days" in a test: several retry cycles of every loop


class ProxiedTree(Tree):
    proxy: TcpProxy | None = None

    async def start(self, code: str) -> Node:
        if code != "430100":
            return await super().start(code)
        self.proxy = await TcpProxy("127.0.0.1", self.nodes["430000"].port or 0).start()
        cfg = node_config(code, self.tree, self.proxy.url, **self.tuning)
        node = await Node(cfg, self.dsns[code]).start()
        self.nodes[code] = node
        return node

    async def close(self) -> None:
        await super().close()
        if self.proxy is not None:
            await self.proxy.close()


@pytest.fixture
async def tree(cluster: Cluster) -> AsyncIterator[ProxiedTree]:
    async with running(ProxiedTree(cluster, TREE, tuning={"pull_wait_s": 1.0, "retry_cap_s": 1.0})) as t:
        yield t



async def _rows(t: Tree, code: str, table: str, home: str) -> dict[Any, Any]:
    return {r["id"]: r["v"] for r in await t.db(code).fetch(
        f"SELECT id, to_jsonb(x) - 'updated_at' AS v FROM {table} x WHERE org_code = $1", home)}


async def test_partitioned_city_converges_with_each_conflict_once(tree: ProxiedTree) -> None:
    prov, cs, fr, yl = (tree.db(c) for c in ("430000", "430100", "430102", "430104"))
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '全体会议', '分区前', now()) RETURNING id")
    mid = await fr.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '分区委员') RETURNING id")
    await eventually(lambda: fr.fetchval("SELECT count(*) FROM activities WHERE id = $1", act))
    aid = await fr.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                            "VALUES ('430102', $1, $2, '出席') RETURNING id", act, mid)
    await eventually(lambda: prov.fetchval("SELECT count(*) FROM attendance WHERE id = $1", aid))

    assert tree.proxy is not None
    tree.proxy.cut()

    async def link_down() -> bool:
        up = next(ln for ln in (await tree.status("430100"))["links"] if ln["direction"] == "parent")
        return up["state"] in ("crashing", "failed") and up["last_error"] is not None
    await eventually(link_down, 15)

    await prov.execute("UPDATE attendance SET status = '缺席' WHERE id = $1", aid)
    await fr.execute("UPDATE attendance SET status = '请假' WHERE id = $1", aid)
    deadline = asyncio.get_running_loop().time() + CUT_S
    i = 0
    while asyncio.get_running_loop().time() < deadline:
        await prov.execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                           "VALUES ('430000', '视察', $1, now())", f"省{i}")
        await cs.execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                         "VALUES ('430100', '调研', $1, now())", f"市{i}")
        await fr.execute("INSERT INTO members (org_code, name) VALUES ('430102', $1)", f"芙蓉{i}")
        await yl.execute("INSERT INTO members (org_code, name) VALUES ('430104', $1)", f"岳麓{i}")
        i += 1
        await asyncio.sleep(0.1)
    assert tree.proxy.refused > 0  # the city kept trying
    tree.proxy.restore()

    expect = [("activities", "430000", ("430000", "430100", "430102", "430104")),
              ("activities", "430100", ("430100", "430000", "430102", "430104")),
              ("members", "430102", ("430102", "430100", "430000")),
              ("members", "430104", ("430104", "430100", "430000"))]

    async def converged() -> bool | str:
        for table, home, nodes in expect:
            want = await _rows(tree, home, table, home)
            for code in nodes:
                if await _rows(tree, code, table, home) != want:
                    return f"{table} of {home} differs at {code}"
        vals = {await tree.db(c).fetchval("SELECT status FROM attendance WHERE id = $1", aid)
                for c in ("430000", "430100", "430102")}
        return len(vals) == 1 or f"attendance {vals}"
    await wait_until(converged, 40, 0.3)

    ids = {}
    for code in ("430000", "430102"):
        rows = await tree.db(code).fetch("SELECT id FROM syncd.conflicts WHERE row_id = $1", aid)
        assert len(rows) == 1, f"{code} recorded the conflict {len(rows)} times"
        ids[code] = rows[0]["id"]
    assert len(set(ids.values())) == 1
    assert await cs.fetchval("SELECT count(*) FROM syncd.conflicts WHERE row_id = $1", aid) <= 1
    for code in TREE:
        assert not await duplicates(tree.db(code)), code
    up = next(ln for ln in (await tree.status("430100"))["links"] if ln["direction"] == "parent")
    assert up["state"] == "running"
