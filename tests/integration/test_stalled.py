"""A link whose cursor does not move while its peer has more for it shows ``stalled`` (DESIGN §8).

Deterministic fault: a session at 芙蓉区 holds an EXCLUSIVE lock on ``activities``, so the
county's apply of a pulled activity waits on it forever — no error, the loops look alive,
the pull cursor does not move.  With ``stall_after_s = 2`` both ends must say so within
seconds, with the cursor and the reason, and recover by themselves once the lock goes.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import aiohttp
import asyncpg
import pytest

from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree, eventually

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def quick_stall_tree(cluster: Cluster) -> AsyncIterator[Tree]:
    t = Tree(cluster, SMALL_TREE, tuning={"stall_after_s": 2.0})
    try:
        await t.setup()
        yield t
    finally:
        await t.close()


async def get(t: Tree, code: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async with s.get(f"http://127.0.0.1:{t.nodes[code].port}{path}") as r:
            return r.status, json.loads(await r.text())


async def link(t: Tree, code: str, peer: str) -> dict[str, Any]:
    status, body = await get(t, code, "/status")
    assert status == 200, body
    (ln,) = [ln for ln in body["links"] if ln["peer"] == peer]
    return ln


async def test_stalled_link_is_shown_at_both_ends_with_its_reason_and_recovers(quick_stall_tree: Tree) -> None:
    t = quick_stall_tree
    await t.settled()
    await eventually(lambda: link(t, "430102", "430100"), 10)
    assert (await link(t, "430102", "430100"))["state"] == "running"
    assert (await link(t, "430102", "430100"))["reason"] is None

    blocker = await asyncpg.connect(t.dsns["430102"])
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE activities IN EXCLUSIVE MODE")  # the county's apply will wait here
    try:
        act = await t.db("430100").fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                            "VALUES ('430100', '视察', '卡住的视察', now()) RETURNING id")

        async def county_sees_stall() -> dict[str, Any] | None:
            ln = await link(t, "430102", "430100")
            return ln if ln["state"] == "stalled" else None
        up = await eventually(county_sees_stall, 30, 0.3)
        assert up["reason"].startswith("pull cursor ") and "unchanged for" in up["reason"]
        assert "430100's head for this node is" in up["reason"]
        assert up["cursor"] is not None and f"pull cursor {up['cursor']} " in up["reason"]

        async def city_sees_stall() -> dict[str, Any] | None:
            ln = await link(t, "430100", "430102")
            return ln if ln["state"] == "stalled" else None
        down = await eventually(city_sees_stall, 30, 0.3)
        assert down["reason"].startswith("430102's pull cursor ") and "outbox here grew to" in down["reason"]
        assert down["lag_changes"] >= 1
        assert (await link(t, "430100", "430104"))["state"] == "running"  # its sibling is fine

        code, body = await get(t, "430102", "/readyz")
        assert code == 503 and "430100 stalled" in body["reason"]
        code, body = await get(t, "430102", "/healthz")
        assert code == 200  # alive all the same (HC-31)
        assert await t.db("430102").fetchval("SELECT count(*) FROM activities WHERE id = $1", act) == 0
    finally:
        await tx.rollback()
        await blocker.close()

    await eventually(lambda: t.db("430102").fetchval("SELECT count(*) FROM activities WHERE id = $1", act), 30)

    async def both_running() -> bool:
        return ((await link(t, "430102", "430100"))["state"] == "running"
                and (await link(t, "430100", "430102"))["state"] == "running")
    await eventually(both_running, 30, 0.3)
    assert (await link(t, "430102", "430100"))["reason"] is None
