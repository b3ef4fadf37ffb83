"""Retention, restore and resync on real daemons (issue 6): HC-21, HC-7, HC-22.

Tree: 430000 湖南省 → 430100 长沙市 (430102 芙蓉区, 430104 岳麓区), 430600 岳阳市 (430602 岳阳楼区);
every node a real daemon on its own database, HTTP on loopback.  A "dump" is a copy of a
node's database made with ``CREATE DATABASE … TEMPLATE`` while its daemon is stopped; a
"restore" points the node at a copy of that dump.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, AsyncIterator

import asyncpg
import pytest

from syncd.config import Secret
from syncd.errors import SyncdError
from syncd.node import wire_key_id
from syncd.proto.messages import Push, SnapshotRequest
from syncd.proto.signing import Keyring
from syncd.schema.declarations import SCHEMA
from syncd.store.retention import RESYNC_ALWAYS
from syncd.store.versioning import id_card_hash
from syncd.transport.http import HttpParentLink
from tests.pg import Cluster
from tests.tree import HASH_KEY, SMALL_TREE, Tree, eventually, secret

pytestmark = pytest.mark.timeout(300)

ALL = list(SMALL_TREE)
#: retention short enough to pass within a test; the loop runs often
SHORT = {"max_retention": "4s", "retention_interval_s": 0.3}


async def n(t: Tree, code: str, sql: str, *args: Any) -> int:
    return int(await t.db(code).fetchval(sql, *args))


async def at(t: Tree, table: str, row: uuid.UUID, codes: list[str]) -> bool:
    return all([await n(t, c, f"SELECT count(*) FROM {table} WHERE id = $1", row) == 1 for c in codes])


async def gone(t: Tree, table: str, row: uuid.UUID, codes: list[str]) -> bool:
    return all([await n(t, c, f"SELECT count(*) FROM {table} WHERE id = $1", row) == 0 for c in codes])


async def wait(t: Tree, check: Any, timeout: float = 60) -> Any:
    try:
        return await eventually(check, timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{await t.diagnose()}") from None


async def no_conflicts_or_quarantine(t: Tree) -> None:
    for code in t.nodes:
        assert await n(t, code, "SELECT count(*) FROM syncd.conflicts") == 0, \
            f"conflict recorded at {code}: {await t.db(code).fetch('SELECT tbl, col, winner, loser FROM syncd.conflicts')}"
        assert await n(t, code, "SELECT count(*) FROM syncd.quarantine") == 0, \
            f"quarantined at {code}: {await t.db(code).fetch('SELECT code, reason FROM syncd.quarantine')}"


async def mark_resync(t: Tree, parent: str, child: str) -> None:
    """``parent`` answers ``child``'s next pull MUST_RESYNC (what a city does to its children
    after its own bootstrap)."""
    await t.db(parent).execute(
        "INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, 'truncated', $2) "
        "ON CONFLICT (peer, kind) DO UPDATE SET pos = excluded.pos", child, RESYNC_ALWAYS)


async def resynced_by_pull(t: Tree, code: str) -> bool:
    links = t.nodes[code].links
    return any(r["channel"] == "pull" for r in links.resyncs) and (links.snapshot_state or {}).get("state") == "done"


async def add_member(conn: asyncpg.Connection, org: str, name: str, id_no: str | None = None,
                     mobile: str | None = None, work_unit: str | None = None) -> uuid.UUID:
    return await conn.fetchval(
        "INSERT INTO members (org_code, name, id_card_no, mobile, work_unit) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        org, name, id_no, mobile, work_unit)


@pytest.fixture
async def short_tree(cluster: Cluster) -> AsyncIterator[Tree]:
    t = Tree(cluster, SMALL_TREE, tuning=dict(SHORT))
    try:
        await t.setup()
        await t.settled()
        yield t
    finally:
        await t.close()


# -- databases as dumps ---------------------------------------------------------------------

async def copy_database(cluster: Cluster, dsn: str, prefix: str) -> str:
    """A copy of ``dsn``'s database (nobody may be connected to it)."""
    src = dsn.rsplit("/", 1)[1]
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(cluster.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{src}"')
    finally:
        await admin.close()
    return cluster.dsn(name)


async def dump(t: Tree, code: str, *, restart: bool = True) -> str:
    """Stop ``code``, copy its database (the backup), start it again at the same address."""
    await t.stop(code)
    await t.conns[code].close()
    copy = await copy_database(t.cluster, t.dsns[code], f"dump{code}")
    t.conns[code] = await asyncpg.connect(t.dsns[code])
    if restart:
        await t.start(code)
    return copy


async def restore(t: Tree, code: str, backup: str, extra: list[str]) -> None:
    """Stop ``code`` and put a copy of ``backup`` in place of its database (not started)."""
    await t.stop(code)
    await t.conns[code].close()
    extra.append(t.dsns[code])
    t.dsns[code] = await copy_database(t.cluster, backup, f"restored{code}")
    t.conns[code] = await asyncpg.connect(t.dsns[code])


# -- HC-21 ------------------------------------------------------------------------------------

async def test_hc21_offline_county_does_not_pin_the_log_and_resyncs_by_merging(short_tree: Tree) -> None:
    t = short_tree
    yl, cs, prov = t.db("430104"), t.db("430100"), t.db("430000")
    m1 = await add_member(yl, "430104", "岳一", "430104198001011234", "13900000001", "湖南大学")
    doomed = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                 "VALUES ('430000', '视察', '将被删除的视察', now()) RETURNING id")
    await wait(t, lambda: at(t, "members", m1, ["430000"]))
    await wait(t, lambda: at(t, "activities", doomed, ["430104"]))

    await t.stop("430104")  # 岳麓区 is off for longer than max_retention and keeps working
    served = await n(t, "430100", "SELECT pos FROM syncd.cursors WHERE peer = '430104' AND kind = 'served'")
    m2 = await add_member(yl, "430104", "岳二", "430104199002022345", "13900000002", "中南大学")
    await yl.execute("UPDATE members SET work_unit = '湖南师大' WHERE id = $1", m1)
    await prov.execute("DELETE FROM activities WHERE id = $1", doomed)
    for wave in range(3):  # the province keeps publishing; every county is entitled to it
        await prov.executemany("INSERT INTO activities (org_code, kind, title, starts_at) "
                               "VALUES ('430000', '调研', $1, now())", [(f"调研{wave}-{i}",) for i in range(100)])
        await asyncio.sleep(1.5)
    city_head = await n(t, "430100", "SELECT head FROM syncd.node")

    # the offline county does not pin 长沙市's log: retention passes its position
    async def passed() -> bool:
        return await n(t, "430100", "SELECT log_first FROM syncd.node") > served + 1
    await wait(t, passed, 30)


    async def bounded() -> bool:  # the log holds less than the county's backlog alone
        return await n(t, "430100", "SELECT count(*) FROM syncd.log") < city_head - served
    await wait(t, bounded, 30)

    async def marked() -> bool:  # (a long poll the county left behind may still store a later served)
        pos = await t.db("430100").fetchval(
            "SELECT pos FROM syncd.cursors WHERE peer = '430104' AND kind = 'truncated'")
        return pos is not None and pos > served
    await wait(t, marked, 30)
    status_first = (await _status(t, "430100"))["node"]["log_first"]
    assert status_first > served + 1
    # the delete's tombstone is collected upstream: only the resync can tell 岳麓区 the row is gone
    await wait(t, lambda: _no_rowver(t, doomed, ["430000", "430100"]), 30)

    # its push is answered MUST_RESYNC with a new epoch (asked here first, signed as 岳麓区: which
    # of the daemon's two channels reaches 长沙市 first is up to the network)
    epoch = await n(t, "430104", "SELECT epoch FROM syncd.links WHERE peer = '430100'")
    cursor = await n(t, "430100", "SELECT pos FROM syncd.cursors WHERE peer = '430104' AND kind = 'applied'")
    link = child_link(t, "430104", "430100")
    try:
        with pytest.raises(SyncdError) as refused:
            await link.push(Push(uuid.uuid4(), epoch, cursor, cursor, ()))
    finally:
        await link.close()
    assert refused.value.code == "MUST_RESYNC" and refused.value.epoch == epoch + 1
    assert "retention" in refused.value.reason

    await t.start("430104")
    links = t.nodes["430104"].links

    async def resynced() -> bool:
        return (links.snapshot_state or {}).get("state") == "done" and not links.upward_pending \
            and links.epoch == epoch + 1
    await wait(t, resynced)
    assert links.resyncs and all(r["epoch"] == epoch + 1 for r in links.resyncs), links.resyncs

    # merged, never replaced: personal data at home, unpushed writes reach upstream
    async def converged() -> bool:
        return (await at(t, "members", m2, ["430100", "430000"])
                and await n(t, "430000", "SELECT count(*) FROM members WHERE id = $1 AND work_unit = '湖南师大'",
                            m1) == 1
                and await n(t, "430104", "SELECT count(*) FROM activities WHERE org_code = '430000'")
                == await n(t, "430000", "SELECT count(*) FROM activities WHERE org_code = '430000'"))
    await wait(t, converged)
    for mid, id_no, mobile in ((m1, "430104198001011234", "13900000001"), (m2, "430104199002022345", "13900000002")):
        row = await yl.fetchrow("SELECT id_card_no, mobile FROM members WHERE id = $1", mid)
        assert (row["id_card_no"], row["mobile"]) == (id_no, mobile)
        up = await prov.fetchrow("SELECT id_card_no, mobile, id_card_hash FROM members WHERE id = $1", mid)
        assert up["id_card_no"] is None and up["mobile"] is None
        assert up["id_card_hash"] == id_card_hash(Secret("h1", HASH_KEY), id_no)  # the keyed hash travels
    assert await yl.fetchval("SELECT work_unit FROM members WHERE id = $1", m1) == "湖南师大"
    # the row deleted upstream while the county was away is gone there and does not come back
    await wait(t, lambda: gone(t, "activities", doomed, ALL))
    await asyncio.sleep(2)
    assert await gone(t, "activities", doomed, ALL)
    await no_conflicts_or_quarantine(t)  # snapshot + replay records no conflict (HC-17)


async def _no_rowver(t: Tree, row: uuid.UUID, codes: list[str]) -> bool:
    return all([await n(t, c, "SELECT count(*) FROM syncd.rowver WHERE id = $1", row) == 0 for c in codes])


async def _status(t: Tree, code: str) -> dict[str, Any]:
    from syncd.status import build_status

    return await build_status(t.nodes[code])


async def test_hc21_push_beyond_retention_gets_must_resync_and_an_upward_snapshot(short_tree: Tree) -> None:
    t = short_tree
    yl = t.db("430104")
    early = await add_member(yl, "430104", "早")
    await wait(t, lambda: at(t, "members", early, ["430000"]))
    await t.stop("430100")  # 长沙市 is down longer than 岳麓区's max_retention
    acked = await n(t, "430104", "SELECT pos FROM syncd.cursors WHERE peer = '430100' AND kind = 'push'")
    written = [await add_member(yl, "430104", f"城市停机时{i}", f"43010420000101{i:04d}", f"1370000{i:04d}")
               for i in range(5)]
    await yl.execute("DELETE FROM members WHERE id = $1", early)

    async def logged() -> int:  # the sequencer gives the writes their positions
        pos = await n(t, "430104", "SELECT coalesce(max(pos), 0) FROM syncd.log WHERE origin = '430104' AND op = 'D'")
        return pos if pos > acked else 0
    last = await wait(t, logged, 10)

    async def truncated_unpushed() -> bool:  # 岳麓区's own retention dropped entries 长沙市 never got
        return await n(t, "430104", "SELECT log_first FROM syncd.node") > last
    await wait(t, truncated_unpushed, 30)
    await t.start("430100")  # at the address its children know

    links = t.nodes["430104"].links
    await wait(t, lambda: _push_resync(links))
    first = next(r for r in links.resyncs if r["channel"] == "push")
    assert "upward snapshot" in first["reason"], first

    async def arrived() -> bool:
        return all([await at(t, "members", m, ["430100", "430000"]) for m in written]) \
            and await gone(t, "members", early, ["430100", "430000"])
    await wait(t, arrived)
    for m in written:  # personal data stayed home, the rest went up
        assert await n(t, "430104", "SELECT count(*) FROM members WHERE id = $1 AND id_card_no IS NOT NULL", m) == 1
        assert await n(t, "430000", "SELECT count(*) FROM members WHERE id = $1 AND id_card_no IS NULL "
                                    "AND id_card_hash IS NOT NULL", m) == 1
    # the upward snapshot is logged at 岳麓区 for its parent only (a county has no children anyway),
    # relayed by 长沙市 once, and the deleted row stays deleted
    await asyncio.sleep(2)
    assert await gone(t, "members", early, ["430104", "430100", "430000"])
    await no_conflicts_or_quarantine(t)


async def _push_resync(links: Any) -> bool:
    return any(r["channel"] == "push" for r in links.resyncs) and not links.upward_pending \
        and (links.snapshot_state or {}).get("state") == "done"


# -- HC-7 -------------------------------------------------------------------------------------

async def test_hc7_county_restored_from_a_dump_is_detected_and_its_rows_return_home(tree: Tree) -> None:
    t = tree
    await t.settled()
    extra: list[str] = []
    fr = t.db("430102")
    before = [await add_member(fr, "430102", f"旧委员{i}", f"43010219700101{i:04d}", f"1380000{i:04d}", "旧单位")
              for i in range(5)]
    await wait(t, lambda: at(t, "members", before[-1], ["430000"]))
    backup = await dump(t, "430102")
    extra.append(backup)
    fr = t.db("430102")
    # after the dump: 20 new members and an update reach 长沙市 and 湖南省
    after = [await add_member(fr, "430102", f"新委员{i}", f"43010219800101{i:04d}", f"1390000{i:04d}", "新单位")
             for i in range(20)]
    await fr.execute("UPDATE members SET work_unit = '改后单位' WHERE id = $1", before[0])

    async def upstream() -> bool:
        return all([await at(t, "members", m, ["430100", "430000"]) for m in after]) and await n(
            t, "430000", "SELECT count(*) FROM members WHERE id = $1 AND work_unit = '改后单位'", before[0]) == 1
    await wait(t, upstream)
    city_epoch = await n(t, "430100", "SELECT epoch FROM syncd.links WHERE peer = '430102'")

    # 芙蓉区 is restored from the dump; staff keep working before the daemon is back, and its
    # sequencer gives the new writes the positions the lost ones had (different changes there)
    await restore(t, "430102", backup, extra)
    fr = t.db("430102")
    node_epoch = await n(t, "430102", "SELECT epoch FROM syncd.node")
    reused = [await add_member(fr, "430102", f"恢复后{i}", f"43010219900101{i:04d}", f"1360000{i:04d}")
              for i in range(40)]
    from syncd.store.sequencer import Sequencer
    await Sequencer(me="430102", id_hash_key=Secret("h1", HASH_KEY)).drain(fr)
    await t.start("430102")

    async def detected() -> bool:
        return (await n(t, "430102", "SELECT epoch FROM syncd.node") > node_epoch
                and await n(t, "430100", "SELECT epoch FROM syncd.links WHERE peer = '430102'") > city_epoch)
    await wait(t, detected)
    parent_link = (await _status(t, "430102"))["links"][0]
    assert parent_link["epoch"] > city_epoch and parent_link["last_resync"]["epoch"] == parent_link["epoch"]
    child_link_st = next(ln for ln in (await _status(t, "430100"))["links"] if ln["peer"] == "430102")
    assert child_link_st["epoch"] == parent_link["epoch"]

    async def converged() -> bool:
        home = all([await at(t, "members", m, ["430102"]) for m in after])
        new_up = all([await at(t, "members", m, ["430100", "430000"]) for m in reused])
        updated = await n(t, "430102", "SELECT count(*) FROM members WHERE id = $1 AND work_unit = '改后单位'",
                          before[0]) == 1
        return home and new_up and updated
    await wait(t, converged)
    # the rows written after the dump came back home with what travels upstream; their
    # home-only personal data existed only here and is the backup's job (README)
    for i, m in enumerate(after):
        row = await fr.fetchrow("SELECT name, work_unit, id_card_no, mobile, id_card_hash FROM members WHERE id = $1", m)
        assert (row["name"], row["work_unit"]) == (f"新委员{i}", "新单位")
        assert row["id_card_no"] is None and row["mobile"] is None
        assert row["id_card_hash"] == id_card_hash(Secret("h1", HASH_KEY), f"43010219800101{i:04d}")
    for m in before + reused:  # what the dump and the staff have stays: merged, never replaced
        assert await n(t, "430102", "SELECT count(*) FROM members WHERE id = $1 AND id_card_no IS NOT NULL "
                                    "AND mobile IS NOT NULL", m) == 1
    for code in ("430100", "430000"):
        assert await n(t, code, "SELECT count(*) FROM members WHERE org_code = '430102'") == 65
    await no_conflicts_or_quarantine(t)
    for dsn in extra:
        await t.cluster.drop(dsn)


async def test_hc7_city_restored_under_its_children_is_detected_and_converges(tree: Tree) -> None:
    t = tree
    await t.settled()
    extra: list[str] = []
    fr, cs, prov = t.db("430102"), t.db("430100"), t.db("430000")
    seed = await add_member(fr, "430102", "种子")
    await wait(t, lambda: at(t, "members", seed, ["430000"]))
    backup = await dump(t, "430100")
    extra.append(backup)
    cs = t.db("430100")
    county_rows = [await add_member(fr, "430102", f"县{i}", f"43010219850101{i:04d}") for i in range(10)]
    city_member = await add_member(cs, "430100", "市委员")
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '全体会议', '恢复前的全会', now()) RETURNING id")

    async def spread() -> bool:
        return (all([await at(t, "members", m, ["430000"]) for m in county_rows])
                and await at(t, "members", city_member, ["430000"])
                and await at(t, "activities", act, ["430102", "430104"]))
    await wait(t, spread)
    child_epochs = {c: await n(t, "430100", "SELECT epoch FROM syncd.links WHERE peer = $1", c)
                    for c in ("430102", "430104")}
    await restore(t, "430100", backup, extra)
    cs = t.db("430100")
    node_epoch = await n(t, "430100", "SELECT epoch FROM syncd.node")
    await t.start("430100")

    async def converged() -> bool:
        return (all([await at(t, "members", m, ["430100", "430000"]) for m in county_rows])
                and await at(t, "members", city_member, ["430100"])
                and await at(t, "activities", act, ["430100", "430102", "430104"]))
    await wait(t, converged)
    # the restore was noticed: the city's own epoch moved, and both children resynchronised
    assert await n(t, "430100", "SELECT epoch FROM syncd.node") > node_epoch
    for c, e in child_epochs.items():
        await wait(t, lambda: _epoch_above(t, c, e))
    # what came back to the city is whole again upstream and down: one copy each, nothing lost
    later = await add_member(fr, "430102", "恢复之后")
    await wait(t, lambda: at(t, "members", later, ["430100", "430000"]))
    await no_conflicts_or_quarantine(t)
    for dsn in extra:
        await t.cluster.drop(dsn)


async def _epoch_above(t: Tree, child: str, e: int) -> bool:
    return await n(t, "430100", "SELECT epoch FROM syncd.links WHERE peer = $1", child) > e \
        and t.nodes[child].links.epoch > e


# -- HC-22 ------------------------------------------------------------------------------------

async def test_hc22_a_new_tree_loads_one_snapshot_per_node(tree: Tree) -> None:
    """At a tree's first start the cities load their snapshots while the counties ask for
    theirs: a city still loading answers SNAPSHOT_BUSY (the county waits, ``pending``)
    instead of serving a partial snapshot that its bootstrap's end would make every child
    load again."""
    t = tree
    await t.settled()
    for code, node in t.nodes.items():
        if node.links is None:
            continue
        assert (node.links.snapshot_state or {}).get("state") == "done", code
        assert not node.links.resyncs, f"{code} loaded a second snapshot: {list(node.links.resyncs)}"
        history = node.links.pull_health.as_dict()["history"]
        # a refusal while the city loads is a wait for a turn, not a failing link
        assert all(e["state"] == "pending" for e in history if e["code"] == "SNAPSHOT_BUSY"), f"{code}: {history}"


async def test_hc22_resync_keeps_home_personal_data_and_unpushed_writes(tree: Tree) -> None:
    t = tree
    await t.settled()
    yl = t.db("430104")
    y1 = await add_member(yl, "430104", "麓一", "430104197503031111", "13500000001", "岳麓书院")
    await wait(t, lambda: at(t, "members", y1, ["430000"]))
    await t.stop("430104")
    await yl.execute("UPDATE members SET work_unit = '湖南大学', address = '麓山南路2号' WHERE id = $1", y1)
    y2 = await add_member(yl, "430104", "麓二", "430104198504042222", "13500000002")
    # 长沙市 resynchronised from 湖南省: its children must resync by pull (what the city does after
    # its own bootstrap, HC-22's "MUST_RESYNC on pull")
    await mark_resync(t, "430100", "430104")
    await t.start("430104")
    await wait(t, lambda: resynced_by_pull(t, "430104"))

    async def converged() -> bool:
        return await at(t, "members", y2, ["430000"]) and await n(
            t, "430000", "SELECT count(*) FROM members WHERE id = $1 AND work_unit = '湖南大学'", y1) == 1
    await wait(t, converged)
    row = await yl.fetchrow("SELECT id_card_no, mobile, address, work_unit FROM members WHERE id = $1", y1)
    assert tuple(row) == ("430104197503031111", "13500000001", "麓山南路2号", "湖南大学")
    assert await yl.fetchval("SELECT id_card_no FROM members WHERE id = $1", y2) == "430104198504042222"
    assert await n(t, "430000", "SELECT count(*) FROM members WHERE id = ANY($1::uuid[]) AND id_card_no IS NULL "
                                "AND address IS NULL", [y1, y2]) == 2
    await no_conflicts_or_quarantine(t)


async def test_hc17_an_edit_met_in_a_resync_snapshot_is_the_same_one_conflict_everywhere(tree: Tree) -> None:
    """岳麓区 and 湖南省 change one sign-in's status while 长沙市 is down; 岳麓区 then resyncs
    and first meets 湖南省's edit in 长沙市's snapshot, not as a change: it records the
    conflict with the id 长沙市 and 湖南省 give it when 岳麓区's change reaches them."""
    t = tree
    await t.settled()
    yl, cs, prov = t.db("430104"), t.db("430100"), t.db("430000")
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '全体会议', '全会', now()) RETURNING id")
    mid = await add_member(yl, "430104", "麓冲")
    await wait(t, lambda: at(t, "activities", act, ["430104"]))
    aid = await yl.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                            "VALUES ('430104', $1, $2, '出席') RETURNING id", act, mid)
    await wait(t, lambda: at(t, "attendance", aid, ["430000"]))
    await t.stop("430100")
    await yl.execute("UPDATE attendance SET status = '请假' WHERE id = $1", aid)

    async def versioned_at_county() -> bool:  # 岳麓区's edit has its version before the resync
        return await n(t, "430104", "SELECT count(*) FROM syncd.log WHERE id = $1", aid) == 2
    await wait(t, versioned_at_county)
    await prov.execute("UPDATE attendance SET status = '缺席' WHERE id = $1", aid)
    await t.stop("430104")
    await mark_resync(t, "430100", "430104")  # 长沙市 will answer 岳麓区's next pull with MUST_RESYNC
    await t.start("430100")
    await wait(t, lambda: n(t, "430100", "SELECT count(*) FROM attendance WHERE id = $1 AND status = '缺席'", aid))
    await t.start("430104")
    await wait(t, lambda: resynced_by_pull(t, "430104"))

    codes = ["430104", "430100", "430000"]

    async def converged() -> bool:
        values = {await t.db(c).fetchval("SELECT status FROM attendance WHERE id = $1", aid) for c in codes}
        return len(values) == 1 and all([await n(t, c, "SELECT count(*) FROM syncd.conflicts WHERE row_id = $1", aid)
                                         for c in codes])
    await wait(t, converged)
    ids = {c: [r["id"] for r in await t.db(c).fetch("SELECT id FROM syncd.conflicts WHERE row_id = $1", aid)]
           for c in codes}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == 1, ids


def child_link(t: Tree, child: str, parent: str) -> HttpParentLink:
    ring = Keyring()
    ring.add(child, wire_key_id(child, "k1"), secret(child))
    return HttpParentLink(f"http://127.0.0.1:{t.nodes[parent].port}", child, ring)


async def test_hc22_excess_snapshot_requests_get_503_and_later_complete(cluster: Cluster) -> None:
    t = Tree(cluster, SMALL_TREE, tuning={"snapshot_slots": 1})
    try:
        await t.setup()
        await t.settled()
        busy = child_link(t, "430102", "430100")  # 芙蓉区's snapshot holds the city's only slot
        other = child_link(t, "430104", "430100")
        try:
            first = await busy.snapshot(SnapshotRequest(SCHEMA.tables[0].name, None, 10, None))
            with pytest.raises(SyncdError) as refused:
                await other.snapshot(SnapshotRequest(SCHEMA.tables[0].name, None, 10, None))
            assert refused.value.code == "SNAPSHOT_BUSY" and refused.value.status == 503 and refused.value.retryable
            # 岳麓区's daemon is told to resync and meets the same answer, retrying by itself
            since = time.time()
            await mark_resync(t, "430100", "430104")
            links = t.nodes["430104"].links

            async def waiting() -> bool:
                err = links.pull_health.last_error or {}
                return err.get("code") == "SNAPSHOT_BUSY" and float(err.get("at") or 0) >= since
            await wait(t, waiting, 30)
            assert (links.snapshot_state or {}).get("state") != "done"
            # 芙蓉区's snapshot finishes: the slot is free and 岳麓区's completes
            for table in SCHEMA.tables:
                after, position, done = None, first.position, False
                while not done:
                    chunk = await busy.snapshot(SnapshotRequest(table.name, after, 1000, position))
                    after, done = chunk.next_after_id, chunk.done
        finally:
            await busy.close()
            await other.close()

        async def completed() -> bool:
            return (links.snapshot_state or {}).get("state") == "done" and links.pull_health.state == "running"
        await wait(t, completed, 60)
        act = await t.db("430000").fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                            "VALUES ('430000', '视察', '之后', now()) RETURNING id")
        await wait(t, lambda: at(t, "activities", act, ["430104"]))
    finally:
        await t.close()


async def test_hc21_a_chunks_stale_copy_check_is_a_hash_lookup_even_in_a_generic_plan(cluster: Cluster) -> None:
    """Every snapshot chunk asks which live rows of its id range it did not hold (HC-21's stale
    copies).  A daemon runs that statement for every chunk of a bootstrap, so PostgreSQL plans it
    generically, on the statistics of when the plan was made — before the table's first chunk.  Written as ``NOT EXISTS (… unnest …)`` that plan was a nested-loop anti-join searching
    the chunk's ids for every row of the range: 2,000 × 2,000 comparisons a chunk later on.
    Whatever plan it keeps, the chunk's ids are hashed, and the rows it finds are the right ones."""
    from syncd.store.resync import live_outside_chunk
    from syncd.store.snapshot import id_range

    dsn = await cluster.new_node_db("430100", prefix="plan")
    conn = await asyncpg.connect(dsn)
    try:
        ids = sorted(uuid.uuid4() for _ in range(2000))
        bounds, _ = id_range(ids[0], ids[-1], 3)
        chunk = [i for k, i in enumerate(ids) if k % 50]  # the chunk misses every 50th row of its range
        array = "{" + ",".join(map(str, chunk)) + "}"
        run = f"outside('attendance', '{array}', '{ids[0]}', '{ids[-1]}')"
        # the tables before it are loaded and analyzed: no attendance row in the statistics
        await conn.copy_records_to_table(
            "rowver", schema_name="syncd", columns=("tbl", "id", "org_code", "cl", "homes", "v"),
            records=[("members", uuid.uuid4(), "430100", 1, '{"org_code": "430100"}', "{}") for _ in range(5000)])
        await conn.execute("ANALYZE syncd.rowver")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE outside AS {live_outside_chunk(bounds)}")
        assert await conn.fetch(f"EXECUTE {run}") == []  # the plan is made now: no attendance row yet
        await conn.copy_records_to_table(
            "rowver", schema_name="syncd", columns=("tbl", "id", "org_code", "cl", "homes", "v"),
            records=[("attendance", i, "430100", 2 if k % 100 == 1 else 1, '{"org_code": "430100"}', "{}")
                     for k, i in enumerate(ids)])
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN ANALYZE EXECUTE {run}"))
        assert "Join Filter" not in plan and "hash" in plan.lower(), plan  # a hash join or hashed subplan
        got = await conn.fetch(f"EXECUTE {run}")
        # after the lower bound, up to the upper, live (odd cl), not in the chunk
        want = {i for k, i in enumerate(ids) if k and k % 50 == 0 and k % 100 != 1}
        assert {r["id"] for r in got} == want and len(want) == 39
    finally:
        await conn.close()
        await cluster.drop(dsn)
