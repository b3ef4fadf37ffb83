"""HC-15: snapshot chunks are audited like pushes and pulls, on both ends, by the same name."""
from __future__ import annotations

import json
from typing import AsyncIterator

import asyncpg
import pytest

from syncd.store.sequencer import Sequencer
from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def tree(cluster: Cluster) -> AsyncIterator[Tree]:
    """The six-node tree, the province's committees rows versioned before any daemon starts:
    a child that asked before the province's sequencer got to them would be served none (they
    would come by pull instead), and there would be no committees chunk to audit."""
    t = Tree(cluster, SMALL_TREE)
    try:
        await t.prepare()
        await Sequencer(me="430000").drain(t.db("430000"))
        await t.start_all()
        yield t
    finally:
        await t.close()


async def snapshot_audit(conn: asyncpg.Connection, peer: str, direction: str) -> list[tuple[str, str, int, str]]:
    """(batch id, tables, changes, personal columns) of every audited snapshot chunk, sorted."""
    rows = await conn.fetch("SELECT batch_id, tables, changes, personal_columns FROM syncd.audit "
                            "WHERE peer = $1 AND direction = $2 AND batch_id LIKE 'snapshot %'", peer, direction)
    return sorted((r["batch_id"], json.dumps(json.loads(r["tables"]), sort_keys=True), r["changes"],
                   r["personal_columns"]) for r in rows)


async def test_hc15_snapshot_chunks_are_audited_at_both_ends(tree: Tree) -> None:
    await tree.settled()  # every child bootstrapped by snapshot at start-up
    for parent, child in (("430000", "430100"), ("430100", "430102"), ("430600", "430602")):
        sent = await snapshot_audit(tree.db(parent), child, "sent")
        received = await snapshot_audit(tree.db(child), parent, "received")
        assert sent and sent == received, (parent, child, sent, received)
        assert ("snapshot committees (start, end]", '{"committees": 6}', 6, "[]") in sent, sent
        assert all(json.loads(personal) == [] and n > 0 for _, _, n, personal in sent)
