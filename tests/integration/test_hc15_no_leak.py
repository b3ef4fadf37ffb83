"""HC-15: a seeded ID number at 芙蓉区 is found nowhere above its home after every error path.

Error paths triggered at 长沙市 (the city above 芙蓉区):

* poison: a vendor CHECK constraint the member violates → quarantined ``POISON``;
* duplicate ID: the same person registered at 岳麓区 with the same ID number meets a vendor
  unique index on ``id_card_hash`` → a unique violation (PostgreSQL's DETAIL names the key);
* FK park: an attendance whose activity is missing at the city → parked;
* a refused forged change: 岳麓区's key pushes a write to 芙蓉区's member → quarantined.

Then every table of 长沙市 and 湖南省 (``pg_dump --data-only``), their ``/status`` and
``/metrics``, and every log line of the process are searched for the ID numbers, the
mobile number, and PostgreSQL DETAIL phrasing.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

import aiohttp
import pytest

from syncd.node import wire_key_id
from syncd.proto.change import Change, ColumnChange
from syncd.proto.messages import Push
from syncd.proto.signing import Keyring
from syncd.store.embedded import bin_path
from syncd.transport.http import HttpParentLink
from tests.pg import Cluster
from tests.tree import HASH_KEY, SMALL_TREE, Tree, eventually, secret

pytestmark = pytest.mark.timeout(240)

ID_NO = "430102199003035678"
ID_NO_2 = "430102198512128765"
MOBILE = "13973100042"
SECRETS = (ID_NO, ID_NO_2, MOBILE)
#: how PostgreSQL's DETAIL and row dumps read; none of it may leave a node
DETAIL_TEXT = ("already exists", "Failing row contains", "Key (", "DETAIL")


async def pg_dump(dsn: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(bin_path("pg_dump")), "--data-only", "--no-owner", f"--dbname={dsn}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def http_text(t: Tree, code: str, path: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async with s.get(f"http://127.0.0.1:{t.nodes[code].port}{path}") as r:
            assert r.status == 200
            return await r.text()


async def count(t: Tree, code: str, sql: str, *args: Any) -> int:
    return int(await t.db(code).fetchval(sql, *args))


async def forge_from_yuelu(t: Tree, member: uuid.UUID) -> tuple[str, ...]:
    """岳麓区's signed push of a write to 芙蓉区's member (not its to make): refused at 长沙市."""
    ring = Keyring()
    ring.add("430104", wire_key_id("430104", "k1"), secret("430104"))
    link = HttpParentLink(f"http://127.0.0.1:{t.nodes['430100'].port}", "430104", ring)
    pos = 10**9  # above 岳麓区's applied cursor, so the batch is not taken for a repeat
    forged = Change("members", member, "430102", "U", 1, time.time_ns() // 1000, "430104", pos,
                    {"home": "430102"}, {"name": ColumnChange("伪造姓名")}, pos)
    try:
        reply = await link.push(Push(batch_id=uuid.uuid4(), epoch=0, from_pos=pos - 1, to_pos=pos,
                                     changes=(forged,)))
    finally:
        await link.close()
    return tuple(q.code for q in reply.quarantined)


async def test_hc15_seeded_id_number_never_appears_above_home(tree: Tree, capfd: pytest.CaptureFixture[str]) -> None:
    fr, yl, cs = tree.db("430102"), tree.db("430104"), tree.db("430100")
    jia = await fr.fetchval(
        "INSERT INTO members (org_code, name, gender, id_card_no, mobile, address) "
        "VALUES ('430102', '甲委员', '男', $1, $2, '芙蓉中路1号') RETURNING id", ID_NO, MOBILE)
    await eventually(lambda: count(tree, "430000", "SELECT count(*) FROM members WHERE id = $1", jia), 30)

    await cs.execute("ALTER TABLE members ADD CONSTRAINT vendor_title CHECK (title IS DISTINCT FROM '禁用职务')")
    await cs.execute("CREATE UNIQUE INDEX vendor_one_person ON members (id_card_hash)")
    # poison
    yi = await fr.fetchval("INSERT INTO members (org_code, name, title, id_card_no) "
                           "VALUES ('430102', '乙委员', '禁用职务', $1) RETURNING id", ID_NO_2)
    # duplicate ID: the same person also serves at 岳麓区
    bing = await yl.fetchval("INSERT INTO members (org_code, name, id_card_no) "
                             "VALUES ('430104', '甲委员', $1) RETURNING id", ID_NO)
    for row in (yi, bing):
        await eventually(lambda: count(tree, "430100", "SELECT count(*) FROM syncd.quarantine WHERE row_id = $1",
                                       row), 30)
    reasons = {r["row_id"]: (r["code"], r["reason"]) for r in await cs.fetch(
        "SELECT row_id, code, reason FROM syncd.quarantine")}
    assert reasons[yi][0] == "POISON" and "vendor_title" in reasons[yi][1]
    assert reasons[bing][0] == "POISON" and "vendor_one_person" in reasons[bing][1]

    # FK park: the activity is gone at the city (removed behind syncd's back), the attendance arrives
    act = await fr.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                            "VALUES ('430102', '视察', '芙蓉区视察', now()) RETURNING id")
    await eventually(lambda: count(tree, "430100", "SELECT count(*) FROM activities WHERE id = $1", act), 30)
    async with cs.transaction():
        await cs.execute("SET LOCAL syncd.applying = 'on'")
        await cs.execute("DELETE FROM activities WHERE id = $1", act)
    await fr.execute("INSERT INTO attendance (org_code, activity_id, member_id, status) VALUES ('430102', $1, $2, "
                     "'出席')", act, jia)
    await eventually(lambda: count(tree, "430100", "SELECT count(*) FROM syncd.parked"), 30)

    # a refused forged change
    assert await forge_from_yuelu(tree, jia) != ()
    assert await count(tree, "430100", "SELECT count(*) FROM syncd.quarantine WHERE peer = '430104' "
                                       "AND code <> 'POISON'") == 1

    async def rolled_up() -> bool:  # the city's summary with its quarantine count reached the province
        st = json.loads(await http_text(tree, "430000", "/status"))
        city = next(n for n in st["subtree"] if n["node"] == "430100")
        return (city["quarantined"] or 0) >= 3 and (city["parked"] or 0) >= 1
    await eventually(rolled_up, 30)

    above = {code: await pg_dump(tree.dsns[code]) for code in ("430100", "430000")}
    home = await pg_dump(tree.dsns["430102"])
    assert ID_NO in home and MOBILE in home  # the search works: the values are there, at home
    seen = {f"{code} tables": text for code, text in above.items()}
    for code in ("430100", "430000"):
        seen[f"{code} /status"] = await http_text(tree, code, "/status")
        seen[f"{code} /metrics"] = await http_text(tree, code, "/metrics")
    logs = capfd.readouterr()
    seen["logs"] = logs.out + logs.err
    assert "link_state" in seen["logs"] or "running" in seen["logs"], "the nodes' logs were captured"
    for where, text in seen.items():
        for value in SECRETS:
            assert value not in text, f"{value} found in {where}"
    # HC-14: key material (the ID hash key, the link secrets) is in no table of any node, home
    # included, and in no status, metrics or log line
    seen["430102 tables"] = home
    for where, text in seen.items():
        for key in (HASH_KEY, *(secret(c) for c in SMALL_TREE)):
            assert key not in text, f"key material found in {where}"
    for where in ("430100 /status", "430000 /status"):
        for phrase in DETAIL_TEXT:
            assert phrase not in seen[where], f"{phrase!r} in {where}"
    for code in ("430100", "430000"):
        for table in ("quarantine", "parked"):
            for r in await tree.db(code).fetch(f"SELECT reason FROM syncd.{table}"):
                assert not any(p in r["reason"] for p in DETAIL_TEXT), r["reason"]
        hashes = await tree.db(code).fetch("SELECT id_card_no, mobile FROM members")
        assert all(h["id_card_no"] is None and h["mobile"] is None for h in hashes)


async def test_hc15_audit_record_counts_tables_and_names_personal_columns_never_values(county: Any) -> None:
    from syncd.store.audit import list_audit, record

    member, act = uuid.uuid4(), uuid.uuid4()
    changes = [
        Change("members", member, "430102", "I", 1, 1, "430102", 1, {"home": "430102"},
               {"name": ColumnChange("甲委员"), "mobile": ColumnChange(MOBILE), "id_card_hash": ColumnChange("h")}),
        Change("members", uuid.uuid4(), "430102", "U", 1, 2, "430102", 2, {"home": "430102"},
               {"name": ColumnChange("乙委员")}),
        Change("activities", act, "430102", "I", 1, 3, "430102", 3, {"home": "430102"},
               {"title": ColumnChange("视察")}),
    ]
    batch = uuid.uuid4()
    rid = await record(county, "430100", "sent", batch, changes)
    assert rid is not None
    (row,) = await list_audit(county)
    assert (row.peer, row.direction, row.batch_id, row.changes) == ("430100", "sent", str(batch), 3)
    assert row.tables == {"members": 2, "activities": 1}
    assert row.personal_columns == ["members.mobile"]
    text = await county.fetchval("SELECT string_agg(a::text, '') FROM syncd.audit a")
    assert MOBILE not in text and "甲委员" not in text
    assert await record(county, "430100", "received", uuid.uuid4(), []) is None  # an empty batch: no row
    assert await county.fetchval("SELECT count(*) FROM syncd.audit") == 1
    with pytest.raises(ValueError):
        await record(county, "430100", "relayed", batch, changes)  # type: ignore[arg-type]
