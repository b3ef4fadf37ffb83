"""Capture, versioning and the sequencer on a real PostgreSQL (issue 3)."""
from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from syncd.proto.change import Version
from syncd.schema.declarations import natural_id
from syncd.store.log import read_log
from syncd.store.sequencer import Sequencer, lock
from syncd.store.versioning import Versioner, claim_captures
from tests.pg import Cluster
from tests.plans import drained_and_analysed

ME = "430102"


async def _drain(conn: asyncpg.Connection) -> None:
    await Sequencer(me=ME).drain(conn)


async def _head(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT head FROM syncd.node"))


async def _new_member(conn: asyncpg.Connection, name: str = "张三", **cols: object) -> uuid.UUID:
    cols = {"org_code": ME, "name": name, **cols}
    keys = ", ".join(cols)
    params = ", ".join(f"${i + 1}" for i in range(len(cols)))
    return await conn.fetchval(f"INSERT INTO members ({keys}) VALUES ({params}) RETURNING id", *cols.values())


async def test_insert_update_delete_captured_once_with_changed_columns(county: asyncpg.Connection) -> None:
    await _drain(county)
    start = await _head(county)
    mid = await _new_member(county, gender="男", work_unit="湖南大学")
    await county.execute("UPDATE members SET work_unit = '中南大学', title = '教授' WHERE id = $1", mid)
    await county.execute("DELETE FROM members WHERE id = $1", mid)
    await _drain(county)
    log = await read_log(county, start)
    assert [c.op for c in log] == ["I", "U", "D"]
    ins, upd, dele = log
    assert "work_unit" in ins.cols and "updated_at" not in ins.cols
    assert set(upd.cols) == {"work_unit", "title"}
    assert upd.cols["work_unit"].value == "中南大学"
    assert upd.cols["work_unit"].prev == ins.version("work_unit")
    assert (ins.cl, upd.cl, dele.cl) == (1, 1, 2) and dele.cols == {}
    assert [c.pos for c in log] == list(range(start + 1, start + 4))


async def test_rolled_back_and_no_op_updates_leave_nothing(county: asyncpg.Connection) -> None:
    mid = await _new_member(county, work_unit="湖南大学")
    await _drain(county)
    start = await _head(county)
    tr = county.transaction()
    await tr.start()
    await _new_member(county, "李四")
    await county.execute("UPDATE members SET title = '教授' WHERE id = $1", mid)
    await tr.rollback()
    await county.execute("UPDATE members SET work_unit = work_unit WHERE id = $1", mid)
    await county.execute("UPDATE members SET work_unit = '湖南大学', name = name WHERE id = $1", mid)
    await _drain(county)
    assert await read_log(county, start) == []
    assert await county.fetchval("SELECT count(*) FROM syncd.capture") == 0


async def test_setting_a_column_to_its_value_ships_only_real_changes(county: asyncpg.Connection) -> None:
    mid = await _new_member(county, work_unit="湖南大学", title="教授")
    await _drain(county)
    start = await _head(county)
    await county.execute("UPDATE members SET work_unit = '湖南大学', title = '研究员' WHERE id = $1", mid)
    await _drain(county)
    (upd,) = await read_log(county, start)
    assert set(upd.cols) == {"title"}


async def test_an_update_capture_holds_its_changed_columns_and_older_formats_still_version(
        county: asyncpg.Connection) -> None:
    mid = await _new_member(county, work_unit="湖南大学", title="教授")
    await _drain(county)
    start = await _head(county)
    await county.execute("UPDATE members SET work_unit = '中南大学', title = '教授', id_card_no = '430102199001011234' "
                         "WHERE id = $1", mid)
    op, old, new = await county.fetchrow("SELECT op, old, new FROM syncd.capture WHERE row_id = $1", mid)
    assert (op, json.loads(old), json.loads(new)) == (  # the changed columns, not a whole image
        b"p", {"org_code": ME}, {"work_unit": "中南大学", "id_card_no": "430102199001011234"})
    # captures as earlier releases wrote them are read the same way: op U (the full old image;
    # conflict resolution writes it still), op u (the changed names and the full new image)

    async def written_as(update: str, op: str, old: str, new: str) -> None:
        await county.execute("SET syncd.applying = 'on'")  # the write itself is not captured
        await county.execute(update, mid)
        await county.execute("RESET syncd.applying")
        await county.execute("INSERT INTO syncd.capture (stmt_ts, tbl, op, row_id, old, new) SELECT "
                             f"clock_timestamp(), 'members', '{op}', m.id, {old}, {new} FROM members m WHERE m.id = $1",
                             mid)
    await written_as("UPDATE members SET title = '研究员' WHERE id = $1",
                     "U", "to_jsonb(m) || '{\"title\": \"教授\"}'::jsonb", "to_jsonb(m)")
    await written_as("UPDATE members SET mobile = '13800000000', title = '教授' WHERE id = $1",
                     "u", "'[\"mobile\"]'", "to_json(m)")
    await _drain(county)
    upd, older, oldest = await read_log(county, start)
    assert set(upd.cols) == {"work_unit", "id_card_no", "id_card_hash"}  # the hash follows its source
    assert upd.cols["work_unit"].value == "中南大学"
    assert set(older.cols) == {"title"} and older.cols["title"].value == "研究员"
    assert set(oldest.cols) == {"mobile"} and oldest.cols["mobile"].value == "13800000000"


async def test_hc19_app_maintained_updated_at_ships_nothing(county: asyncpg.Connection) -> None:
    await county.execute("""
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
        CREATE TRIGGER app_touch BEFORE UPDATE ON members FOR EACH ROW EXECUTE FUNCTION touch();""")
    mid = await _new_member(county)
    await _drain(county)
    start = await _head(county)
    await county.execute("UPDATE members SET updated_at = now() - interval '1 day' WHERE id = $1", mid)
    await county.execute("UPDATE members SET title = '委员' WHERE id = $1", mid)
    await _drain(county)
    log = await read_log(county, start)
    assert len(log) == 1 and set(log[0].cols) == {"title"}


async def test_hc2_commit_order_trap_reader_never_misses(cluster: Cluster, county: asyncpg.Connection) -> None:
    """A writes first and commits last; B writes later and commits first."""
    await _drain(county)
    dsn = county._addr and None  # noqa: F841 (connections below come from the same database)
    db = county._params.database
    a = await asyncpg.connect(cluster.dsn(db))
    b = await asyncpg.connect(cluster.dsn(db))
    try:
        ta = a.transaction()
        await ta.start()
        await _new_member(a, "先写后提交")
        await _new_member(b, "后写先提交")  # autocommit
        await _drain(county)
        seen = [c for c in await read_log(county, 0) if c.table == "members"]
        cursor = await _head(county)
        assert [c.cols["name"].value for c in seen] == ["后写先提交"]
        await ta.commit()
        await _drain(county)
        after = await read_log(county, cursor)
        assert [c.cols["name"].value for c in after] == ["先写后提交"]
        assert all(c.pos > cursor for c in after)
    finally:
        await a.close()
        await b.close()


async def test_hc2_apply_versions_but_never_assigns_positions(cluster: Cluster, county: asyncpg.Connection) -> None:
    """An 'apply' paused after versioning local captures: positions move only with the sequencer."""
    mid = await _new_member(county, title="委员")
    await _drain(county)
    db = county._params.database
    applier = await asyncpg.connect(cluster.dsn(db))
    writer = await asyncpg.connect(cluster.dsn(db))
    try:
        await county.execute("UPDATE members SET title = '常委' WHERE id = $1", mid)
        head_before = await _head(county)
        tr = applier.transaction()
        await tr.start()
        await lock(applier)
        await applier.execute("SELECT 1 FROM members WHERE id = $1 FOR UPDATE", mid)
        caps = await claim_captures(applier, 100, [("members", mid)])
        changes, _ = await Versioner(__import__("syncd.schema.declarations", fromlist=["SCHEMA"]).SCHEMA,
                                     ME).run(applier, caps, 0)
        assert len(changes) == 1
        from syncd.store.log import add_pending
        await add_pending(applier, [(changes[0], None)])
        # meanwhile: another writer commits and a reader pulls
        await _new_member(writer, "并发写入")
        seq_task = asyncio.create_task(Sequencer(me=ME).drain(writer))
        await asyncio.sleep(0.3)
        assert not seq_task.done(), "the sequencer must wait for the apply's lock"
        assert await _head(county) == head_before, "no position assigned inside the apply"
        await tr.commit()
        await seq_task
        log = await read_log(county, head_before)
        names = [c.cols.get("name").value if "name" in c.cols else c.cols["title"].value for c in log]
        assert sorted(names) == sorted(["常委", "并发写入"])
        assert [c.pos for c in log] == [head_before + 1, head_before + 2]
    finally:
        await applier.close()
        await writer.close()


async def test_hc3_idle_transaction_in_other_database_does_not_stall(cluster: Cluster,
                                                                     county: asyncpg.Connection) -> None:
    other = await cluster.new_database("idle")
    idle = await asyncpg.connect(other)
    try:
        tr = idle.transaction()
        await tr.start()
        await idle.execute("CREATE TABLE hold (x int); INSERT INTO hold VALUES (1)")
        await idle.fetchval("SELECT txid_current()")
        start = await _head(county)
        await _new_member(county, "闲置事务期间")
        t0 = asyncio.get_running_loop().time()
        await _drain(county)
        elapsed = asyncio.get_running_loop().time() - t0
        log = await read_log(county, start)
        assert [c.cols["name"].value for c in log] == ["闲置事务期间"]
        assert elapsed < 1.0
        await tr.rollback()
    finally:
        await idle.close()
        await cluster.drop(other)


async def test_concurrent_writers_dense_positions_exactly_once(cluster: Cluster, county: asyncpg.Connection) -> None:
    """8 connections x 500 transactions with the sequencer running meanwhile."""
    db = county._params.database
    ids = [await _new_member(county, f"委员{i}", title="t0") for i in range(8)]
    await _drain(county)
    start = await _head(county)
    stop = asyncio.Event()
    pool = await asyncpg.create_pool(cluster.dsn(db), min_size=2, max_size=3)
    seq = Sequencer(me=ME, interval_s=0.02)
    seq_task = asyncio.create_task(seq.run(pool, stop))

    async def writer(k: int) -> None:
        conn = await asyncpg.connect(cluster.dsn(db))
        try:
            for i in range(500):
                mid = ids[(k + i) % len(ids)]
                await conn.execute("UPDATE members SET title = $1 WHERE id = $2", f"w{k}-{i}", mid)
        finally:
            await conn.close()

    await asyncio.gather(*(writer(k) for k in range(8)))
    await asyncio.sleep(0.1)
    stop.set()
    seq.wake()
    await seq_task
    await pool.close()
    await _drain(county)
    log = await read_log(county, start, 10_000)
    assert len(log) == 4000
    assert [c.pos for c in log] == list(range(start + 1, start + 4001))
    assert len(Counter(c.cols["title"].value for c in log)) == 4000  # each commit exactly once
    last: dict[uuid.UUID, Version] = {}
    for c in log:
        v = c.version("title")
        if c.id in last:
            assert v > last[c.id] and c.cols["title"].prev == last[c.id]
        last[c.id] = v
    for mid, v in last.items():  # the winning version holds the table's value
        value = await county.fetchval("SELECT title FROM members WHERE id = $1", mid)
        assert [c for c in log if c.id == mid][-1].cols["title"].value == value


async def test_hc5_lock_waiters_versioned_in_commit_order(cluster: Cluster, county: asyncpg.Connection) -> None:
    db = county._params.database
    mid = await _new_member(county, title="初始")
    await _drain(county)
    start = await _head(county)
    for first_value, second_value in (("T1", "T2"), ("T3", "T4")):
        t1 = await asyncpg.connect(cluster.dsn(db))
        t2 = await asyncpg.connect(cluster.dsn(db))
        try:
            tr1 = t1.transaction()
            await tr1.start()
            await t1.execute("UPDATE members SET title = $1 WHERE id = $2", first_value, mid)
            waiter = asyncio.create_task(t2.execute("UPDATE members SET title = $1 WHERE id = $2",
                                                    second_value, mid))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            await tr1.commit()
            await waiter
        finally:
            await t1.close()
            await t2.close()
        await _drain(county)
    log = await read_log(county, start)
    winner = max(log, key=lambda c: c.version("title"))
    assert winner.cols["title"].value == await county.fetchval("SELECT title FROM members WHERE id = $1", mid)
    assert [c.cols["title"].value for c in log] == ["T1", "T2", "T3", "T4"]


async def test_hc5_clock_behind_still_versions_higher_and_capture_time_kept(county: asyncpg.Connection) -> None:
    mid = await _new_member(county, title="a")
    await _drain(county)
    future = 4_102_444_800_000_000  # 2100-01-01 in µs: a version seen from a fast clock
    await county.execute("UPDATE syncd.node SET hlc = $1", future)
    await county.execute("UPDATE members SET title = 'b' WHERE id = $1", mid)
    await _drain(county)
    (c,) = [x for x in await read_log(county, 0) if x.cols.get("title") and x.cols["title"].value == "b"]
    assert c.ts == future + 1
    # a write made while the daemon is stopped keeps its capture time
    await county.execute("UPDATE syncd.node SET hlc = 0")
    await county.execute("UPDATE members SET title = 'c' WHERE id = $1", mid)
    captured = await county.fetchval("SELECT stmt_ts FROM syncd.capture ORDER BY serial DESC LIMIT 1")
    await asyncio.sleep(0.3)  # the daemon comes back later
    await _drain(county)
    (c2,) = [x for x in await read_log(county, 0) if x.cols.get("title") and x.cols["title"].value == "c"]
    assert c2.ts == (captured - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


async def test_hc6_id_and_org_code_are_immutable(county: asyncpg.Connection) -> None:
    mid = await _new_member(county)
    with pytest.raises(asyncpg.PostgresError, match="IMMUTABLE_KEY") as e:
        await county.execute("UPDATE members SET org_code = '430602' WHERE id = $1", mid)
    assert e.value.sqlstate == "SY003"
    with pytest.raises(asyncpg.PostgresError, match="IMMUTABLE_KEY"):
        await county.execute("UPDATE members SET id = gen_random_uuid() WHERE id = $1", mid)


async def test_hc9_copies_elsewhere_are_read_only(county: asyncpg.Connection) -> None:
    await county.execute("SET syncd.applying = 'on'")  # a copy arrives by apply
    other = await county.fetchval(
        "INSERT INTO members (org_code, name, work_unit) VALUES ('430100', '市委员', '长沙市一中') RETURNING id")
    await county.execute("RESET syncd.applying")
    with pytest.raises(asyncpg.PostgresError, match="READ_ONLY_COPY") as e:
        await county.execute("UPDATE members SET work_unit = '改了' WHERE id = $1", other)
    assert e.value.sqlstate == "SY001" and "430100" in str(e.value)
    with pytest.raises(asyncpg.PostgresError, match="PERSONAL_DATA_AWAY_FROM_HOME") as e:
        await county.execute("UPDATE members SET mobile = '13900000000' WHERE id = $1", other)
    assert e.value.hint == "Personal data (ID number, mobile, address, leave reason) stays at the member's home committee."
    with pytest.raises(asyncpg.PostgresError, match="READ_ONLY_COPY"):
        await county.execute("DELETE FROM members WHERE id = $1", other)
    with pytest.raises(asyncpg.PostgresError, match="READ_ONLY_COPY"):
        await county.execute("INSERT INTO members (org_code, name) VALUES ('430104', '岳麓区委员')")
    # syncd's apply is exempt
    await county.execute("SET syncd.applying = 'on'")
    await county.execute("UPDATE members SET work_unit = '由上级同步' WHERE id = $1", other)
    await county.execute("RESET syncd.applying")
    assert await county.fetchval("SELECT work_unit FROM members WHERE id = $1", other) == "由上级同步"


async def test_hc29_truncate_refused(county: asyncpg.Connection) -> None:
    for table in ("micro_suggestions", "members", "attendance"):
        with pytest.raises(asyncpg.PostgresError) as e:
            await county.execute(f"TRUNCATE {table} CASCADE")
        assert e.value.sqlstate == "SY004" and "TRUNCATE_REFUSED" in str(e.value)


async def test_hc10_natural_key_ids_match_python(county: asyncpg.Connection) -> None:
    act = await county.fetchval(
        "INSERT INTO activities (org_code, kind, title, starts_at) VALUES ($1, '视察', '视察', now()) RETURNING id", ME)
    mid = await _new_member(county)
    aid = await county.fetchval(
        "INSERT INTO attendance (org_code, activity_id, member_id) VALUES ($1, $2, $3) RETURNING id", ME, act, mid)
    assert aid == natural_id("attendance", (act, mid))
    with pytest.raises(asyncpg.UniqueViolationError):
        await county.execute("INSERT INTO attendance (org_code, activity_id, member_id) VALUES ($1, $2, $3)",
                             ME, act, mid)
    pid = await county.fetchval(
        "INSERT INTO proposals (org_code, term, session, seq, title) VALUES ($1, 13, 4, 123, '关于…的建议') RETURNING id", ME)
    assert pid == natural_id("proposals", (ME, 13, 4, 123))
    # the SQL twin on many keys (hex digits, CJK text, empty parts): the same ids
    parts = [(uuid.UUID(int=i * 7919), f"委员{i}", "" if i % 3 else None, i) for i in range(500)]
    got = await county.fetch("SELECT syncd.natural_id('proposals', k) AS id FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) "
                             "ORDER BY n", ["\x1f".join("" if x is None else str(x) for x in p) for p in parts])
    assert [r["id"] for r in got] == [natural_id("proposals", p) for p in parts]


def _rows_touched(node: dict[str, Any]) -> float:
    """Rows a plan node and the nodes under it returned or discarded, over all their loops."""
    per_loop = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Join Filter", 0))
    return per_loop * node.get("Actual Loops", 1) + sum(_rows_touched(n) for n in node.get("Plans", []))


async def _touched(conn: asyncpg.Connection, sql: str, *args: object) -> float:
    """Rows ``sql`` touched, run (EXPLAIN ANALYZE) in a transaction that is rolled back, with a
    custom and a generic plan: the larger."""
    touched = 0.0
    for mode in ("force_custom_plan", "force_generic_plan"):
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))
            touched = max(touched, _rows_touched(plan[0]["Plan"]))
        finally:
            await tr.rollback()
    return touched


async def test_queue_claims_read_each_queued_row_once_after_an_emptied_queue_was_analysed(
        county: asyncpg.Connection) -> None:
    """Once ANALYZE has found a drained queue empty, the planner estimates one row however many
    wait.  The sequencer's claim of the oldest captures (``serial IN (SELECT … LIMIT $1)``) then
    ran its subquery again for every queued row: 64 s to claim 5,000 of 20,000 captures (bench
    catch-up, a county's offline writes); an apply's claim of its rows' captures, a join to
    the keys, read the keys again for every capture (12.5 s for 2,000 among 20,000); the move of
    received changes from ``syncd.pending`` had the first pattern.  Each now reads a queued row
    about once in any plan, and claims what it should."""
    from syncd.store.sequencer import _MOVE_PENDING
    from syncd.store.versioning import CLAIM_OLDEST, CLAIM_ROWS

    n = 20000
    insert = ("INSERT INTO members (org_code, name, work_unit) SELECT $1, '委员' || g, repeat('长沙市', 40) "
              "FROM generate_series($2::int, $3::int) AS g")  # captures of a real row's width
    await county.execute(insert, ME, 1, n)
    await drained_and_analysed(county, "syncd.capture")
    await county.execute(insert, ME, n + 1, 2 * n)
    queued = await county.fetch("SELECT serial, row_id FROM syncd.capture ORDER BY serial")
    assert len(queued) == n
    picked = [r["row_id"] for r in queued[1::10]]  # 2,000 rows across the queue

    assert await _touched(county, CLAIM_OLDEST, 1000) < 4 * n
    assert await _touched(county, CLAIM_ROWS, ["members"] * len(picked), picked) < 4 * n
    async with county.transaction():
        oldest = await claim_captures(county, 1000)
        assert [c.serial for c in oldest] == [r["serial"] for r in queued[:1000]]
        mine = await claim_captures(county, 1_000_000, [("members", i) for i in picked] + [("attendance", picked[0])])
        assert [c.row_id for c in mine] == picked[100:]  # those the first claim left, once each, oldest first
        assert await county.fetchval("SELECT count(*) FROM syncd.capture") == n - 1000 - len(mine)

    fill = ("INSERT INTO syncd.pending (tbl, id, org_code, op, cl, ts, origin, txn, homes, cols, received_from) "
            "SELECT 'members', gen_random_uuid(), '430102', 'i', 1, g, '430102', g, '{}', '{}', '430100' "
            "FROM generate_series(1, $1::int) AS g")
    await county.execute(fill, 1000)
    await drained_and_analysed(county, "syncd.pending")
    await county.execute(fill, n)
    head, epoch = await county.fetchrow("SELECT head, epoch FROM syncd.node")
    assert await _touched(county, _MOVE_PENDING, 1000, head, epoch) < 4 * n
    waiting = await county.fetch("SELECT id FROM syncd.pending ORDER BY serial")
    async with county.transaction():
        moved = await county.fetch(_MOVE_PENDING, 1000, head, epoch)
        assert [(r["pos"], r["id"]) for r in moved] == [(head + 1 + k, r["id"]) for k, r in enumerate(waiting[:1000])]
        assert await county.fetchval("SELECT count(*) FROM syncd.pending") == n - 1000
