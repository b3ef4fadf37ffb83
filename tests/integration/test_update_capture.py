"""An UPDATE is captured with its changed columns only (op ``p``), and versions as a whole image did.

The capture trigger writes each changed column's new value as JSON text of its own
(``syncd.store.triggers._partial_update_image``) instead of the whole new row: the values must
read back exactly as ``to_json`` of the row renders them, for every column type, and a table
wider than a function call takes (100 arguments) must work.  The versioner reads the row itself
when such a capture is of a row with no live version (``versioning.needs_whole_row``).
"""
from __future__ import annotations

import json
import uuid

import asyncpg

from syncd.schema.declarations import Column, Table
from syncd.store.log import read_log
from syncd.store.sequencer import Sequencer
from syncd.store.triggers import table_trigger_sql
from tests.integration.test_snapshot_copy import SOURCE, TYPES

ME = "430102"
#: every type of the COPY test but json, which has no equality operator (replicated tables use jsonb)
COLS = {n: t for n, t in TYPES.items() if t != "json"}


async def _captures(conn: asyncpg.Connection, table: str) -> dict[uuid.UUID, tuple[bytes, object, object]]:
    return {r["row_id"]: (r["op"], json.loads(r["old"]), json.loads(r["new"])) for r in await conn.fetch(
        "SELECT row_id, op, old, new FROM syncd.capture WHERE tbl = $1 ORDER BY serial", table)}


async def _images(conn: asyncpg.Connection, table: str) -> dict[uuid.UUID, dict[str, object]]:
    return {r["id"]: json.loads(r["j"]) for r in await conn.fetch(f"SELECT id, to_json(x)::text AS j FROM {table} x")}


async def test_an_update_capture_renders_each_changed_column_as_the_row_image_does(
        county: asyncpg.Connection) -> None:
    conn = county
    await conn.execute("CREATE TABLE cap_types (id uuid PRIMARY KEY, org_code text NOT NULL, "
                       + ", ".join(f"{n} {t}" for n, t in COLS.items()) + ")")
    await conn.execute(table_trigger_sql(Table("cap_types", tuple(Column(n) for n in COLS), ())))
    ids = [uuid.UUID(int=i + 1) for i in range(len(SOURCE))]
    for rid, row in zip(ids, SOURCE):
        names = [n for n in row if n in COLS]
        await conn.execute(f"INSERT INTO cap_types (id, org_code{''.join(', ' + n for n in names)}) VALUES "
                           f"('{rid}', '{ME}'{''.join(', ' + row[n] for n in names)})")
    before = await _images(conn, "cap_types")
    await conn.execute("DELETE FROM syncd.capture")
    # one statement: every row takes the values of the next one (values to NULL, NULL to values)
    pairs = ", ".join(f"('{a}'::uuid, '{b}'::uuid)" for a, b in zip(ids, ids[1:] + ids[:1]))
    await conn.execute(f"UPDATE cap_types t SET {', '.join(f'{n} = s.{n}' for n in COLS)} "
                       f"FROM (VALUES {pairs}) p(tid, sid) JOIN cap_types s ON s.id = p.sid WHERE t.id = p.tid")
    after = await _images(conn, "cap_types")
    captured = await _captures(conn, "cap_types")
    assert set(captured) == set(ids)
    for rid in ids:
        changed = {n: after[rid][n] for n in COLS if after[rid][n] != before[rid][n]}
        assert changed, "the fixture changes something in every row"
        assert captured[rid] == (b"p", {"org_code": ME}, changed)


async def test_an_update_capture_of_a_table_wider_than_a_function_call_takes(county: asyncpg.Connection) -> None:
    names = [f"c{i:03d}" for i in range(230)]
    await county.execute("CREATE TABLE cap_wide (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), org_code text NOT NULL, "
                         + ", ".join(f"{n} integer" for n in names) + ")")
    await county.execute(table_trigger_sql(Table("cap_wide", tuple(Column(n) for n in names), ())))
    rid = await county.fetchval(f"INSERT INTO cap_wide (org_code, {', '.join(names)}) "
                                f"VALUES ('{ME}', {', '.join('0' for _ in names)}) RETURNING id")
    await county.execute("DELETE FROM syncd.capture")
    touched = names[::7]  # columns in every group of the trigger's nested concat_ws
    await county.execute(f"UPDATE cap_wide SET {', '.join(f'{n} = {i + 1}' for i, n in enumerate(touched))}")
    assert await _captures(county, "cap_wide") == {
        rid: (b"p", {"org_code": ME}, {n: i + 1 for i, n in enumerate(touched)})}


async def test_an_update_of_a_row_without_a_live_version_ships_the_whole_row(county: asyncpg.Connection) -> None:
    """A row written where no capture was taken (here: as syncd's own apply would) has no
    version; the first capture of it to version becomes a new row, so the versioner reads the
    whole row.  A row deleted before its update was versioned ships its delete alone."""
    await Sequencer(me=ME).drain(county)
    start = int(await county.fetchval("SELECT head FROM syncd.node"))
    await county.execute("SET syncd.applying = 'on'")
    kept, gone = [await county.fetchval(
        "INSERT INTO members (org_code, name, work_unit, title) VALUES ($1, $2, '湖南大学', '教授') RETURNING id",
        ME, name) for name in ("张三", "李四")]
    await county.execute("RESET syncd.applying")
    await county.execute("UPDATE members SET title = '研究员' WHERE id = ANY($1::uuid[])", [kept, gone])
    await county.execute("DELETE FROM members WHERE id = $1", gone)
    await Sequencer(me=ME).drain(county)
    log = {c.id: c for c in await read_log(county, start)}
    assert set(log) == {kept, gone}
    assert log[kept].op == "I" and log[kept].cl == 1
    assert {k: log[kept].cols[k].value for k in ("name", "work_unit", "title")} == {
        "name": "张三", "work_unit": "湖南大学", "title": "研究员"}
    assert (log[gone].op, log[gone].cols) == ("D", {})
    assert await county.fetchval("SELECT count(*) FROM syncd.capture") == 0
