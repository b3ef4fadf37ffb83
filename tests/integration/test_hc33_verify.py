"""HC-33: ``verify`` runs at a child over its own link; ``history`` shows what a node knows.

Real tree (430000 → 430100 (430102, 430104), 430600 (430602)), real HTTP, real databases.
A row is changed "behind syncd's back" the project's own way: a transaction with
``SET LOCAL syncd.applying = 'on'`` (the setting syncd's apply uses, under which the capture
and check triggers stand aside) — nothing is captured, so nothing replicates.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from syncd.verify_run import Verifier, VerifyOptions, VerifyReport
from tests.integration.test_cli_ops import one_line_error, syncd, write_toml
from tests.tree import Tree, eventually

pytestmark = pytest.mark.timeout(240)

FAST = VerifyOptions(wait_s=15.0)


async def verify_from(t: Tree, code: str, options: VerifyOptions = FAST) -> VerifyReport:
    """Run verify at ``code`` over its daemon's own (signed HTTP) link."""
    node = t.nodes[code]
    assert node.links is not None and node.cfg.parent is not None
    return await Verifier(t.db(code), node.links.link, code, node.cfg.parent.id, node.topo_ref.topo,
                          options=options, id_hash_key=node.cfg.node.id_hash_key).run()


async def bypass(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """Run ``sql`` with capture bypassed (as syncd's own apply does)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL syncd.applying = 'on'")
        await conn.execute(sql, *args)


async def at(t: Tree, code: str, table: str, row_id: uuid.UUID) -> None:
    await eventually(lambda: t.db(code).fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", row_id), 40)


async def seed(t: Tree) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A county member with personal data (which never leaves 芙蓉区), a second one, and a
    province activity with the member's attendance; returns (member, other member, activity)."""
    await t.settled()
    fr, prov = t.db("430102"), t.db("430000")
    mid = await fr.fetchval("INSERT INTO members (org_code, name, id_card_no, mobile, work_unit) VALUES "
                            "('430102', '核对委员', '430102198801011234', '13900001111', '芙蓉区政协') RETURNING id")
    other = await fr.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '另一委员') RETURNING id")
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '全体会议', '核对会议', now()) RETURNING id")
    await at(t, "430102", "activities", act)
    aid = await fr.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                            "VALUES ('430102', $1, $2, '出席') RETURNING id", act, mid)
    for code in ("430100", "430000"):
        await at(t, code, "members", other)
        await at(t, code, "attendance", aid)
    return mid, other, act


def named(report: VerifyReport) -> set[tuple[str, uuid.UUID | None]]:
    return {(d.table, d.row_id) for d in report.differences}


async def test_hc33_verify_agrees_on_a_converged_tree_and_names_rows_changed_at_the_parent(tree: Tree) -> None:
    mid, other, _ = await seed(tree)
    report = await verify_from(tree, "430102")
    assert report.differences == [], [d.as_dict() for d in report.differences]
    members = next(t for t in report.tables if t.table == "members")
    assert members.rows_here == members.rows_parent >= 2  # the county's members are compared …
    assert report.settled and report.parent_position > 0
    # … but not their personal columns, which only 芙蓉区 holds (a column compared would differ)
    assert await tree.db("430100").fetchval("SELECT mobile FROM members WHERE id = $1", mid) is None

    city = tree.db("430100")
    await bypass(city, "UPDATE members SET work_unit = '被改动的单位' WHERE id = $1", mid)
    await bypass(city, "DELETE FROM members WHERE id = $1", other)
    report = await verify_from(tree, "430102", VerifyOptions(wait_s=5.0, rechecks=1))
    assert named(report) == {("members", mid), ("members", other)}, [d.as_dict() for d in report.differences]
    by_id = {d.row_id: d for d in report.differences}
    changed = by_id[mid]
    assert changed.kind == "differs" and [c.column for c in changed.columns] == ["work_unit"]
    assert changed.columns[0].parent == changed.columns[0].here and not changed.columns[0].same_value
    assert "capture bypassed" in changed.columns[0].what
    assert "empty at the parent" in by_id[other].detail
    assert report.rechecked == 1 and report.settled
    # nothing of the values is in the report (it can be pasted anywhere, HC-15)
    assert "被改动的单位" not in json.dumps(report.as_dict(), ensure_ascii=False)

    # the other county's link shares none of these rows: it agrees
    other_county = await verify_from(tree, "430104", VerifyOptions(wait_s=5.0, tables=("members",)))
    assert other_county.differences == []


async def test_hc33_verify_cli_names_a_row_changed_at_the_child(tree: Tree, tmp_path: Path) -> None:
    mid, _, act = await seed(tree)
    fr_toml = write_toml(tree, "430102", tmp_path)
    rc, out, err = await syncd("verify", "--config", fr_toml, "--wait", "10")
    assert rc == 0, out + err
    assert "no difference" in out and "settled" in out and "Traceback" not in err

    await bypass(tree.db("430102"), "UPDATE activities SET title = '县里私改' WHERE id = $1", act)
    rc, out, err = await syncd("verify", "--config", fr_toml, "--wait", "5", "--json")
    assert rc == 1, out + err
    rep = json.loads(out)
    assert rep["agree"] is False and rep["differences"] == 1
    diff = next(d for t in rep["tables"] for d in t["differences"])
    assert (diff["table"], diff["row_id"], diff["kind"]) == ("activities", str(act), "differs")
    assert [c["column"] for c in diff["columns"]] == ["title"]
    rc, out, _ = await syncd("verify", "--config", fr_toml, "--wait", "5", "--table", "activities")
    assert rc == 1 and f"activities {act} differs" in out and "title" in out

    prov_toml = write_toml(tree, "430000", tmp_path)  # the root has no parent: a one-line error
    rc, _, err = await syncd("verify", "--config", prov_toml)
    assert rc == 1
    one_line_error(err, "no parent")
    rc, _, err = await syncd("verify", "--config", fr_toml, "--table", "no_such_table")
    assert rc == 2
    one_line_error(err, "no_such_table")
    await tree.stop("430100")  # the parent is down: one line, not a traceback
    rc, _, err = await syncd("verify", "--config", fr_toml, "--table", "members")
    assert rc == 1
    one_line_error(err, "verify with parent 430100 failed: UNREACHABLE")


async def test_hc33_verify_agrees_while_writes_run(tree: Tree) -> None:
    await seed(tree)
    fr, prov = [await asyncpg.connect(tree.dsns[c]) for c in ("430102", "430000")]  # verify uses tree.db
    stop = asyncio.Event()

    async def write(conn: asyncpg.Connection, org: str, table: str) -> int:
        n = 0
        while not stop.is_set():
            if table == "members":
                await conn.execute("INSERT INTO members (org_code, name) VALUES ($1, $2)", org, f"并发{n}")
            else:
                await conn.execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                                   "VALUES ($1, '视察', $2, now())", org, f"并发{n}")
            n += 1
            await asyncio.sleep(0.05)
        return n

    writers = [asyncio.create_task(write(fr, "430102", "members")),
               asyncio.create_task(write(prov, "430000", "activities"))]
    try:
        await asyncio.sleep(1.0)
        report = await verify_from(tree, "430102", VerifyOptions(wait_s=20.0, rechecks=3))
    finally:
        stop.set()
        written = await asyncio.gather(*writers)
        await fr.close()
        await prov.close()
    assert min(written) > 10  # the writes really ran during the verify
    assert report.differences == [], [d.as_dict() for d in report.differences]


async def test_hc33_history_shows_a_rows_changes_across_levels_with_the_winner(tree: Tree, tmp_path: Path) -> None:
    mid, _, _ = await seed(tree)
    fr, city, prov = tree.db("430102"), tree.db("430100"), tree.db("430000")
    aid = await fr.fetchval("SELECT id FROM attendance WHERE member_id = $1", mid)
    await fr.execute("UPDATE attendance SET status = '请假' WHERE id = $1", aid)
    await eventually(lambda: prov.fetchval("SELECT status = '请假' FROM attendance WHERE id = $1", aid), 40)
    await prov.execute("UPDATE attendance SET status = '缺席' WHERE id = $1", aid)  # the organiser, later: it wins
    for conn in (city, fr):
        await eventually(lambda c=conn: c.fetchval("SELECT status = '缺席' FROM attendance WHERE id = $1", aid), 40)

    city_toml, fr_toml = write_toml(tree, "430100", tmp_path), write_toml(tree, "430102", tmp_path)
    rc, out, err = await syncd("history", "attendance", str(aid), "--config", city_toml, "--json")
    assert rc == 0, err
    h = json.loads(out)
    logged = [e for e in h["entries"] if e["stage"] == "logged"]
    assert [(e["op"], e["origin"], e["received_from"]) for e in logged] == [
        ("I", "430102", "430102"), ("U", "430102", "430102"), ("U", "430000", "430000")], logged
    status = [(e["origin"], c["value"], c["won"]) for e in logged for c in e["columns"] if c["column"] == "status"]
    assert status == [("430102", "出席", False), ("430102", "请假", False), ("430000", "缺席", True)]
    assert h["current"]["columns"]["status"]["value"] == "缺席"
    assert h["current"]["columns"]["status"]["version"][4] == "430000"
    assert all(e["time"].endswith("Z") and e["pos"] > 0 for e in logged)
    assert "leave_reason" not in {c["column"] for e in logged for c in e["columns"]}  # stays at home
    assert "cannot be shown" in h["note"]

    rc, out, err = await syncd("history", "attendance", str(aid), "--config", fr_toml)  # at the home, as text
    assert rc == 0, err
    lines = out.splitlines()
    assert any("written here" in ln for ln in lines) and any("origin 430000 from 430100" in ln for ln in lines)
    won = [ln for ln in lines if ln.strip().startswith("status") and ln.rstrip().endswith("WON")]
    assert len(won) == 1 and "缺席" in won[0] and "430000]" in won[0]
    assert "never left the node that wrote them" in out and "Traceback" not in err

    # a change that has not left 芙蓉区 is shown there (on its way into the log) and nowhere else
    await tree.stop("430102")
    await fr.execute("UPDATE attendance SET spoke = true WHERE id = $1", aid)
    rc, out, _ = await syncd("history", "attendance", str(aid), "--config", fr_toml, "--json")
    assert any(e["stage"] == "captured" and [c["column"] for c in e["columns"]] == ["spoke"]
               for e in json.loads(out)["entries"])
    rc, out, _ = await syncd("history", "attendance", str(aid), "--config", city_toml, "--json")
    assert not any(c["column"] == "spoke" and c["value"] for e in json.loads(out)["entries"] for c in e["columns"])

    rc, _, err = await syncd("history", "attendance", str(aid), "--config", write_toml(tree, "430104", tmp_path))
    assert rc == 1  # 岳麓区 never held the row
    one_line_error(err, "not known at node 430104")
    rc, _, err = await syncd("history", "attendance", "not-a-uuid", "--config", city_toml)
    assert rc == 2
    one_line_error(err, "not a row id")
