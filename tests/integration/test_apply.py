"""Batch apply on a real database, driven directly (issue 5): parking, idempotence, HC-4, HC-28."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from syncd.proto.change import Change, ColumnChange
from syncd.schema.declarations import SCHEMA
from syncd.store.apply import ApplyContext, apply_batch, retry_parked
from syncd.store.log import add_pending, read_log
from syncd.store.sequencer import SEQUENCER_LOCK, Sequencer, lock_applying
from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree


def _ctx(me: str) -> ApplyContext:
    return ApplyContext(SCHEMA, me, Tree(None, SMALL_TREE).topology)  # type: ignore[arg-type]


def _now() -> int:
    return time.time_ns() // 1000


async def _county_changes(cluster: Cluster) -> tuple[str, list[Change]]:
    dsn = await cluster.new_node_db("430102", prefix="src")
    conn = await asyncpg.connect(dsn)
    try:
        start = await conn.fetchval("SELECT head FROM syncd.node")
        pid = await conn.fetchval("INSERT INTO proposals (org_code, term, session, seq, title) "
                                  "VALUES ('430102', 13, 4, 9, '关于…的建议') RETURNING id")
        await conn.execute("INSERT INTO proposal_cosigners (org_code, proposal_id, member_id, confirmed) "
                           "VALUES ('430102', $1, $2, true)", pid, uuid.uuid4())
        await Sequencer(me="430102").drain(conn)
        return dsn, await read_log(conn, start)
    finally:
        await conn.close()


async def test_hc11_fk_target_in_next_batch_parks_then_applies_by_itself(cluster: Cluster) -> None:
    src, (proposal, cosigner) = await _county_changes(cluster)
    # the co-signer comes first in the stream, its proposal in the next batch
    cosigner, proposal = cosigner.replace(pos=proposal.pos), proposal.replace(pos=cosigner.pos)
    dsn = await cluster.new_node_db("430100", prefix="city")
    city = await asyncpg.connect(dsn)
    try:
        ctx = _ctx("430100")
        first = await apply_batch(city, ctx, "430102", "applied", "from_child", [cosigner], cosigner.pos, _now())
        assert first.parked == 1 and first.quarantined == []
        assert await city.fetchval("SELECT count(*) FROM syncd.parked") == 1
        second = await apply_batch(city, ctx, "430102", "applied", "from_child", [proposal], proposal.pos, _now())
        assert second.quarantined == []
        assert await city.fetchval("SELECT count(*) FROM syncd.parked") == 0
        assert await city.fetchval("SELECT count(*) FROM proposal_cosigners") == 1
        assert await city.fetchval("SELECT count(*) FROM syncd.quarantine") == 0
        # both were queued for relay exactly once
        await Sequencer(me="430100").drain(city)
        relayed = await city.fetch("SELECT tbl FROM syncd.log WHERE received_from = '430102' ORDER BY pos")
        assert sorted(r["tbl"] for r in relayed) == ["proposal_cosigners", "proposals"]
    finally:
        await city.close()
        await cluster.drop(dsn)
        await cluster.drop(src)


async def test_hc28_same_push_to_two_replicas_applies_once(cluster: Cluster) -> None:
    src, changes = await _county_changes(cluster)
    dsn = await cluster.new_node_db("430100", prefix="city")
    a, b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        ctx = _ctx("430100")
        to = changes[-1].pos
        r1, r2 = await asyncio.gather(
            apply_batch(a, ctx, "430102", "applied", "from_child", changes, to, _now()),
            apply_batch(b, ctx, "430102", "applied", "from_child", changes, to, _now()))
        assert sorted([r1.duplicate, r2.duplicate]) == [False, True]
        assert r1.cursor == r2.cursor == to
        assert await a.fetchval("SELECT count(*) FROM syncd.pending") == 2  # relayed once, not twice
        assert await a.fetchval("SELECT count(*) FROM proposals") == 1
    finally:
        await a.close()
        await b.close()
        await cluster.drop(dsn)
        await cluster.drop(src)


async def test_hc2_an_apply_logs_what_it_relays_itself_only_when_nothing_waits_in_the_queue(cluster: Cluster) -> None:
    """With the sequencer in its context, an apply logs its relayed changes in its own
    transaction (dense positions after the head, outboxes filled, the head moved, reported
    once committed); a change already queued for the sequencer goes first, so then the
    apply queues behind it and a tick logs both, in order."""
    src, (first, second) = await _county_changes(cluster)
    dsn = await cluster.new_node_db("430100", prefix="city")
    city = await asyncpg.connect(dsn)

    async def fanout(_conn: asyncpg.Connection, items: list) -> list[tuple[str, ...]]:
        return [("430103",) for _ in items]
    try:
        reported: list = []
        seq = Sequencer(me="430100", fanout=fanout, on_logged=reported.append)
        ctx = replace(_ctx("430100"), sequencer=seq)
        head = await city.fetchval("SELECT head FROM syncd.node")
        res = await apply_batch(city, ctx, "430102", "applied", "from_child", [first], first.pos, _now())
        assert not res.queued  # nothing for the sequencer to do: the caller does not wake it
        assert await city.fetchval("SELECT count(*) FROM syncd.pending") == 0
        logged = [(r["pos"], r["id"], r["received_from"]) for r in await city.fetch(
            "SELECT pos, id, received_from FROM syncd.log WHERE pos > $1 ORDER BY pos", head)]
        assert logged == [(head + 1, first.id, "430102")]
        assert await city.fetchval("SELECT head FROM syncd.node") == head + 1
        assert [tuple(r) for r in await city.fetch("SELECT peer, pos FROM syncd.outbox")] == [("430103", head + 1)]
        assert [(r.head, r.moved, r.peers) for r in reported] == [(head + 1, 1, frozenset({"430103"}))]

        waiting = first.replace(id=uuid.uuid4())
        await add_pending(city, [(waiting, "430102")])
        res = await apply_batch(city, ctx, "430102", "applied", "from_child", [second], second.pos, _now())
        assert res.queued  # queued behind what waits: the caller wakes the sequencer
        assert len(reported) == 1 and await city.fetchval("SELECT count(*) FROM syncd.pending") == 2
        assert await city.fetchval("SELECT head FROM syncd.node") == head + 1
        await seq.drain(city)
        ids = [r["id"] for r in await city.fetch("SELECT id FROM syncd.log WHERE pos > $1 ORDER BY pos", head)]
        assert ids == [first.id, waiting.id, second.id]
        assert await city.fetchval("SELECT max(pos) FROM syncd.outbox") == head + 3
    finally:
        await city.close()
        await cluster.drop(dsn)
        await cluster.drop(src)


async def test_hc2_an_apply_holds_the_sequencer_lock_from_its_cursor_to_its_commit(cluster: Cluster) -> None:
    """The lock that orders log positions (and local versioning, HC-4) is held by an apply from
    its first statement — the one that locks its cursor — until it commits."""
    src, changes = await _county_changes(cluster)
    dsn = await cluster.new_node_db("430100", prefix="city")
    city, other = await asyncpg.connect(dsn), await asyncpg.connect(dsn)

    async def free() -> bool:
        async with other.transaction():
            return bool(await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", SEQUENCER_LOCK))
    try:
        seen: list[bool] = []

        async def paused() -> None:  # inside the apply, its target rows locked
            seen.append(await free())
        res = await apply_batch(city, replace(_ctx("430100"), after_lock=paused), "430102", "applied", "from_child",
                                changes, changes[-1].pos, _now())
        assert res.applied == len(changes) and seen and not any(seen)
        assert await free()  # released at commit
    finally:
        await city.close()
        await other.close()
        await cluster.drop(dsn)
        await cluster.drop(src)


async def test_forged_change_for_another_county_is_quarantined_rest_applies(cluster: Cluster) -> None:
    src, changes = await _county_changes(cluster)
    dsn = await cluster.new_node_db("430100", prefix="city")
    city = await asyncpg.connect(dsn)
    try:
        forged = Change("members", uuid.uuid4(), "430104", "I", 1, _now(), "430104", 1, {"home": "430104"},
                        {}, changes[-1].pos + 1)
        res = await apply_batch(city, _ctx("430100"), "430102", "applied", "from_child", [*changes, forged],
                                forged.pos, _now())
        assert res.quarantined == [(forged.pos, "FORBIDDEN_SCOPE")]
        assert await city.fetchval("SELECT count(*) FROM proposals") == 1
        q = await city.fetchrow("SELECT peer, code, reason FROM syncd.quarantine")
        assert q["peer"] == "430102" and "430104" in q["reason"]
    finally:
        await city.close()
        await cluster.drop(dsn)
        await cluster.drop(src)


async def _county_attendance(county: asyncpg.Connection, name: str) -> tuple[uuid.UUID, Change]:
    """At a fresh 芙蓉区: a provincial plenary (as if applied), a member ``name`` and their
    attendance, logged; the attendance's id and its logged change."""
    await county.execute("SET syncd.applying = 'on'")
    act = await county.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                                "VALUES ('430000', '全体会议', '省全会', now()) RETURNING id")
    await county.execute("RESET syncd.applying")
    mid = await county.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', $1) RETURNING id", name)
    aid = await county.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                                "VALUES ('430102', $1, $2, '缺席') RETURNING id", act, mid)
    await Sequencer(me="430102").drain(county)
    (orig,) = [c for c in await read_log(county, 0, 10_000) if c.id == aid]
    return aid, orig


async def test_hc4_local_write_not_overwritten_by_losing_apply(cluster: Cluster) -> None:
    """W commits while the apply waits on its row lock; W is versioned before the merge."""
    dsn = await cluster.new_node_db("430102", prefix="hc4")
    county, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        aid, orig = await _county_attendance(county, "李雷")
        # the province's edit, made before W: it saw only the original version
        incoming = Change("attendance", aid, "430102", "U", 1, orig.ts + 1, "430000", 7,
                          {"home": "430102", "organiser": "430000"},
                          {"status": ColumnChange("请假", 0, 0, orig.version("status"))}, 1)
        tr = writer.transaction()
        await tr.start()
        await writer.execute("UPDATE attendance SET status = '出席' WHERE id = $1", aid)  # W, holding the lock
        seen: dict[str, int] = {}

        async def paused() -> None:  # between lock and merge: W is committed, not yet versioned
            seen["captures"] = await county.fetchval(
                "SELECT count(*) FROM syncd.capture WHERE tbl = 'attendance' AND row_id = $1", aid)

        ctx = replace(_ctx("430102"), after_lock=paused)
        task = asyncio.create_task(apply_batch(county, ctx, "430100", "pull", "from_parent", [incoming], 1, _now()))
        await asyncio.sleep(0.3)
        assert not task.done() and "captures" not in seen  # the apply waits on W's row lock
        await tr.commit()
        await task
        assert seen["captures"] == 1
        assert await writer.fetchval("SELECT status FROM attendance WHERE id = $1", aid) == "出席"
        await Sequencer(me="430102").drain(writer)
        log = [c for c in await read_log(writer, orig.pos) if c.id == aid]
        assert [(c.origin, c.cols["status"].value) for c in log] == [("430102", "出席"), ("430000", "请假")]
        assert log[0].version("status") > incoming.version("status")  # W wins everywhere
    finally:
        await county.close()
        await writer.close()
        await cluster.drop(dsn)


async def test_hc2_a_paused_apply_hides_no_position_from_a_reader(cluster: Cluster) -> None:
    """HC-2 with the real apply: paused after it locked its target (holding the position lock)
    while a local writer commits, the sequencer tries to tick and a reader reads the log.  The
    reader sees nothing new then; from the head it read, it later gets every change — the
    local capture the apply versioned (HC-4), the relayed change, the concurrent write — at
    dense positions above it: none committed below a cursor already read."""
    dsn = await cluster.new_node_db("430102", prefix="hc2")
    county, writer, ticker, reader = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        aid, orig = await _county_attendance(county, "韩梅")
        await writer.execute("UPDATE attendance SET status = '出席' WHERE id = $1", aid)  # captured, not versioned
        head = await county.fetchval("SELECT head FROM syncd.node")
        incoming = Change("attendance", aid, "430102", "U", 1, orig.ts + 1, "430000", 7,
                          {"home": "430102", "organiser": "430000"},
                          {"spoke": ColumnChange(True, 0, 0, orig.version("spoke"))}, 1)
        seen: dict[str, Any] = {}

        async def paused() -> None:
            await writer.execute("INSERT INTO members (org_code, name) VALUES ('430102', '并发写入')")
            seen["tick"] = asyncio.create_task(Sequencer(me="430102").drain(ticker))
            await asyncio.sleep(0.3)
            seen["ticked"] = seen["tick"].done()
            seen["head"] = await reader.fetchval("SELECT head FROM syncd.node")
            seen["log"] = await read_log(reader, head)

        ctx = replace(_ctx("430102"), after_lock=paused)
        await apply_batch(county, ctx, "430100", "pull", "from_parent", [incoming], 1, _now())
        await seen["tick"]
        assert seen["ticked"] is False and seen["head"] == head and seen["log"] == []
        log = await read_log(reader, head)
        assert [c.pos for c in log] == list(range(head + 1, head + 1 + len(log)))
        got = {(c.table, c.origin, tuple(sorted(c.cols))) for c in log}
        assert ("attendance", "430102", ("status",)) in got  # the local write, versioned by the apply (HC-4)
        assert ("attendance", "430000", ("spoke",)) in got  # the relayed change
        assert any(c.table == "members" and c.cols["name"].value == "并发写入" for c in log)
    finally:
        for c in (county, writer, ticker, reader):
            await c.close()
        await cluster.drop(dsn)


async def test_a_batch_counts_every_change_it_parks_those_from_an_unknown_committee_too(cluster: Cluster) -> None:
    src = await cluster.new_node_db("430000", prefix="src")
    prov = await asyncpg.connect(src)
    dsn = await cluster.new_node_db("430100", prefix="city")
    city = await asyncpg.connect(dsn)
    try:
        start = await prov.fetchval("SELECT head FROM syncd.node")
        await prov.execute("INSERT INTO activities (org_code, kind, title, starts_at) VALUES "
                           "('430000', '全体会议', '全体会议', now()), ('430000', '视察', '视察', now())")
        await Sequencer(me="430000").drain(prov)
        known, other = [c for c in await read_log(prov, start) if c.table == "activities"]
        # the tree has not brought 439999 here yet: that change waits (UNKNOWN_NODE), the other applies
        unknown = other.replace(origin="439999", org_code="439999",
                          homes={k: "439999" for k in other.homes})
        res = await apply_batch(city, _ctx("430100"), "430000", "pull", "from_parent", [known, unknown],
                                unknown.pos, _now())
        assert (res.parked, res.quarantined) == (1, [])
        assert [r["reason"] for r in await city.fetch("SELECT reason FROM syncd.parked")] == ["UNKNOWN_NODE"]
        assert await city.fetchval("SELECT count(*) FROM activities WHERE id = $1", known.id) == 1
        assert await city.fetchval("SELECT count(*) FROM syncd.pending WHERE id = $1", unknown.id) == 0
        # the committee arrives; the parked change applies — and is relayed now, as it was not then (HC-12)
        await city.execute("SET syncd.applying = 'on'")
        await city.execute("INSERT INTO committees (org_code, code, name, level, parent_code) "
                           "VALUES ('430000', '439999', '湘江新区', 'city', '430000')")
        await city.execute("RESET syncd.applying")
        async with city.transaction():  # as an apply runs it: under the position lock, as syncd's own writes
            await lock_applying(city)
            assert await retry_parked(city, _ctx("430100")) == 1
        assert await city.fetchval("SELECT count(*) FROM activities WHERE id = $1", unknown.id) == 1
        assert await city.fetchval("SELECT received_from FROM syncd.pending WHERE id = $1", unknown.id) == "430000"
        assert await city.fetchval("SELECT count(*) FROM syncd.parked") == 0
    finally:
        await city.close()
        await prov.close()
        await cluster.drop(dsn)
        await cluster.drop(src)


async def _kept_plan(conn: asyncpg.Connection, sql: str, *arrays: list[Any], explain: str = "") -> str:
    """The plan ``conn`` keeps for its prepared ``sql`` (asyncpg's statement), run with the
    arrays given (as literals: EXECUTE takes no parameters); ``explain``: EXPLAIN's options."""
    name = await conn.fetchval("SELECT name FROM pg_prepared_statements WHERE statement = $1", sql)
    literals = ", ".join("'{" + ",".join(map(str, a)) + "}'" for a in arrays)
    return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {explain} EXECUTE {name}({literals})"))


@pytest.mark.parametrize("lock", [True, False])
async def test_rows_by_id_are_index_probes_after_the_table_grew(cluster: Cluster, lock: bool) -> None:
    """A daemon runs each statement thousands of times.  PostgreSQL plans a prepared statement
    generically from its sixth run on and keeps that plan, made on the table's size of that
    moment, until the next ANALYZE: ``id = ANY($1)`` so kept a sequential scan (a search of
    the id array for every row) from when a new node's table was empty while it grew.  The
    lookups by id (the apply's row locks, the sequencer's route targets) stay index probes,
    and find and lock what they should."""
    from syncd.store.lookup import rows_by_id

    dsn = await cluster.new_node_db("430100", prefix="plan")
    conn = await asyncpg.connect(dsn)  # asyncpg's defaults, as the daemon's pool: statements prepared, kept
    try:
        await conn.execute("ALTER TABLE members SET (autovacuum_enabled = false)")  # no ANALYZE comes by
        sql = rows_by_id("members", "x.id, x.org_code", lock=lock)
        for _ in range(8):  # the table empty: past the sixth run the plan is kept
            async with conn.transaction():
                assert await conn.fetch(sql, [uuid.uuid4() for _ in range(50)]) == []
        await conn.execute("INSERT INTO members (org_code, name) "
                           "SELECT '430100', '委员' || g FROM generate_series(1, 20000) AS g")
        async with conn.transaction():
            plan = await _kept_plan(conn, sql, [uuid.uuid4() for _ in range(50)])
        assert "Index" in plan and "Seq Scan" not in plan, plan

        have = [r["id"] for r in await conn.fetch("SELECT id FROM members ORDER BY random() LIMIT 30")]
        other = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                got = await conn.fetch(sql, have + have[:5] + [uuid.uuid4() for _ in range(10)])
                assert [r["id"] for r in got] == sorted(have)  # each once, in id order, the absent skipped
                assert {r["org_code"] for r in got} == {"430100"}
                locked = await other.fetch("SELECT id FROM members WHERE id = ANY($1::uuid[]) FOR UPDATE SKIP LOCKED",
                                           have)
                assert (locked == []) is lock  # locked by the lookup only when asked
        finally:
            await other.close()
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_versions_by_key_are_index_probes_after_the_table_grew(cluster: Cluster) -> None:
    """The versions of a batch's rows (``syncd.rowver`` by (table, id) pairs), read by every
    apply and every sequencer tick: joined to ``unnest`` the plan kept from a new node's empty
    table was a hash join over a sequential scan of every version held.  They stay index probes,
    and find what they should."""
    from syncd.store.versioning import ROWVER_BY_KEY

    dsn = await cluster.new_node_db("430100", prefix="plan")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE syncd.rowver SET (autovacuum_enabled = false)")  # no ANALYZE comes by
        for _ in range(8):  # the table empty: past the sixth run the plan is kept
            assert await conn.fetch(ROWVER_BY_KEY, ["members"] * 50, [uuid.uuid4() for _ in range(50)]) == []
        held = [uuid.uuid4() for _ in range(20000)]
        await conn.copy_records_to_table(
            "rowver", schema_name="syncd", columns=("tbl", "id", "org_code", "cl", "homes", "v"),
            records=[("members", i, "430100", 1, '{"org_code": "430100"}', "{}") for i in held])
        plan = await _kept_plan(conn, ROWVER_BY_KEY, ["members"] * 50, [uuid.uuid4() for _ in range(50)])
        assert "Index" in plan and "Seq Scan on rowver" not in plan, plan
        keys = [("members", i) for i in held[:30]] + [("attendance", held[30]), ("members", uuid.uuid4())]
        got = await conn.fetch(ROWVER_BY_KEY, [k[0] for k in keys], [k[1] for k in keys])
        assert sorted(r["id"] for r in got) == sorted(held[:30])  # the other table's and the absent: none
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_open_conflicts_of_rows_are_index_probes_whatever_was_resolved(cluster: Cluster) -> None:
    """Every apply of changes naming a replaced version asks for the open conflicts of their
    rows.  Resolved conflicts are kept for the record and pile up; the lookup reads neither them
    nor anything else but the rows asked for, in a plan kept from an empty table too."""
    from syncd.store.conflicts import OPEN_BY_ROW

    dsn = await cluster.new_node_db("430100", prefix="plan")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE syncd.conflicts SET (autovacuum_enabled = false)")
        for _ in range(8):  # the table empty: past the sixth run the plan is kept
            assert await conn.fetch(OPEN_BY_ROW, ["members"] * 20, [uuid.uuid4() for _ in range(20)]) == []
        rows = [uuid.uuid4() for _ in range(20000)]
        await conn.copy_records_to_table(
            "conflicts", schema_name="syncd", columns=("id", "tbl", "row_id", "org_code", "col", "winner", "loser",
                                                       "resolved_at"),
            records=[(f"c{k}", "members", r, "430100", "title", '["a", []]', '["b", []]',
                      None if k % 1000 == 0 else datetime.now(timezone.utc)) for k, r in enumerate(rows)])
        plan = await _kept_plan(conn, OPEN_BY_ROW, ["members"] * 3, [rows[0], rows[1], rows[1000]],
                                explain="(ANALYZE, BUFFERS)")
        assert "conflicts_open" in plan and "Seq Scan on conflicts" not in plan, plan
        got = await conn.fetch(OPEN_BY_ROW, ["members"] * 3, [rows[0], rows[1], rows[1000]])
        assert sorted(r["id"] for r in got) == ["c0", "c1000"]  # c1 was resolved
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_hc17_a_snapshot_cell_written_over_a_conflicts_winner_closes_it(cluster: Cluster) -> None:
    """A node resyncing by snapshot after a conflict was resolved elsewhere gets the resolved
    cell with the version it replaced: that closes its open conflict, as the change would have
    (DESIGN §5, ``conflicts.close_seen_rows``).  A cell that did not see the winner closes nothing."""
    import json

    from syncd.proto.change import Version
    from syncd.proto.messages import SnapshotRow
    from syncd.store.snapshot import merge_chunk

    dsn = await cluster.new_node_db("430102", prefix="snapc")
    county = await asyncpg.connect(dsn)
    try:
        rid, other = uuid.uuid4(), uuid.uuid4()
        win, lose = Version(1, 0, 0, 1_000, "430000"), Version(1, 0, 0, 900, "430102")
        for row_id in (rid, other):
            await county.execute(
                "INSERT INTO syncd.conflicts (id, tbl, row_id, org_code, col, winner, loser) "
                "VALUES ($1, 'members', $2, '430102', 'title', $3, $4)", str(uuid.uuid4()), row_id,
                json.dumps(["甲", list(win)], ensure_ascii=False), json.dumps(["乙", list(lose)], ensure_ascii=False))
        name = ("某委员", Version(1, 0, 0, 500, "430102"))
        resolved = SnapshotRow(rid, "430102", 1, {"home": "430102"},
                               {"name": name, "title": ("丙", Version(1, 0, 0, 2_000, "430102"))}, {"title": win})
        unseen = SnapshotRow(other, "430102", 1, {"home": "430102"},
                             {"name": name, "title": ("丁", Version(1, 0, 0, 950, "430102"))}, {"title": lose})
        async with county.transaction():
            await lock_applying(county)
            await merge_chunk(county, _ctx("430102"), "430100", "members", [resolved, unseen])
        open_ = {r["row_id"]: r["resolved_at"] is None for r in await county.fetch("SELECT * FROM syncd.conflicts")}
        assert open_ == {rid: False, other: True}
        assert json.loads(await county.fetchval("SELECT resolution FROM syncd.conflicts WHERE row_id = $1", rid)) \
            == {"closed_by": "430102", "value": "丙"}
    finally:
        await county.close()
        await cluster.drop(dsn)
