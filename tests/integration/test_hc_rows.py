"""Row identity across levels, end to end on the six-node tree (HC-6, HC-10, HC-19).

* HC-6: a member moving from 芙蓉区 to 岳阳楼区 is a new row at the new home; the two rows
  meet at 湖南省 linked by the keyed ID hash, without the ID number.
* HC-10: an application rewrites a proposal's co-signer list (DELETE all, INSERT the new set)
  in one transaction: one row per (proposal, member) everywhere, nothing quarantined.
* HC-19: an ``updated_at`` trigger at the county and at the city does not make a member's
  update go back and forth: once it has arrived, the logs stop moving.
"""
from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.tree import Pending, Tree, eventually

ID_NO = "430102199001014321"
TOUCH = """
CREATE OR REPLACE FUNCTION app_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER app_touch BEFORE UPDATE ON members FOR EACH ROW EXECUTE FUNCTION app_touch();"""


async def _rows(conn: asyncpg.Connection, sql: str, *args: object) -> list[tuple]:
    return [tuple(r) for r in await conn.fetch(sql, *args)]


async def test_hc6_a_transfer_is_a_new_row_linked_by_the_id_hash(tree: Tree) -> None:
    fr, yy, prov = tree.db("430102"), tree.db("430602"), tree.db("430000")
    old = await fr.fetchval("INSERT INTO members (org_code, name, id_card_no) VALUES ('430102', '调动者', $1) "
                            "RETURNING id", ID_NO)
    with pytest.raises(asyncpg.PostgresError, match="IMMUTABLE_KEY"):
        await fr.execute("UPDATE members SET org_code = '430602' WHERE id = $1", old)
    # the transfer: the membership at 芙蓉区 ends, a new one starts at 岳阳楼区
    await fr.execute("UPDATE members SET status = '辞去' WHERE id = $1", old)
    new = await yy.fetchval("INSERT INTO members (org_code, name, id_card_no) VALUES ('430602', '调动者', $1) "
                            "RETURNING id", ID_NO)

    async def linked() -> bool | Pending:
        rows = await _rows(prov, "SELECT id, org_code, status, id_card_hash, id_card_no FROM members "
                                 "WHERE id = ANY($1::uuid[]) ORDER BY org_code", [old, new])
        if len(rows) != 2 or rows[0][2] != "辞去":
            return Pending(str(rows))
        return True
    await eventually(linked)
    (a, b) = await _rows(prov, "SELECT org_code, id_card_hash, id_card_no FROM members WHERE id = ANY($1::uuid[]) "
                               "ORDER BY org_code", [old, new])
    assert (a[0], b[0]) == ("430102", "430602")
    assert a[1] and a[1] == b[1], (a, b)  # one person, one keyed hash, two memberships
    assert a[2] is None and b[2] is None  # the ID number itself never left either home


async def test_hc10_a_rewritten_cosigner_list_is_one_row_per_key_everywhere(tree: Tree) -> None:
    fr = tree.db("430102")
    ms = [await fr.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', $1) RETURNING id", f"联名人{i}")
          for i in range(5)]
    pid = await fr.fetchval("INSERT INTO proposals (org_code, term, session, seq, title, proposer_id, kind) "
                            "VALUES ('430102', 13, 4, 77, '关于联名的提案', $1, '联名') RETURNING id", ms[0])
    await fr.executemany("INSERT INTO proposal_cosigners (org_code, proposal_id, member_id) VALUES ('430102', $1, $2)",
                         [(pid, m) for m in ms[1:4]])
    want = "SELECT member_id, confirmed FROM proposal_cosigners WHERE proposal_id = $1 ORDER BY member_id"

    async def everywhere(expected: list[tuple]) -> bool | Pending:
        for code in ("430100", "430000"):
            got = await _rows(tree.db(code), want, pid)
            if got != expected:
                return Pending(f"{code}: {got}")
        return True
    await eventually(lambda: everywhere(sorted((m, False) for m in ms[1:4])))
    async with fr.transaction():  # the app's rewrite: all out, the new list in (two kept, one new)
        await fr.execute("DELETE FROM proposal_cosigners WHERE proposal_id = $1", pid)
        await fr.executemany("INSERT INTO proposal_cosigners (org_code, proposal_id, member_id, confirmed) "
                             "VALUES ('430102', $1, $2, true)", [(pid, m) for m in (ms[2], ms[3], ms[4])])
    expected = sorted((m, True) for m in (ms[2], ms[3], ms[4]))
    assert await _rows(fr, want, pid) == expected
    await eventually(lambda: everywhere(expected))
    for code in ("430102", "430100", "430000"):
        assert await tree.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
        assert await tree.db(code).fetchval("SELECT count(*) FROM syncd.parked") == 0, code


async def test_hc19_updated_at_triggers_at_both_ends_do_not_ping_pong(tree: Tree) -> None:
    fr, cs = tree.db("430102"), tree.db("430100")
    await fr.execute(TOUCH)
    await cs.execute(TOUCH)
    mid = await fr.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '触发器') RETURNING id")
    await eventually(lambda: cs.fetchval("SELECT count(*) = 1 FROM members WHERE id = $1", mid))
    await fr.execute("UPDATE members SET title = '新职务' WHERE id = $1", mid)
    await eventually(lambda: cs.fetchval("SELECT title = '新职务' FROM members WHERE id = $1", mid))
    assert await cs.fetchval("SELECT updated_at IS NOT NULL FROM members WHERE id = $1", mid)

    async def heads() -> tuple[int, int]:
        return (await fr.fetchval("SELECT head FROM syncd.node"), await cs.fetchval("SELECT head FROM syncd.node"))
    before = await heads()
    await asyncio.sleep(3.0)  # several sequencer turns and pushes/pulls
    assert await heads() == before, "the logs kept moving"
    # nothing of the member came back down to its home
    assert await fr.fetchval("SELECT count(*) FROM syncd.log WHERE id = $1 AND received_from IS NOT NULL", mid) == 0
