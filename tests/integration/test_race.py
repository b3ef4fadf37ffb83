"""HC-4, many times: local writes racing incoming changes to the same column (issue 5).

湖南省 organises a 视察; 芙蓉区's member attends.  The attendance status is a multi-writer
column (the member's home and the organiser both write it).  Writers at both ends update it
over and over with short random pauses while the daemons run, so incoming changes keep
landing on rows with local captures not yet versioned.  Afterwards every copy holds the
same value, that value is the one of the highest version any node ever logged for the
column, and no write made at either end is missing from the logs (nothing overwritten
unversioned).
"""
from __future__ import annotations

import asyncio
import json
import random
import uuid

import asyncpg

from syncd.proto.change import Version
from syncd.store.log import decode_cols
from tests.tree import Tree, eventually

ROUNDS = 40
STATUSES = ("出席", "请假", "缺席")
NODES = ("430000", "430100", "430102")


async def _present(t: Tree, table: str, row_id: uuid.UUID) -> None:
    async def ok() -> bool:
        return all([await t.db(c).fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", row_id) for c in NODES])
    await eventually(ok)


async def _writer(conn: asyncpg.Connection, aid: uuid.UUID, rnd: random.Random, offset_s: int) -> None:
    """ROUNDS updates of status (often the same value) and sign_in_at (new every time)."""
    for i in range(ROUNDS):
        await conn.execute("UPDATE attendance SET status = $2, sign_in_at = '2026-03-03 09:00+08'::timestamptz "
                           "+ make_interval(secs => $3) WHERE id = $1",
                           aid, STATUSES[rnd.randrange(len(STATUSES))], offset_s + i)
        await asyncio.sleep(rnd.choice((0, 0.005, 0.02, 0.05)))


async def _versions(conn: asyncpg.Connection, aid: uuid.UUID, col: str) -> list[tuple[Version, object]]:
    """Every (version, value) of attendance.``col`` in this node's log."""
    out = []
    for r in await conn.fetch("SELECT cl, ts, origin, cols FROM syncd.log WHERE id = $1", aid):
        cols = decode_cols(r["cols"])
        if col in cols:
            value, rnd, stage, _prev = cols[col]
            out.append((Version(r["cl"], rnd, stage, r["ts"], r["origin"]), value))
    return out


async def test_hc4_local_writes_racing_incoming_changes_many_times(tree: Tree) -> None:
    prov, fr = tree.db("430000"), tree.db("430102")
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '视察', '竞态视察', now()) RETURNING id")
    mid = await fr.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '赛跑') RETURNING id")
    await _present(tree, "activities", act)
    await _present(tree, "members", mid)
    aid = await fr.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                            "VALUES ('430102', $1, $2, '出席') RETURNING id", act, mid)
    await _present(tree, "attendance", aid)

    await asyncio.gather(_writer(prov, aid, random.Random(1), 0), _writer(fr, aid, random.Random(2), 1000))
    await tree.settled()

    async def converged() -> bool:
        rows = {tuple(await tree.db(c).fetchrow("SELECT status, sign_in_at FROM attendance WHERE id = $1", aid))
                for c in NODES}
        # leave_reason is personal: its version stays at 芙蓉区 (HC-14)
        vers = {await tree.db(c).fetchval("SELECT (v::jsonb - 'leave_reason')::text FROM syncd.rowver WHERE id = $1", aid)
                for c in NODES}
        return len(rows) == 1 and len(vers) == 1
    try:
        await eventually(converged)
    except AssertionError:
        for c in NODES:
            print("DEBUG", c, await tree.db(c).fetchrow("SELECT status, sign_in_at FROM attendance WHERE id = $1", aid),
                  await tree.db(c).fetchval("SELECT v::text FROM syncd.rowver WHERE id = $1", aid))
        print(await tree.diagnose())
        raise

    for col in ("status", "sign_in_at"):
        # the winner everywhere is the highest version logged anywhere: no write lost to one it beats
        logged = [v for c in NODES for v in await _versions(tree.db(c), aid, col)]
        best_version, best_value = max(logged, key=lambda x: x[0])
        for c in NODES:
            held = json.loads(await tree.db(c).fetchval("SELECT v FROM syncd.rowver WHERE id = $1", aid))[col]
            assert Version(*held[:5]) == best_version, (c, col)
            got = await tree.db(c).fetchval(f"SELECT to_jsonb({col}) FROM attendance WHERE id = $1", aid)
            assert json.loads(got) == best_value, (c, col)
        # each version was logged once per node (no double relay)
        for c in NODES:
            vs = [v for v, _ in await _versions(tree.db(c), aid, col)]
            assert len(vs) == len(set(vs)), (c, col)
    # every write at each end was versioned into its own log — sign_in_at changed every time —
    # and reaches the other end, even those that lost (they may still be on their way after the
    # values converged, when the later writes won)
    for code in ("430000", "430102"):
        own = {v for v, val in await _versions(tree.db(code), aid, "sign_in_at") if v.origin == code and val}
        assert len(own) == ROUNDS, (code, len(own))
        other = "430102" if code == "430000" else "430000"

        async def arrived() -> bool:
            return {v for v, val in await _versions(tree.db(other), aid, "sign_in_at")
                    if v.origin == code and val} == own  # noqa: B023
        await eventually(arrived)
