"""HC-3: an application transaction holding a row lock does not stall the node's log.

An apply holds the sequencer lock (positions and versions) for its whole transaction.  If
it then waited without bound for a row an application keeps locked — someone left a psql
session open in a transaction after an ``UPDATE``, a long Excel import — every local write
of the node would wait with it, unlogged, for as long as that transaction stays open.
The apply gives up after ``APPLY_LOCK_TIMEOUT_MS``, the whole batch rolls back, the sender
hears a retryable ``UNAVAILABLE`` naming the lock and tries again later; the log moves
meanwhile, and once the application commits, the change merges as any other.
"""
from __future__ import annotations

import uuid

import asyncpg

from syncd.store.sequencer import APPLY_LOCK_TIMEOUT_MS
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually

TREE = {"430100": ("长沙市", "city", None), "430102": ("芙蓉区", "county", "430100")}


async def _logged(conn: asyncpg.Connection, rid: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM syncd.log WHERE id = $1", rid))


async def test_hc3_a_row_locked_by_an_application_does_not_stall_the_log(cluster: Cluster) -> None:
    t = Tree(cluster, TREE)
    app = None
    try:
        await t.setup()
        city, county = t.db("430100"), t.db("430102")
        member = await county.fetchval("INSERT INTO members (org_code, name, title) VALUES ('430102', '委员甲', '原职务') "
                                       "RETURNING id")
        await eventually(lambda: _logged(city, member))
        await eventually(lambda: city.fetchval("SELECT count(*) = 1 FROM members WHERE id = $1", member))
        # an operator's session at the city locks the member's row and stays open
        app = await asyncpg.connect(t.dsns["430100"])
        tr = app.transaction()
        await tr.start()
        await app.execute("SELECT * FROM members WHERE id = $1 FOR UPDATE", member)
        await county.execute("UPDATE members SET title = '县里改的职务' WHERE id = $1", member)

        async def refused_for_the_lock() -> bool | Pending:
            err = t.nodes["430102"].links.push_health.last_error or {}
            if err.get("code") == "UNAVAILABLE" and "locked" in str(err.get("reason")):
                return True
            return Pending(f"push link: {err}")
        await eventually(refused_for_the_lock, timeout=30)
        # the city's own writes are logged meanwhile (positions are not held by the waiting apply)
        local = await city.fetchval("INSERT INTO members (org_code, name) VALUES ('430100', '市委员') RETURNING id")
        await eventually(lambda: _logged(city, local), timeout=10 * APPLY_LOCK_TIMEOUT_MS / 1000)
        assert await app.fetchval("SELECT title FROM members WHERE id = $1", member) == "原职务"  # still held
        await tr.commit()
        # the retried batch applies once the lock is gone: nothing quarantined, the county's value there
        await eventually(lambda: city.fetchval("SELECT title = '县里改的职务' FROM members WHERE id = $1", member),
                         timeout=90)
        assert await city.fetchval("SELECT count(*) FROM syncd.quarantine") == 0
        assert await city.fetchval("SELECT count(*) FROM syncd.parked") == 0
    finally:
        if app is not None:
            await app.close()
        await t.close()
