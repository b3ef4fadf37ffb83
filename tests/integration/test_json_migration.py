"""Migrations 0008 and 0009: a node upgraded from schema 7 reads back the log, the relay queue
and the versions it wrote as jsonb, unchanged, and goes on logging and relaying them."""
from __future__ import annotations

import uuid

import asyncpg

from syncd.proto.change import Change, ColumnChange, Version
from syncd.store.log import change_from_record, decode_cols
from syncd.store.migrate import LATEST, init_node, schema_version
from syncd.store.sequencer import Sequencer
from syncd.store.versioning import load_rowver
from tests.pg import Cluster

ME = "430102"


async def _type_of(conn: asyncpg.Connection, table: str, column: str) -> str:
    return str(await conn.fetchval("SELECT data_type FROM information_schema.columns WHERE table_schema = 'syncd' "
                                   "AND table_name = $1 AND column_name = $2", table, column))


async def test_log_queue_and_versions_written_as_jsonb_survive_the_upgrade(cluster: Cluster) -> None:
    dsn = await cluster.new_database("jsonmig", migrated=False)
    conn = await asyncpg.connect(dsn)
    try:
        await init_node(conn, ME, target=7)
        assert await _type_of(conn, "log", "cols") == "jsonb"
        head = await conn.fetchval("SELECT head FROM syncd.node")
        rid, other = uuid.uuid4(), uuid.uuid4()
        # what a schema-7 node wrote: jsonb documents, normalised by PostgreSQL
        cols = '{"name": ["张三", 0, 0, null], "work_unit": ["中南大学", 1, 0, [1, 0, 0, 1700000000000000, "430102"]]}'
        fields = "tbl, id, org_code, op, cl, ts, origin, txn, homes, cols, received_from"
        values = "'members', $1, $2, 'U', 1, 1700000000000001, $2, 7, '{\"home\": \"430102\"}'::jsonb, $3::jsonb, '430100'"
        await conn.execute(f"INSERT INTO syncd.log (pos, epoch, {fields}) VALUES ($4, 1, {values})",
                           rid, ME, cols, head + 1)
        await conn.execute(f"INSERT INTO syncd.pending ({fields}) VALUES ({values})", other, ME, cols)
        await conn.execute("UPDATE syncd.node SET head = $1", head + 1)
        versions = '{"name": [1, 0, 0, 1700000000000001, "430102", null]}'
        await conn.execute("INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v) "
                           "VALUES ('members', $1, $2, 1, '{\"home\": \"430102\"}', $3::jsonb)", rid, ME, versions)

        res = await init_node(conn, ME)
        assert res.migrations_applied == list(range(8, LATEST + 1)) and await schema_version(conn) == LATEST
        for table, column in (("log", "cols"), ("log", "homes"), ("pending", "cols"), ("rowver", "v")):
            assert await _type_of(conn, table, column) == "json"

        expected = {"name": ColumnChange("张三", 0, 0, None),
                    "work_unit": ColumnChange("中南大学", 1, 0, Version(1, 0, 0, 1700000000000000, ME))}
        logged = change_from_record(await conn.fetchrow("SELECT * FROM syncd.log WHERE pos = $1", head + 1))
        assert logged == Change("members", rid, ME, "U", 1, 1700000000000001, ME, 7, {"home": ME}, expected, head + 1)
        held = (await load_rowver(conn, [("members", rid)]))[("members", rid)]
        assert held.cl == 1 and held.v == {"name": Version(1, 0, 0, 1700000000000001, ME)}

        # the queued change moves into the log as before, its columns as they were
        assert (await Sequencer(me=ME).tick(conn)).moved == 1
        moved = await conn.fetchrow("SELECT * FROM syncd.log WHERE id = $1", other)
        assert moved["pos"] == head + 2 and decode_cols(moved["cols"]) == expected
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_captures_written_as_jsonb_survive_migration_10_and_new_ones_are_json(cluster: Cluster) -> None:
    """Migration 0010: the capture triggers' row images become json; a capture queued before
    the upgrade (jsonb, as schema 9 wrote it) is versioned after it as before."""
    dsn = await cluster.new_database("capmig", migrated=False)
    conn = await asyncpg.connect(dsn)
    try:
        await init_node(conn, ME, target=9)
        assert await _type_of(conn, "capture", "new") == "jsonb"
        await conn.execute("INSERT INTO members (org_code, name, work_unit) VALUES ($1, '李四', '湘雅医院')", ME)
        rid = await conn.fetchval("SELECT id FROM members")
        assert await conn.fetchval("SELECT new->>'work_unit' FROM syncd.capture WHERE tbl = 'members'") == "湘雅医院"  # jsonb inside

        res = await init_node(conn, ME)
        assert 10 in res.migrations_applied and await schema_version(conn) == LATEST
        assert [await _type_of(conn, "capture", c) for c in ("old", "new")] == ["json", "json"]
        await conn.execute("UPDATE members SET work_unit = '中南大学' WHERE id = $1", rid)
        op, new = await conn.fetchrow("SELECT op, new::text FROM syncd.capture ORDER BY serial DESC LIMIT 1")
        assert (op, new) == (b"p", '{"work_unit":"中南大学"}')  # the trigger now writes json text

        head = await conn.fetchval("SELECT head FROM syncd.node")
        await Sequencer(me=ME).drain(conn)  # (the default score rules were captured too)
        ins, upd = [change_from_record(r) for r in await conn.fetch(
            "SELECT * FROM syncd.log WHERE pos > $1 AND tbl = 'members' ORDER BY pos", head)]
        assert (ins.op, ins.id, ins.cols["name"].value, ins.cols["work_unit"].value) == ("I", rid, "李四", "湘雅医院")
        assert (upd.op, set(upd.cols), upd.cols["work_unit"].value) == ("U", {"work_unit"}, "中南大学")
    finally:
        await conn.close()
        await cluster.drop(dsn)
