"""The operator commands against a real tree (issue 7): ``status``, ``check``, ``conflicts``,
``resolve``, ``quarantine``, each run as ``python -m syncd.cli`` with a TOML per node.

Every failure must be one line ``syncd: error: …`` plus one ``  hint: …`` line and an exit
code (1 runtime, 2 usage) — never a traceback.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest

from syncd.node import Node
from tests.pg import Cluster
from tests.tree import HASH_KEY, SMALL_TREE, Tree, eventually, node_config, secret

pytestmark = pytest.mark.timeout(240)


def write_toml(t: Tree, code: str, directory: Path, port: int | None = None, dsn: str | None = None) -> Path:
    """The node's config as an operator's file: its dsn, its listen port, its links."""
    name, _, parent = t.tree[code]
    listen = f"127.0.0.1:{port if port is not None else t.nodes[code].port}"
    lines = ["[node]", f'id = "{code}"', f"name = {json.dumps(name, ensure_ascii=False)}", f'listen = "{listen}"',
             f'dsn = "{dsn or t.dsns[code]}"', f'id_hash_key = "{HASH_KEY}"', ""]
    if parent:
        purl = f"http://127.0.0.1:{t.nodes[parent].port}" if parent in t.nodes else "http://127.0.0.1:9"
        lines += ["[parent]", f'id = "{parent}"', f'url = "{purl}"', f'secret = "{secret(code)}"', ""]
    for child, (_, _, p) in t.tree.items():
        if p == code:
            lines += ["[[children]]", f'id = "{child}"', f'secret = "{secret(child)}"', ""]
    lines += ["[log]", 'format = "json"', 'level = "error"', ""]
    path = directory / f"{code}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


async def syncd(*args: str | Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd.cli", *map(str, args), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ})
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 2 and lines[0].startswith("syncd: error: ") and lines[1].startswith("  hint: "), err
    for w in words:
        assert w in err, (w, err)


async def restart_on_port(t: Tree, code: str, port: int) -> None:
    parent = t.tree[code][2]
    url = f"http://127.0.0.1:{t.nodes[parent].port}" if parent else None
    cfg = node_config(code, t.tree, url, **t.tuning)
    cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, listen=f"127.0.0.1:{port}"))
    t.nodes[code] = await Node(cfg, t.dsns[code]).start()


async def test_status_and_check_live_then_link_down_then_daemon_down(tree: Tree, tmp_path: Path) -> None:
    fr = write_toml(tree, "430102", tmp_path)
    port = tree.nodes["430102"].port

    async def checks_ok() -> tuple[int, str, str] | None:
        r = await syncd("check", "--config", fr)
        return r if r[0] == 0 else None
    rc, out, _ = await eventually(checks_ok, 40, 0.5)
    assert out.startswith("ok: node 430102")

    async def knows_its_level() -> tuple[int, str, str] | None:  # once the province's committees rows arrived
        r = await syncd("status", "--config", fr)
        return r if "芙蓉区 430102 (county)" in r[1] else None
    rc, out, err = await eventually(knows_its_level, 30, 0.5)
    assert rc == 0, err
    assert f"source: live http://127.0.0.1:{port}" in out
    assert "LINKS" in out and "SUBTREE" in out and "芙蓉区 430102 (county)" in out
    link_line = next(line for line in out.splitlines() if line.startswith("430100"))
    assert "parent" in link_line and "running" in link_line
    rc, out, _ = await syncd("status", "--url", f"http://127.0.0.1:{port}", "--json")
    st = json.loads(out)
    assert rc == 0 and st["node"]["id"] == "430102" and st["links"][0]["state"] == "running"

    city_port = tree.nodes["430100"].port
    assert city_port is not None
    await tree.stop("430100")

    async def check_fails() -> tuple[int, str, str] | None:
        r = await syncd("check", "--url", f"http://127.0.0.1:{port}")
        return r if r[0] == 1 and "link 430100 (parent) crashing" in r[1] else None
    rc, out, err = await eventually(check_fails, 30, 0.5)
    assert "UNREACHABLE" in out and "hint:" in out and err == ""
    rc, out, _ = await syncd("check", "--config", fr)
    assert rc == 1 and "link 430100 (parent) crashing" in out
    await restart_on_port(tree, "430100", city_port)

    await tree.stop("430102")  # the county's daemon is down: status reads its database
    rc, out, err = await syncd("status", "--config", fr)
    assert rc == 0, err
    assert "source: database (cannot reach" in out and "link states unknown" in out
    assert next(line for line in out.splitlines() if line.startswith("430100")).split()[2] == "unknown"
    rc, out, _ = await syncd("status", "--config", fr, "--json")
    st = json.loads(out)
    assert st["source"] == "database" and st["links"][0]["peer"] == "430100"
    assert [n["node"] for n in st["subtree"]] == ["430102"]
    rc, out, _ = await syncd("check", "--config", fr)
    assert rc == 1 and "daemon: cannot reach" in out


async def _make_conflict(t: Tree) -> str:
    prov, fr = t.db("430000"), t.db("430102")
    act = await prov.fetchval("INSERT INTO activities (org_code, kind, title, starts_at) "
                              "VALUES ('430000', '视察', '联合视察', now()) RETURNING id")
    mid = await fr.fetchval("INSERT INTO members (org_code, name) VALUES ('430102', '韩梅') RETURNING id")
    await eventually(lambda: fr.fetchval("SELECT count(*) FROM activities WHERE id = $1", act))
    aid = await fr.fetchval("INSERT INTO attendance (org_code, activity_id, member_id, status) "
                            "VALUES ('430102', $1, $2, '出席') RETURNING id", act, mid)
    await eventually(lambda: prov.fetchval("SELECT count(*) FROM attendance WHERE id = $1", aid), 30)
    await t.stop("430102")
    await fr.execute("UPDATE attendance SET status = '请假' WHERE id = $1", aid)
    await prov.execute("UPDATE attendance SET status = '缺席' WHERE id = $1", aid)
    await t.start("430102")
    await eventually(lambda: prov.fetchval("SELECT count(*) FROM syncd.conflicts WHERE row_id = $1", aid), 30)
    return str(aid)


async def test_conflicts_and_resolve(tree: Tree, tmp_path: Path) -> None:
    aid = await _make_conflict(tree)
    prov = write_toml(tree, "430000", tmp_path)
    rc, out, err = await syncd("conflicts", "--config", prov, "--json")
    assert rc == 0, err
    (c,) = json.loads(out)
    assert c["table"] == "attendance" and c["row_id"] == aid and c["column"] == "status"
    rc, out, _ = await syncd("conflicts", "--config", prov)
    assert rc == 0 and c["id"][:12] in out and "attendance" in out and "syncd resolve ID" in out

    rc, _, err = await syncd("resolve", "--config", prov, c["id"][:10], "--take", "value", "--value", "出席")
    assert rc == 2
    one_line_error(err, "not JSON")
    rc, _, err = await syncd("resolve", "--config", prov, c["id"][:10], "--take", "value")
    assert rc == 2
    one_line_error(err, "--value is required")
    rc, _, err = await syncd("resolve", "--config", prov, "ffffffffffff", "--take", "local")
    assert rc == 1
    one_line_error(err, "no conflict", "syncd conflicts")
    rc, _, err = await syncd("resolve", "--config", prov, c["id"][:10], "--take", "sideways")
    assert rc == 2
    one_line_error(err, "invalid choice")

    rc, out, err = await syncd("resolve", "--config", prov, c["id"][:10], "--take", "value", "--value", '"出席"')
    assert rc == 0, err
    assert f"resolved {c['id'][:12]}" in out and '"出席"' in out
    rc, out, _ = await syncd("conflicts", "--config", prov, "--json")
    assert json.loads(out) == []
    rc, out, _ = await syncd("conflicts", "--config", prov, "--all", "--json")
    assert json.loads(out)[0]["resolution"] == {"take": "value", "value": "出席"}
    rc, _, err = await syncd("resolve", "--config", prov, c["id"], "--take", "local")
    assert rc == 1
    one_line_error(err, "ALREADY_RESOLVED")

    async def everywhere() -> bool:
        return {await tree.db(n).fetchval("SELECT status FROM attendance WHERE id = $1::uuid", aid)
                for n in ("430000", "430100", "430102")} == {"出席"}
    await eventually(everywhere, 30)


async def test_quarantine_list_and_release(tree: Tree, tmp_path: Path) -> None:
    cs = tree.db("430100")
    await cs.execute("ALTER TABLE members ADD CONSTRAINT vendor_title CHECK (title IS DISTINCT FROM '禁用职务')")
    mid = await tree.db("430102").fetchval(
        "INSERT INTO members (org_code, name, title) VALUES ('430102', '郑和', '禁用职务') RETURNING id")
    await eventually(lambda: cs.fetchval("SELECT count(*) FROM syncd.quarantine WHERE row_id = $1", mid), 30)
    city = write_toml(tree, "430100", tmp_path)
    rc, out, err = await syncd("quarantine", "--config", city, "--json")
    assert rc == 0, err
    (q,) = json.loads(out)
    assert (q["code"], q["table"], q["row_id"], q["peer"], q["op"]) == ("POISON", "members", str(mid), "430102", "I")
    assert "vendor_title" in q["reason"] and "禁用职务" not in out  # identity and cause, no values
    rc, out, _ = await syncd("quarantine", "--config", city)
    assert rc == 0 and "POISON" in out and "syncd quarantine --release ID" in out

    rc, _, err = await syncd("quarantine", "--config", city, "--release", str(q["id"]))
    assert rc == 1
    one_line_error(err, "failed again: POISON")
    assert await cs.fetchval("SELECT count(*) FROM syncd.quarantine") == 1  # kept, not duplicated

    await cs.execute("ALTER TABLE members DROP CONSTRAINT vendor_title")
    rc, out, err = await syncd("quarantine", "--config", city, "--release", str(q["id"]))
    assert rc == 0, err
    assert out.strip() == f"released {q['id']}: applied"
    assert await cs.fetchval("SELECT title FROM members WHERE id = $1", mid) == "禁用职务"
    rc, out, _ = await syncd("quarantine", "--config", city, "--json")
    assert json.loads(out) == []
    rc, _, err = await syncd("quarantine", "--config", city, "--release", str(q["id"]))
    assert rc == 1
    one_line_error(err, "ALREADY_RELEASED")
    rc, _, err = await syncd("quarantine", "--config", city, "--release", "abc")
    assert rc == 2
    one_line_error(err, "invalid int value")
    rc, _, err = await syncd("quarantine", "--config", city, "--release", "999999")
    assert rc == 1
    one_line_error(err, "UNKNOWN_QUARANTINE")


async def test_bad_input_is_one_line_with_a_hint(cluster: Cluster, tmp_path: Path) -> None:
    bare = await cluster.new_database("bare", migrated=False)
    try:
        t = Tree(cluster, {"430102": SMALL_TREE["430102"]})
        t.dsns["430102"] = bare
        cfg = write_toml(t, "430102", tmp_path, port=9, dsn=bare)
        rc, _, err = await syncd("conflicts", "--config", cfg)
        assert rc == 1
        one_line_error(err, "not initialised", "syncd init --config")
    finally:
        await cluster.drop(bare)
    down = write_toml(t, "430102", tmp_path, port=9, dsn="postgresql://nobody@127.0.0.1:9/none")
    rc, _, err = await syncd("quarantine", "--config", down)
    assert rc == 1
    one_line_error(err, "PostgreSQL")
    rc, _, err = await syncd("status", "--url", "http://127.0.0.1:9")
    assert rc == 1
    one_line_error(err, "cannot reach http://127.0.0.1:9")
    rc, _, err = await syncd("check", "--url", "http://127.0.0.1:9")
    assert rc == 1
    one_line_error(err, "cannot reach")
    rc, _, err = await syncd("status")
    assert rc == 2
    one_line_error(err, "--config", "--help")
    rc, _, err = await syncd("conflicts", "--config", tmp_path / "nope.toml")
    assert rc == 2 and "Traceback" not in err and "cannot read" in err
