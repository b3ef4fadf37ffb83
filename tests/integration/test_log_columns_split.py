"""The log keeps a change's columns split as the wire sends them (``[plain, other]``,
``syncd.store.log``), and ``deploy/downgrade/log-columns-as-one-map.sql`` turns them back into
the one map an earlier release reads, the same columns to the last value."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg

from syncd.proto.change import Change, ColumnChange, Version
from syncd.store.log import add_pending, append_log, decode_cols

ME = "430102"
SQL = Path(__file__).resolve().parents[2] / "deploy" / "downgrade" / "log-columns-as-one-map.sql"


def _changes() -> list[Change]:
    prev = Version(1, 0, 0, 1_700_000_000_000_000, ME)
    mixed = {"name": ColumnChange("张三", 0, 0, None), "title": ColumnChange({"b": [1, None], "a": "x"}, 0, 0, None),
             "work_unit": ColumnChange("中南大学", 1, 0, prev), "party": ColumnChange(None, 0, 0, prev)}
    only_plain = {"name": ColumnChange("李四\t\"引号\"", 0, 0, None), "mobile": ColumnChange(2**62, 0, 0, None)}
    only_other = {"work_unit": ColumnChange(1.5, 2, -1, prev)}
    return [Change("members", uuid.uuid4(), ME, op, 1, 1_700_000_000_000_001 + i, ME, 9, {"home": ME}, cols)
            for i, (op, cols) in enumerate((("U", mixed), ("I", only_plain), ("U", only_other), ("D", {})))]


async def test_columns_are_logged_split_and_the_downgrade_script_makes_them_one_map(
        county: asyncpg.Connection) -> None:
    changes = _changes()
    head = await county.fetchval("SELECT head FROM syncd.node")
    await append_log(county, head + 1, 1, [(c, None) for c in changes])
    await add_pending(county, [(c, "430100") for c in changes])

    for table in ("log", "pending"):
        docs = [json.loads(r["cols"]) for r in await county.fetch(
            f"SELECT cols FROM syncd.{table} WHERE org_code = $1 AND ts BETWEEN 1700000000000001 AND 1700000000000004 ORDER BY ts", ME)]
        assert all(type(d) is list and len(d) == 2 for d in docs), table
        plain, other = docs[0]
        assert list(plain) == ["name", "title"] and list(other) == ["party", "work_unit"]
        assert list(plain["title"]) == ["a", "b"]  # values canonical: maps sorted by key

    await county.execute(SQL.read_text())
    await county.execute(SQL.read_text())  # a second run changes nothing
    for table in ("log", "pending"):
        rows = await county.fetch(
            f"SELECT cols FROM syncd.{table} WHERE org_code = $1 AND ts BETWEEN 1700000000000001 AND 1700000000000004 ORDER BY ts", ME)
        assert len(rows) == len(changes)
        for r, c in zip(rows, changes):
            doc = json.loads(r["cols"])
            # the earlier release's form: one map, every column a [value, round, stage, prev] list
            assert type(doc) is dict and all(type(v) is list and len(v) == 4 for v in doc.values()), doc
            assert decode_cols(r["cols"]) == c.cols, table
