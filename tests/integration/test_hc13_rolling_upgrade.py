"""HC-13 / issue 6: a tree upgrades its schema one IT room at a time.

Release N adds ``members.wechat_id`` (written at the counties, flows up) and
``activities.livestream_url`` (written at the province, flows down).  湖南省 and the
counties run N; 长沙市 between them still runs N−1: its tables and declarations lack
both columns.  The city must still merge, relay and serve them — values kept opaque
with their versions — and write them into its own tables once it is upgraded, without
logging anything again or recording a conflict.  A table whose merge-rule version
differs is refused at hello by name.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid

import asyncpg
import pytest

from syncd.errors import SyncdError
from syncd.proto.change import Change, ColumnChange
from syncd.proto.messages import Push
from syncd.schema.declarations import SCHEMA, Column, Schema, build_schema
from syncd.store.migrate import init_node
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually

TREE = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
    "430104": ("岳麓区", "county", "430100"),
}
NEW_COLUMNS = {"members": "wechat_id", "activities": "livestream_url"}
#: what release N's migration does to the domain tables
MIGRATION_N = "ALTER TABLE members ADD COLUMN wechat_id text; ALTER TABLE activities ADD COLUMN livestream_url text"


def release(added: dict[str, str], bump: str | None = None) -> Schema:
    """Our declarations plus ``added`` columns (table -> column); ``bump``: a table whose
    merge-rule version goes up (an incompatible change)."""
    tables = []
    for t in SCHEMA.tables:
        if t.name in added:
            t = dataclasses.replace(t, columns=(*t.columns, Column(added[t.name])))
        if t.name == bump:
            t = dataclasses.replace(t, version=t.version + 1)
        tables.append(t)
    return build_schema(tuple(tables))


RELEASE_N = release(NEW_COLUMNS)


async def upgrade(conn: asyncpg.Connection, code: str) -> None:
    """What an IT room does to move its database to release N (the daemon is stopped)."""
    await conn.execute(MIGRATION_N)
    await init_node(conn, code, RELEASE_N)  # triggers regenerated from N's declarations


async def _value(t: Tree, code: str, table: str, column: str, row_id: uuid.UUID) -> object:
    return await t.db(code).fetchval(f"SELECT {column} FROM {table} WHERE id = $1", row_id)


async def _arrived(t: Tree, code: str, table: str, column: str, row_id: uuid.UUID, want: object) -> None:
    async def there() -> bool | Pending:
        got = await _value(t, code, table, column, row_id)
        return got == want or Pending(f"{code} {table}.{column} = {got!r}, want {want!r}\n{await t.diagnose()}")
    await eventually(there, 45)


async def _held(t: Tree, code: str, table: str, row_id: uuid.UUID) -> dict:
    raw = await t.db(code).fetchval("SELECT vals FROM syncd.opaque WHERE tbl = $1 AND id = $2", table, row_id)
    return json.loads(raw) if raw else {}


async def test_hc13_county_n_city_n_minus_1_province_n(cluster: Cluster) -> None:
    t = Tree(cluster, TREE, tuning={"pull_wait_s": 0.5, "failed_probe_s": 1.0},
             schemas={"430000": RELEASE_N, "430102": RELEASE_N, "430104": RELEASE_N})
    try:
        await t.prepare()
        for code in ("430000", "430102", "430104"):
            await upgrade(t.db(code), code)
        await t.start_all(only={"430000", "430100", "430102"})  # 岳麓区 joins later
        await t.settled()

        member = await t.db("430102").fetchval(
            "INSERT INTO members (org_code, name, wechat_id) VALUES ('430102', '微信委员', 'wx-fr-001') RETURNING id")
        activity = await t.db("430000").fetchval(
            "INSERT INTO activities (org_code, kind, title, starts_at, livestream_url) "
            "VALUES ('430000', '视察', '直播视察', now(), 'https://live.example/hn/1') RETURNING id")
        # through the N−1 city both ways, intact
        await _arrived(t, "430000", "members", "wechat_id", member, "wx-fr-001")
        await _arrived(t, "430102", "activities", "livestream_url", activity, "https://live.example/hn/1")
        # an update of the new column only: at the city it changes nothing it can store
        await t.db("430102").execute("UPDATE members SET wechat_id = 'wx-fr-002' WHERE id = $1", member)
        await _arrived(t, "430000", "members", "wechat_id", member, "wx-fr-002")

        # the city stores the rows without the columns, and holds their values and versions
        city = t.db("430100")
        assert await city.fetchval("SELECT name FROM members WHERE id = $1", member) == "微信委员"
        assert await _held(t, "430100", "members", member) == {"wechat_id": "wx-fr-002"}
        assert await _held(t, "430100", "activities", activity) == {"livestream_url": "https://live.example/hn/1"}
        versions = json.loads(await city.fetchval("SELECT v FROM syncd.rowver WHERE tbl = 'members' AND id = $1",
                                                  member))
        assert versions["wechat_id"][4] == "430102", versions  # the county's version, kept beside the others
        awaiting = (await t.status("430100"))["awaiting_upgrade"]
        assert {"table": "members", "column": "wechat_id", "rows": 1} in awaiting, awaiting
        assert {"table": "activities", "column": "livestream_url", "rows": 1} in awaiting, awaiting

        # a city daemon that restarted since the county's hello does not know what the county
        # declared: a push with the new column asks for a hello again, it is not refused
        svc = t.nodes["430100"].service
        declared = svc.child_columns.pop("430102")
        try:
            probe = Change("members", member, "430102", "U", 1, time.time_ns() // 1000, "430102", 1,
                           {"home": "430102"}, {"wechat_id": ColumnChange("wx-probe", 0, 0, None)}, pos=1)
            with pytest.raises(SyncdError) as refused:
                await svc.on_push("430102", Push(uuid.uuid4(), 0, 0, 1, (probe,)))
            assert refused.value.code == "HELLO_REQUIRED", refused.value
        finally:
            svc.child_columns.setdefault("430102", declared)
        assert "wechat_id" in declared["members"] and "wechat_id" not in svc.columns["members"]

        # a county joining now is bootstrapped by the N−1 city: the snapshot carries the column
        await t.start("430104")
        await _arrived(t, "430104", "activities", "livestream_url", activity, "https://live.example/hn/1")

        # the city upgrades: the held values land in its tables, nothing is logged again
        head = await city.fetchval("SELECT head FROM syncd.node")
        await t.stop("430100")
        await upgrade(city, "430100")
        t.schemas["430100"] = RELEASE_N
        await t.start("430100")
        assert await _value(t, "430100", "members", "wechat_id", member) == "wx-fr-002"
        assert await _value(t, "430100", "activities", "livestream_url", activity) == "https://live.example/hn/1"
        assert await city.fetchval("SELECT count(*) FROM syncd.opaque") == 0
        assert (await t.status("430100"))["awaiting_upgrade"] == []
        assert await city.fetchval("SELECT count(*) FROM syncd.log WHERE pos > $1 AND origin = '430100'", head) == 0
        # and from now on the column is an ordinary one at the city
        await t.db("430102").execute("UPDATE members SET wechat_id = 'wx-fr-003' WHERE id = $1", member)
        await _arrived(t, "430100", "members", "wechat_id", member, "wx-fr-003")
        await _arrived(t, "430000", "members", "wechat_id", member, "wx-fr-003")
        for code in TREE:
            assert await t.db(code).fetchval("SELECT count(*) FROM syncd.conflicts") == 0, code
            assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
            assert await t.db(code).fetchval("SELECT count(*) FROM syncd.parked") == 0, code

        # an incompatible change (members' merge rules bumped) is refused at hello, by name
        await t.stop("430104")
        t.schemas["430104"] = release(NEW_COLUMNS, bump="members")
        await t.start("430104")

        async def refused() -> bool | Pending:
            up = next(ln for ln in (await t.status("430104"))["links"] if ln["direction"] == "parent")
            err = up["last_error"] or {}
            return (err.get("code") == "SCHEMA_INCOMPATIBLE" and "members v2 (here v1)" in err.get("reason", "")
                    or Pending(str(up)))
        await eventually(refused, 30)
    finally:
        await t.close()


async def test_hc13_daemon_refuses_to_start_on_an_unmigrated_database(cluster: Cluster) -> None:
    """New declarations on a database without the release's migration: a named error, not
    rows quietly missing a column."""
    t = Tree(cluster, {"430000": TREE["430000"]}, schemas={"430000": RELEASE_N})
    try:
        await t.prepare()
        try:
            await t.start("430000")
        except RuntimeError as e:
            assert "SCHEMA_NOT_MIGRATED" in str(e) and "members.wechat_id" in str(e), e
        else:
            raise AssertionError("the daemon started on a database without members.wechat_id")
    finally:
        await t.close()
