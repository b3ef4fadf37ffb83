"""syncd init: idempotence, upgrades, populated databases, capture health (issue 3)."""
from __future__ import annotations

import asyncpg
import pytest

from syncd.store.health import capture_health
from syncd.store.log import read_log
from syncd.store.migrate import LATEST, InitError, init_node, migrate, schema_version
from syncd.store.sequencer import Sequencer
from syncd.topology import Topology
from tests.pg import Cluster

ME = "430102"


async def _fresh(cluster: Cluster) -> tuple[str, asyncpg.Connection]:
    dsn = await cluster.new_database("init", migrated=False)
    return dsn, await asyncpg.connect(dsn)


async def _snapshot(conn: asyncpg.Connection) -> tuple:
    node = await conn.fetchrow("SELECT id, incarnation, epoch, head FROM syncd.node")
    trig = await conn.fetch("SELECT tgrelid::regclass::text AS t, tgname, tgenabled FROM pg_trigger "
                            "WHERE tgname LIKE 'syncd_%' ORDER BY 1, 2")
    rules = await conn.fetchval("SELECT count(*) FROM score_rules")
    versions = await conn.fetch("SELECT version FROM syncd.schema_version ORDER BY 1")
    return tuple(node), [tuple(r) for r in trig], rules, [r[0] for r in versions]


async def test_init_twice_changes_nothing(cluster: Cluster) -> None:
    dsn, conn = await _fresh(cluster)
    try:
        first = await init_node(conn, ME)
        await Sequencer(me=ME).drain(conn)
        before = await _snapshot(conn)
        second = await init_node(conn, ME)
        assert await Sequencer(me=ME).drain(conn) == 0
        assert first.created and not second.created
        assert second.migrations_applied == [] and second.rows_seeded == 0
        assert await _snapshot(conn) == before
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_database_at_previous_schema_version_upgrades(cluster: Cluster) -> None:
    dsn, conn = await _fresh(cluster)
    try:
        await init_node(conn, ME, target=LATEST - 1)
        assert await schema_version(conn) == LATEST - 1
        res = await init_node(conn, ME)
        assert res.migrations_applied == [LATEST] and not res.created
        assert await schema_version(conn) == LATEST
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_init_refuses_a_database_of_another_node(county: asyncpg.Connection) -> None:
    with pytest.raises(InitError, match="NODE_ID_MISMATCH"):
        await init_node(county, "430104")


async def test_hc20_init_on_populated_database_logs_every_row(cluster: Cluster) -> None:
    """政协云 has run for years before syncd is installed: every home row enters the log."""
    dsn, conn = await _fresh(cluster)
    try:
        await migrate(conn)  # the application schema exists, no syncd triggers yet
        await conn.execute("""
            INSERT INTO members (org_code, name) SELECT '430102', '委员' || g FROM generate_series(1, 200) g;
            INSERT INTO activities (org_code, kind, title, starts_at)
                 SELECT '430102', '视察', '视察' || g, now() FROM generate_series(1, 10) g;
            INSERT INTO attendance (org_code, activity_id, member_id)
                 SELECT '430102', a.id, m.id FROM activities a CROSS JOIN members m;""")
        res = await init_node(conn, ME)
        assert res.rows_seeded == 200 + 10 + 2000
        await Sequencer(me=ME).drain(conn)
        log = await read_log(conn, 0, 100_000)
        by_table: dict[str, int] = {}
        for c in log:
            by_table[c.table] = by_table.get(c.table, 0) + 1
            assert c.op == "I" and c.origin == ME
        assert by_table["members"] == 200 and by_table["activities"] == 10 and by_table["attendance"] == 2000
        organiser = [c for c in log if c.table == "attendance"][0].homes
        assert organiser == {"home": ME, "organiser": ME}
        again = await init_node(conn, ME)
        assert again.rows_seeded == 0
    finally:
        await conn.close()
        await cluster.drop(dsn)


async def test_hc29_capture_bypasses_are_named(county: asyncpg.Connection) -> None:
    assert await capture_health(county) == []
    await county.execute("ALTER TABLE members DISABLE TRIGGER syncd_capture_u")
    await county.execute("ALTER TABLE attendance ENABLE TRIGGER syncd_capture_i")  # origin-only: replica role skips it
    await county.execute("DROP TRIGGER syncd_capture_d ON proposals")
    problems = {(p.code, p.table) for p in await capture_health(county)}
    assert ("CAPTURE_TRIGGER_DISABLED", "members") in problems
    assert ("CAPTURE_TRIGGER_DISABLED", "attendance") in problems
    assert ("CAPTURE_TRIGGER_MISSING", "proposals") in problems
    await init_node(county, ME)  # init repairs
    assert await capture_health(county) == []


async def test_hc29_recreated_table_and_replica_role(county: asyncpg.Connection) -> None:
    await county.execute("""
        ALTER TABLE micro_suggestions RENAME TO micro_old;
        CREATE TABLE micro_suggestions (LIKE micro_old INCLUDING ALL);""")
    codes = {(p.code, p.table) for p in await capture_health(county)}
    assert ("TABLE_RECREATED", "micro_suggestions") in codes
    assert ("CAPTURE_TRIGGER_MISSING", "micro_suggestions") in codes
    # replica role does not bypass: the triggers are ENABLE ALWAYS
    await county.execute("SET session_replication_role = replica")
    await county.execute("INSERT INTO members (org_code, name) VALUES ($1, '复制角色')", ME)
    await county.execute("SET session_replication_role = origin")
    assert await county.fetchval("SELECT count(*) FROM syncd.capture WHERE new->>'name' = '复制角色'") == 1


async def test_hc27_rename_and_reparent_keep_ids_and_push_no_history(cluster: Cluster) -> None:
    dsn = await cluster.new_node_db("430000", prefix="prov")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""
            INSERT INTO committees (org_code, code, name, level, parent_code) VALUES
              ('430000', '430000', '湖南省', 'province', NULL),
              ('430000', '430100', '长沙市', 'city', '430000'),
              ('430000', '430200', '株洲市', 'city', '430000'),
              ('430000', '430124', '宁乡县', 'county', '430100'),
              ('430000', '430221', '株洲县', 'county', '430200');
            INSERT INTO members (org_code, name) VALUES ('430000', '省委员');""")
        await Sequencer(me="430000").drain(conn)
        ids = dict(await conn.fetch("SELECT code, id FROM committees"))
        head = await conn.fetchval("SELECT head FROM syncd.node")
        # 宁乡县 430124 becomes 宁乡市 (new code 430182 as alias); 株洲县 moves under 长沙市
        await conn.execute("UPDATE committees SET name = '宁乡市', aliases = '{430182}' WHERE code = '430124'")
        await conn.execute("UPDATE committees SET parent_code = '430100' WHERE code = '430221'")
        await Sequencer(me="430000").drain(conn)
        log = await read_log(conn, head)
        assert [c.table for c in log] == ["committees", "committees"]
        assert {k for c in log for k in c.cols} == {"name", "aliases", "parent_code"}
        assert dict(await conn.fetch("SELECT code, id FROM committees")) == ids
        rows = await conn.fetch("SELECT code, name, level, parent_code, aliases FROM committees")
        topo = Topology.from_rows([tuple(r) for r in rows])
        assert topo.resolve("430182") == "430124"
        assert topo.in_subtree("430221", "430100") and not topo.in_subtree("430221", "430200")
    finally:
        await conn.close()
        await cluster.drop(dsn)
