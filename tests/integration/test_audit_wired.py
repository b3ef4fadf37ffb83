"""HC-15: the audit table lists what crossed each link, on both ends, for pushes and pulls.

Needs :func:`syncd.store.audit.record` called where batches cross a link (``ParentService.on_push``
→ received, ``ChildLinks._push_once`` → sent, ``ParentService.on_pull`` → sent,
``ChildLinks._pull_once`` → received).  A push is named by its ``batch_id``; a pull, which has none, by the
range it carried, ``f"pull ({after}, {last_pos}]"``, the same string at both ends.  Until
that wiring lands this test fails.
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import asyncpg
import pytest

from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree, eventually

pytestmark = pytest.mark.timeout(180)

MOBILE = "13973100077"


async def audited(conn: asyncpg.Connection, peer: str, direction: str, table: str) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM syncd.audit WHERE peer = $1 AND direction = $2 ORDER BY id",
                            peer, direction)
    out = []
    for r in rows:
        tables = json.loads(r["tables"]) if isinstance(r["tables"], str) else r["tables"]
        if table in tables:
            out.append({**dict(r), "tables": tables, "personal_columns": json.loads(r["personal_columns"])
                        if isinstance(r["personal_columns"], str) else r["personal_columns"]})
    return out


async def test_hc15_every_batch_that_crossed_a_link_is_audited_on_both_ends(tree: Tree) -> None:
    fr, prov = tree.db("430102"), tree.db("430000")
    await tree.settled()  # rows written now cross by push and pull, not in a start-up snapshot
    mid = await fr.fetchval("INSERT INTO members (org_code, name, id_card_no, mobile) "
                            "VALUES ('430102', '审计委员', '430102199101011111', $1) RETURNING id", MOBILE)
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '全体会议', '审计会议', now()) RETURNING id")
    await eventually(lambda: prov.fetchval("SELECT count(*) FROM members WHERE id = $1", mid), 30)
    await eventually(lambda: fr.fetchval("SELECT count(*) FROM activities WHERE id = $1", act), 30)

    # push path, up: 芙蓉区 → 长沙市 → 湖南省
    hops_up = [("430102", "430100", "sent"), ("430100", "430102", "received"),
               ("430100", "430000", "sent"), ("430000", "430100", "received")]
    # pull path, down: 湖南省 → 长沙市 → 芙蓉区
    hops_down = [("430000", "430100", "sent"), ("430100", "430000", "received"),
                 ("430100", "430102", "sent"), ("430102", "430100", "received")]

    async def all_audited() -> bool:
        for at, peer, direction in hops_up:
            if not await audited(tree.db(at), peer, direction, "members"):
                return False
        for at, peer, direction in hops_down:
            if not await audited(tree.db(at), peer, direction, "activities"):
                return False
        return True
    await eventually(all_audited, 30)

    for hops, table in ((hops_up, "members"), (hops_down, "activities")):
        for at, peer, direction in hops:
            for row in await audited(tree.db(at), peer, direction, table):
                assert row["changes"] == sum(row["tables"].values()) > 0
                assert row["personal_columns"] == [], (at, peer, direction, row)  # ID number and mobile stay home
                if hops is hops_down:  # a pull has no batch id: both ends name it by its range
                    assert row["batch_id"].startswith("pull ("), row["batch_id"]
        # both ends of a link name the same batches
        for (a, pa, da), (b, pb, db) in zip(hops[::2], hops[1::2]):
            sent = {r["batch_id"] for r in await audited(tree.db(a), pa, da, table)}
            got = {r["batch_id"] for r in await audited(tree.db(b), pb, db, table)}
            assert sent and sent == got, (a, b, sent, got)
    for code in SMALL_TREE:
        text = await tree.db(code).fetchval("SELECT coalesce(string_agg(a::text, ''), '') FROM syncd.audit a")
        assert MOBILE not in text and "430102199101011111" not in text
    # nothing crossed to the other branch, so it has no audit of these tables
    assert not await audited(tree.db("430600"), "430000", "received", "members")
