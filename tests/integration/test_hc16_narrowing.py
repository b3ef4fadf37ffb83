"""HC-16: only the home writes reach-limited columns, and narrowing a reach purges the copies.

湖南省 may not write a 芙蓉区 member's leave reason (reach ``home``), even on an attendance row
it holds.  Then a release narrows ``members.work_unit`` from ``all`` to ``home`` (the table's
version bumped, so every node takes it before they talk again): after the restart with it,
长沙市 and 湖南省 have cleared the values they held — and their versions — while 芙蓉区
keeps its own, and a later edit at home stays there.
"""
from __future__ import annotations

import dataclasses
import json

import asyncpg
import pytest

from syncd import routing
from syncd.schema.declarations import SCHEMA, Schema, build_schema
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually

TREE = {"430000": ("湖南省", "province", None), "430100": ("长沙市", "city", "430000"),
        "430102": ("芙蓉区", "county", "430100")}
ABOVE = ("430100", "430000")


def narrowed() -> Schema:
    """The shipped declarations with ``members.work_unit`` reaching its home only."""
    tables = []
    for t in SCHEMA.tables:
        if t.name == "members":
            cols = tuple(dataclasses.replace(c, reach="home") if c.name == "work_unit" else c for c in t.columns)
            t = dataclasses.replace(t, columns=cols, version=t.version + 1)
        tables.append(t)
    return build_schema(tuple(tables))


async def _work_unit(conn: asyncpg.Connection, mid: object) -> tuple[str | None, bool]:
    """The value held, and whether a version of it is held."""
    value = await conn.fetchval("SELECT work_unit FROM members WHERE id = $1", mid)
    v = await conn.fetchval("SELECT v FROM syncd.rowver WHERE tbl = 'members' AND id = $1", mid)
    return value, "work_unit" in json.loads(v)


async def test_hc16_home_only_writes_and_a_narrowed_reach_is_purged_above(cluster: Cluster,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    t = Tree(cluster, TREE)
    try:
        await t.setup()
        county, prov = t.db("430102"), t.db("430000")
        mid = await county.fetchval(
            "INSERT INTO members (org_code, name, work_unit) VALUES ('430102', '吴敏', '芙蓉区人民医院') RETURNING id")
        act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                  "VALUES ('430000', '视察', '全省视察', now()) RETURNING id")
        await eventually(lambda: county.fetchval("SELECT count(*) = 1 FROM activities WHERE id = $1", act))
        aid = await county.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                                    "VALUES ('430102', $1, $2, '请假') RETURNING id", act, mid)

        async def held_above() -> bool | Pending:
            got = [await _work_unit(t.db(c), mid) for c in ABOVE]
            ok = got == [("芙蓉区人民医院", True)] * 2 and await prov.fetchval(
                "SELECT count(*) = 1 FROM attendance WHERE id = $1", aid)
            return True if ok else Pending(str(got))
        await eventually(held_above)
        # the province, the activity's organiser, may not write the member's leave reason
        with pytest.raises(asyncpg.PostgresError, match="PERSONAL_DATA_AWAY_FROM_HOME"):
            await prov.execute("UPDATE attendance SET leave_reason = '省里代填' WHERE id = $1", aid)

        for code in ("430102", "430100", "430000"):
            await t.stop(code)
        release = narrowed()  # every node of this process takes the release: its nodes and routing
        t.schemas = {code: release for code in TREE}
        monkeypatch.setattr(routing, "SCHEMA", release)
        await t.start_all()
        for code in ABOVE:
            assert await _work_unit(t.db(code), mid) == (None, False), code
        assert await _work_unit(county, mid) == ("芙蓉区人民医院", True)
        # and a later edit at home stays at home
        await county.execute("UPDATE members SET work_unit = '湘雅医院', title = '主任' WHERE id = $1", mid)
        await eventually(lambda: prov.fetchval("SELECT title = '主任' FROM members WHERE id = $1", mid))
        for code in ABOVE:
            assert await _work_unit(t.db(code), mid) == (None, False), code
        # a second start purges nothing more (the reach is recorded)
        await t.stop("430100")
        await t.start("430100")
        assert await t.db("430100").fetchval("SELECT reach FROM syncd.column_reach "
                                             "WHERE tbl = 'members' AND col = 'work_unit'") == "home"
    finally:
        await t.close()
