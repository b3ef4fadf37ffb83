"""The retention pass on one real database (HC-21): where the log is cut, the per-child marks,
the count bound, tombstones, and what hello needs kept."""
from __future__ import annotations

from typing import Any

import asyncpg

from syncd.config import Config, parse_config
from syncd.store import retention
from syncd.store.sequencer import Sequencer


def city_config(**tuning: Any) -> Config:
    return parse_config({
        "node": {"id": "430100", "name": "长沙市", "listen": "127.0.0.1:0"},
        "parent": {"id": "430000", "url": "http://127.0.0.1:1", "secret": "0123456789abcdef0123"},
        "children": [{"id": "430102", "secret": "0123456789abcdef0102"},
                     {"id": "430104", "secret": "0123456789abcdef0104"}],
        "tuning": tuning})


async def city_db(cluster: Any) -> asyncpg.Connection:
    from syncd.store.migrate import init_node

    conn = await asyncpg.connect(await cluster.new_database("ret"))
    await init_node(conn, "430100")
    return conn


async def write(conn: asyncpg.Connection, n: int) -> int:
    await conn.executemany("INSERT INTO members (org_code, name) VALUES ('430100', $1)", [(f"委员{i}",) for i in range(n)])
    await Sequencer(me="430100").drain(conn)
    return int(await conn.fetchval("SELECT head FROM syncd.node"))


async def cursor(conn: asyncpg.Connection, peer: str, kind: str, pos: int) -> None:
    await conn.execute("INSERT INTO syncd.cursors (peer, kind, pos) VALUES ($1, $2, $3) ON CONFLICT (peer, kind) "
                       "DO UPDATE SET pos = excluded.pos", peer, kind, pos)


async def test_hc21_log_is_cut_below_every_peer_and_the_entry_at_each_cursor_is_kept(cluster: Any) -> None:
    conn = await city_db(cluster)
    try:
        cfg = city_config()
        head = await write(conn, 100)
        await conn.execute("INSERT INTO syncd.outbox (peer, pos) SELECT c, p FROM unnest(ARRAY['430102', '430104']) c, "
                           "generate_series(1, $1) p", head)
        await cursor(conn, "430000", "push", head)  # the parent has everything
        await cursor(conn, "430102", "served", 60)
        await cursor(conn, "430104", "served", 40)  # the slowest child
        h, removed, _ = await retention.run_once(conn, cfg)
        assert (h.by_peers, h.through, removed) == (39, 39, 39)
        assert await conn.fetchval("SELECT log_first FROM syncd.node") == 40
        assert await conn.fetchval("SELECT min(pos) FROM syncd.log") == 40  # the entry at 40 stays (hello checks it)
        assert await conn.fetchval("SELECT min(pos) FROM syncd.outbox") == 40
        # nobody lost anything it had not pulled: no child is marked behind
        assert await conn.fetchval("SELECT count(*) FROM syncd.cursors WHERE kind = 'truncated'") == 0
        # a child that never pulled does not hold the log back; one without a position is marked
        await conn.execute("DELETE FROM syncd.cursors WHERE peer = '430104'")
        h, removed, _ = await retention.run_once(conn, cfg)
        assert h.through == 59 and removed == 20
        assert await conn.fetchval("SELECT pos FROM syncd.cursors WHERE peer = '430104' AND kind = 'truncated'") == 59
        assert await conn.fetchval("SELECT count(*) FROM syncd.cursors WHERE peer = '430102' AND kind = 'truncated'") \
            == 0
    finally:
        await conn.close()


async def test_hc21_a_peer_away_past_max_retention_or_the_count_bound_does_not_pin_the_log(cluster: Any) -> None:
    conn = await city_db(cluster)
    try:
        head = await write(conn, 50)
        await conn.execute("INSERT INTO syncd.outbox (peer, pos) SELECT '430104', p FROM generate_series(1, $1) p", head)
        await cursor(conn, "430000", "push", head)
        await cursor(conn, "430104", "served", 5)  # 岳麓区 has been away since position 5
        await conn.execute("UPDATE syncd.log SET logged_at = now() - interval '40 days' WHERE pos <= 30")
        h, removed, _ = await retention.run_once(conn, city_config())  # 30 days
        assert (h.by_peers, h.by_age, h.through) == (4, 30, 30) and removed == 30
        assert await conn.fetchval("SELECT pos FROM syncd.cursors WHERE peer = '430104' AND kind = 'truncated'") == 30
        h, removed, _ = await retention.run_once(conn, city_config(max_retention_entries=10))
        assert h.through == head - 10 and removed == head - 10 - 30
        assert await conn.fetchval("SELECT count(*) FROM syncd.log") == 10
        assert await conn.fetchval("SELECT log_first FROM syncd.node") == head - 9
    finally:
        await conn.close()


async def test_hc21_tombstones_live_max_retention_and_not_while_the_parent_is_owed_them(cluster: Any) -> None:
    conn = await city_db(cluster)
    try:
        cfg = city_config(max_retention="1h")
        await write(conn, 3)
        gone = await conn.fetchval("SELECT id FROM members ORDER BY name LIMIT 1")
        await conn.execute("DELETE FROM members WHERE id = $1", gone)
        head = await write(conn, 0)
        await cursor(conn, "430000", "push", head)
        await retention.run_once(conn, cfg)
        assert await conn.fetchval("SELECT cl FROM syncd.rowver WHERE id = $1", gone) == 2  # noted, young
        await conn.execute("UPDATE syncd.tombstones SET seen_at = now() - interval '2 hours'")
        await retention.run_once(conn, cfg)
        assert await conn.fetchval("SELECT cl FROM syncd.rowver WHERE id = $1", gone) == 2  # its delete is still logged
        await conn.execute("DELETE FROM syncd.log")
        await conn.execute("UPDATE syncd.node SET log_first = head + 1")
        await cursor(conn, "430000", "push", 0)  # the parent never got the delete: it is owed
        await retention.run_once(conn, cfg)
        assert await conn.fetchval("SELECT cl FROM syncd.rowver WHERE id = $1", gone) == 2
        await cursor(conn, "430000", "push", head)
        await retention.run_once(conn, cfg)
        assert await conn.fetchval("SELECT count(*) FROM syncd.rowver WHERE id = $1", gone) == 0
        assert await conn.fetchval("SELECT count(*) FROM syncd.tombstones") == 0
        rules = await conn.fetchval("SELECT count(*) FROM score_rules")  # the default rule set init seeds
        assert await conn.fetchval("SELECT count(*) FROM syncd.rowver") == 2 + rules  # live rows and rules stay
    finally:
        await conn.close()
