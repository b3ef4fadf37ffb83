"""A parent reads a child's next snapshot chunk while the one it served is on its way.

``ParentService._read_ahead``: the chunk after the one served is read at once, on a
connection of its own, and served from there when the child asks for it; any other request is
read afresh, and the read-ahead is dropped at stop.
"""
from __future__ import annotations

import asyncio

import pytest

from syncd.node import ReadAhead
from syncd.proto.messages import SnapshotRequest
from syncd.store.sequencer import Sequencer
from syncd.store.snapshot import read_chunk
from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree

pytestmark = pytest.mark.timeout(120)

CHILD = "430100"


async def test_the_next_chunk_is_read_ahead_and_served_when_asked_for(cluster: Cluster) -> None:
    t = Tree(cluster, SMALL_TREE)
    try:
        await t.prepare()
        prov = t.db("430000")
        await Sequencer(me="430000").drain(prov)  # the committees rows, versioned
        svc = (await t.start("430000")).service
        assert svc is not None
        ids = [r["id"] for r in await prov.fetch("SELECT id FROM committees ORDER BY id")]
        assert len(ids) == 6

        first = await svc.on_snapshot(CHILD, SnapshotRequest("committees", None, 2, None))
        assert [r.id for r in first.rows] == ids[:2]
        ahead = svc.read_ahead[CHILD]
        assert ahead.key == ("committees", first.next_after_id, 2)
        await ahead.task  # read before the child asks
        old_name = await prov.fetchval("SELECT name FROM committees WHERE id = $1", ids[2])
        await prov.execute("UPDATE committees SET name = '改了名' WHERE id = $1", ids[2])

        second = await svc.on_snapshot(CHILD, SnapshotRequest("committees", first.next_after_id, 2, first.position))
        assert [r.id for r in second.rows] == ids[2:4]
        assert second.rows[0].vals["name"] == old_name  # the rows read ahead (the pull brings the rename)
        assert svc.read_ahead[CHILD].key == ("committees", second.next_after_id, 2)

        # the child asks for the second chunk again (a retry): read afresh, then the third read ahead
        again = await svc.on_snapshot(CHILD, SnapshotRequest("committees", first.next_after_id, 2, first.position))
        assert [r.id for r in again.rows] == ids[2:4] and again.rows[0].vals["name"] == "改了名"
        assert svc.read_ahead[CHILD].key == ("committees", again.next_after_id, 2)

        # walking on serves every row once, as reads made when asked give them
        served, after = [*first.rows, *again.rows], again.next_after_id
        while after is not None:
            chunk = await svc.on_snapshot(CHILD, SnapshotRequest("committees", after, 2, first.position))
            served += chunk.rows
            after = chunk.next_after_id
        fresh, nxt = await read_chunk(prov, svc.schema, svc.ctx.topo, "430000", CHILD, "committees", None, 100)
        assert nxt is None
        assert [(r.id, r.vals, r.vers) for r in served] == [(r.id, r.vals, r.vers) for r in fresh]
        assert CHILD not in svc.read_ahead  # the table is done: nothing read ahead

        # a new snapshot (no position yet) never takes a read-ahead: its rows must be read after
        # the position it starts at
        stale = asyncio.get_running_loop().create_future()
        stale.set_result(([], None))
        svc.read_ahead[CHILD] = ReadAhead(("committees", None, 2), stale)
        new = await svc.on_snapshot(CHILD, SnapshotRequest("committees", None, 2, None))
        assert [r.id for r in new.rows] == ids[:2]

        # a read-ahead left when the daemon stops is cancelled, not left running on a closed pool
        left = svc.read_ahead[CHILD].task
        await t.stop("430000")
        assert svc.read_ahead == {} and left.done()
    finally:
        await t.close()
