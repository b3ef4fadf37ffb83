"""New snapshot rows written straight with COPY land exactly as through the JSON stage.

A bootstrap writes a city's new rows with one COPY (text format) into their table and one into
``syncd.rowver`` (``syncd.store.fastpath._copy_snapshot_rows``); the JSON stage with
``json_populate_record`` is the reference.  Values are those ``to_jsonb`` gives at the
parent, for every column type the COPY takes, with the characters COPY's text format must
escape.  A type it does not take (an array) goes through the JSON stage; a write that fails
(a foreign-key miss) writes nothing and says so, for the row-by-row path to take over.  The
rows a chunk names that this node holds are found by the chunk's id span.
"""
from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson
import pytest

from syncd.proto.messages import StoredRow
from syncd.schema.declarations import SCHEMA, Column, Table
from syncd.store import fastpath
from syncd.store.apply import ApplyContext, lock_span
from syncd.topology import Topology

TYPES = {"t": "text", "vc": "varchar(40)", "u": "uuid", "b": "boolean", "i2": "smallint", "i4": "integer",
         "i8": "bigint", "f4": "real", "f8": "double precision", "d": "date", "tm": "time", "ttz": "timetz",
         "ts": "timestamp", "tstz": "timestamptz", "j": "json", "jb": "jsonb"}
#: one row per line: the SQL literals of the source row (NULL where absent)
SOURCE = [
    {"t": r"E'tab\there\nnewline\rCR back\\slash \\N 引号''\"'", "vc": "'委员'", "u": "gen_random_uuid()",
     "b": "true", "i2": "-32768", "i4": "2147483647", "i8": "9223372036854775807", "f4": "1.1", "f8": "0.1",
     "d": "'2026-11-27'", "tm": "'23:59:59.999999'", "ttz": "'08:00:00+08'", "ts": "'2026-01-01 00:00:00.000001'",
     "tstz": "'2026-11-27 16:00:00.123456+08'", "j": """'{"b": [1, "\\\\t"], "a": "x"}'""",
     "jb": """'{"会": {"次": 1}, "s": "a\\tb"}'"""},
    {"t": "''", "vc": "'\\'", "b": "false", "i8": "-9223372036854775808", "f8": "1e300", "f4": "-0.5",
     "j": """'"a string"'""", "jb": "'[1, 2.5, null, true]'", "tstz": "'1970-01-01 00:00:00+00'"},
    {"f8": "-2.5e-300", "jb": """'"\\\\N"'""", "j": "'12'", "i4": "0"},
    {},
]


def _table(name: str) -> Table:
    return Table(name, tuple(Column(n) for n in TYPES), ())


async def _rows(conn: asyncpg.Connection) -> list[StoredRow]:
    """The source rows as a parent sends them: values as to_jsonb gives them, and versions."""
    await conn.execute("CREATE TABLE copy_src (id uuid PRIMARY KEY, org_code text NOT NULL, "
                       + ", ".join(f"{n} {t}" for n, t in TYPES.items()) + ")")
    for i, row in enumerate(SOURCE):
        names = list(row)
        await conn.execute(f"INSERT INTO copy_src (id, org_code{''.join(', ' + n for n in names)}) VALUES "
                           f"('{uuid.UUID(int=i + 1)}', '430102'{''.join(', ' + row[n] for n in names)})")
    out = []
    for r in await conn.fetch("SELECT id, org_code, to_jsonb(x) - 'id' - 'org_code' AS j FROM copy_src x ORDER BY id"):
        vals = orjson.loads(r["j"])
        vers = {n: [1, 0, 0, 1_767_225_600_000_000, "430102", None] for n in vals}
        out.append(StoredRow(r["id"], r["org_code"], 1, {"home": "430102"}, vals, vers))
    return out


async def _written(conn: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    return [(r["j"], r["cl"], r["homes"], orjson.loads(r["v"])) for r in await conn.fetch(
        f"SELECT to_jsonb(x) AS j, r.cl, r.homes, r.v FROM {table} x JOIN syncd.rowver r ON r.tbl = $1 AND r.id = x.id "
        "ORDER BY x.id", table)]


async def test_copy_writes_rows_and_versions_as_the_json_stage_does(county: asyncpg.Connection,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    conn = county
    rows = await _rows(conn)
    for name in ("copy_fast", "copy_ref"):
        await conn.execute(f"CREATE TABLE {name} (LIKE copy_src)")
    async with conn.transaction():
        assert await fastpath._copy_snapshot_rows(conn, _table("copy_fast"), rows,
                                                  fastpath._insert_columns(_table("copy_fast"), TYPES)) is True
    with monkeypatch.context() as m:
        m.setattr(fastpath, "_COPY_TEXT_TYPES", frozenset())  # no type COPY-able: the JSON stage
        async with conn.transaction():
            assert await fastpath._copy_snapshot_rows(conn, _table("copy_ref"), rows,
                                                      fastpath._insert_columns(_table("copy_ref"), TYPES)) is None
            assert await fastpath.insert_snapshot_rows(conn, _table("copy_ref"), rows) is True
    fast, ref = await _written(conn, "copy_fast"), await _written(conn, "copy_ref")
    assert len(fast) == len(SOURCE) and fast == ref
    src = [r["j"] for r in await conn.fetch("SELECT to_jsonb(x) AS j FROM copy_src x ORDER BY id")]
    assert [j for j, *_ in fast] == src  # every value as the parent held it, escapes and all
    assert [v for *_, v in fast] == [r.vers for r in rows]


async def test_a_type_copy_cannot_take_goes_through_the_json_stage(county: asyncpg.Connection) -> None:
    """score_rules.points is numeric: orjson would read a long one as a float and lose digits,
    so the row goes through the JSON stage and keeps every digit."""
    t = SCHEMA["score_rules"]
    vals = orjson.loads('{"rule_version": 1, "event": "copy_test", "points": 12345678901234567890.123456789, '
                        '"cap": null, "valid_from": "2026-01-01"}')
    text = '{"rule_version":1,"event":"copy_test","points":12345678901234567890.123456789,"cap":null,' \
           '"valid_from":"2026-01-01"}'
    row = StoredRow(uuid.uuid4(), "430000", 1, {"home": "430000"}, vals, {n: [1, 0, 0, 5, "430000", None] for n in vals},
                    vals_json=text)
    async with county.transaction():
        await county.execute("SET LOCAL syncd.applying = 'on'")
        assert await fastpath._copy_snapshot_rows(county, t, [row], fastpath._insert_columns(t, row.names)) is None
        assert await fastpath.insert_snapshot_rows(county, t, [row]) is True
    assert str(await county.fetchval("SELECT points FROM score_rules WHERE event = 'copy_test'")) == "12345678901234567890.123456789"


async def test_a_failed_copy_writes_nothing_and_says_so(county: asyncpg.Connection) -> None:
    """An attendance row whose activity is missing: the COPY fails, no row and no version stay."""
    t = SCHEMA["attendance"]
    vals = {"activity_id": str(uuid.uuid4()), "member_id": str(uuid.uuid4()), "status": "出席"}
    row = StoredRow(uuid.uuid4(), "430102", 1, {"home": "430102"}, vals,
                    {n: [1, 0, 0, 5, "430102", None] for n in vals})
    async with county.transaction():
        await county.execute("SET LOCAL syncd.applying = 'on'")
        assert await fastpath.insert_snapshot_rows(county, t, [row]) is False
    assert await county.fetchval("SELECT count(*) FROM attendance") == 0
    assert await county.fetchval("SELECT count(*) FROM syncd.rowver WHERE tbl = 'attendance'") == 0


async def test_lock_span_finds_the_chunks_rows_held_here_and_no_other(county: asyncpg.Connection) -> None:
    """A chunk's rows are looked up by their id span (syncd.store.apply.lock_span): a live row
    and a tombstone held here are found, a row of the span the chunk does not name is not
    returned, and rows outside the span are not touched."""
    ids = [uuid.UUID(int=n) for n in range(10, 60, 10)]  # 10 20 30 40 50: the chunk names 20, 30, 40
    async with county.transaction():
        await county.execute("SET LOCAL syncd.applying = 'on'")
        for n, name in ((10, "外"), (20, "在"), (30, "间")):
            await county.execute("INSERT INTO members (id, org_code, name) VALUES ($1, '430102', $2)",
                                 uuid.UUID(int=n), name)
        await county.executemany(
            "INSERT INTO syncd.rowver (tbl, id, org_code, cl, homes, v) VALUES ('members', $1, '430102', $2, "
            """'{"home": "430102"}', '{}')""", [(uuid.UUID(int=10), 1), (uuid.UUID(int=20), 1), (uuid.UUID(int=40), 2)])
    ctx = ApplyContext(SCHEMA, "430102", Topology.from_rows([("430102", "芙蓉区", "county", None)]))
    async with county.transaction():
        existing, held = await lock_span(county, ctx, "members", [ids[1], ids[3], ids[2]])
    assert existing == {("members", ids[1]), ("members", ids[2])}  # 30 has no version: a local row
    assert held == {("members", ids[1]): 1, ("members", ids[3]): 2}  # 40: a tombstone held here
