"""What operators see, from real nodes over HTTP (issue 7): /status during a link failure and
after recovery, the province's roll-up, /metrics, /healthz vs /readyz, HC-30 and HC-31.

Tree: 430000 湖南省 → 430100 长沙市 (430102 芙蓉区, 430104 岳麓区), 430600 岳阳市 (430602 岳阳楼区).
A link is cut by stopping the parent node and restarting it on the same port (the child's
config names that URL).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncd.config import Secret
from syncd.node import Node, wire_key_id
from syncd.proto.messages import Push
from syncd.proto.signing import Keyring
from syncd.transport.http import HttpParentLink
from tests.pg import Cluster
from tests.tree import HASH_KEY, SMALL_TREE, Tree, eventually, node_config, secret

pytestmark = pytest.mark.timeout(240)


def base(t: Tree, code: str) -> str:
    return f"http://127.0.0.1:{t.nodes[code].port}"


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async with s.get(url) as r:
            text = await r.text()
            return r.status, (json.loads(text) if r.content_type == "application/json" else text)


async def status(t: Tree, code: str) -> dict[str, Any]:
    code_, body = await get(f"{base(t, code)}/status")
    assert code_ == 200, body
    return body


def parent_link(st: dict[str, Any]) -> dict[str, Any]:
    (ln,) = [ln for ln in st["links"] if ln["direction"] == "parent"]
    return ln


def subtree(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in st["subtree"]}


async def restart_on_port(t: Tree, code: str, port: int) -> Node:
    """Start ``code`` again on the port its children's configs name."""
    parent = t.tree[code][2]
    url = f"http://127.0.0.1:{t.nodes[parent].port}" if parent else None
    cfg = node_config(code, t.tree, url, **t.tuning)
    cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, listen=f"127.0.0.1:{port}"))
    t.nodes[code] = node = await Node(cfg, t.dsns[code]).start()
    return node


async def all_running(t: Tree, code: str) -> bool:
    st = await status(t, code)
    return all(ln["state"] == "running" for ln in st["links"]) and bool(st["links"])


async def test_status_fields_during_parent_link_failure_and_after_recovery(tree: Tree) -> None:
    await eventually(lambda: all_running(tree, "430102"), 30)
    city_port = tree.nodes["430100"].port
    assert city_port is not None
    await tree.stop("430100")
    fr = tree.db("430102")
    await fr.execute("INSERT INTO members (org_code, name) VALUES ('430102', '断线时写入')")

    async def failing() -> dict[str, Any] | None:
        ln = parent_link(await status(tree, "430102"))
        ok = (ln["state"] == "crashing" and ln["consecutive_errors"] >= 1 and ln["last_error"] is not None
              and ln["lag_changes"] >= 1)
        return ln if ok else None
    ln = await eventually(failing, 30)
    assert ln["peer"] == "430100"
    assert ln["last_error"]["code"] == "UNREACHABLE"
    assert ln["last_error"]["hint"] and ln["last_error"]["reason"]
    assert ln["lag_seconds"] > 0 and ln["since"] is not None
    assert set(ln) >= {"peer", "direction", "state", "since", "cursor", "push_cursor", "lag_changes", "lag_seconds",
                       "consecutive_errors", "last_error", "clock_offset_ms", "history"}
    assert any(e["event"] == "crashing" and e["detail"] == "UNREACHABLE" for e in ln["history"])
    # HC-31: a network fault is not a liveness failure
    assert (await get(f"{base(tree, '430102')}/healthz"))[0] == 200
    code, body = await get(f"{base(tree, '430102')}/readyz")
    assert code == 503 and "430100 crashing" in body["reason"]
    own = subtree(await status(tree, "430102"))["430102"]
    assert own["state"] == "degraded" and own["links_down"] == 1

    await restart_on_port(tree, "430100", city_port)

    async def recovered() -> dict[str, Any] | None:
        ln = parent_link(await status(tree, "430102"))
        return ln if ln["state"] == "running" and ln["lag_changes"] == 0 and ln["consecutive_errors"] == 0 else None
    ln = await eventually(recovered, 30)
    events = [e["event"] for e in ln["history"]]
    assert "crashing" in events and events[-1] == "running"
    assert (await get(f"{base(tree, '430102')}/readyz"))[0] == 200
    assert await tree.db("430100").fetchval("SELECT count(*) FROM members WHERE name = '断线时写入'") == 1


async def test_province_rollup_lists_every_node_of_the_tree_with_its_state(tree: Tree) -> None:
    async def rolled_up() -> dict[str, dict[str, Any]] | None:
        nodes = subtree(await status(tree, "430000"))
        return nodes if set(nodes) == set(SMALL_TREE) and all(
            n["state"] == "healthy" for n in nodes.values()) else None
    nodes = await eventually(rolled_up, 40)
    for code, (name, level, parent) in SMALL_TREE.items():
        n = nodes[code]
        assert (n["name"], n["level"], n["parent"]) == (name, level, parent)
        assert n["reported_at"] and n["received_at"]
        for k in ("lag_changes", "conflicts_open", "quarantined", "parked", "links_down"):
            assert isinstance(n[k], int), (code, k, n[k])
    st = await status(tree, "430000")
    assert [n["node"] for n in st["subtree"]][0] == "430000"
    assert st["node"]["id"] == "430000" and st["capture"]["healthy"] is True
    assert {ln["peer"] for ln in st["links"]} == {"430100", "430600"}


async def test_a_daemons_connections_plan_generically_and_hold_the_apply_stage(tree: Tree) -> None:
    """The daemon's statements are written and tested for generic plans (``tests/plans.py``,
    the fast path's and HC-37's plan tests run them so); its connections must run them so.
    Each also holds the apply's stage from the start, outside any transaction (a stage made
    inside the first apply's transaction would vanish with its rollback)."""
    from syncd.node import SERVER_SETTINGS
    from syncd.store import fastpath

    assert SERVER_SETTINGS["plan_cache_mode"] == "force_generic_plan"
    pool = tree.nodes["430100"].pool
    conns = [await pool.acquire() for _ in range(3)]  # more than one connection of the pool
    try:
        for conn in conns:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            assert fastpath._session(conn) in fastpath._PREPARED
            assert await conn.fetchval("SELECT to_regclass('pg_temp.syncd_batch') IS NOT NULL")
    finally:
        for conn in conns:
            await pool.release(conn)


async def test_metrics_parse_with_prometheus_parser_and_follow_the_links(tree: Tree) -> None:
    await eventually(lambda: all_running(tree, "430602"), 30)

    async def families(code: str) -> dict[str, Any]:
        status_, text = await get(f"{base(tree, code)}/metrics")
        assert status_ == 200
        return {f.name: f for f in text_string_to_metric_families(text)}

    fams = await families("430602")
    for name in ("syncd_changes_captured", "syncd_changes_sent", "syncd_apply_seconds", "syncd_link_lag_changes",
                 "syncd_conflicts_open", "syncd_link_up", "syncd_quarantined", "syncd_parked",
                 "syncd_log_position", "syncd_capture_healthy", "syncd_subtree_nodes"):
        assert name in fams, name

    def value(fams: dict[str, Any], name: str, **labels: str) -> float:
        (s,) = [s for s in fams[name].samples if s.name == name and all(s.labels.get(k) == v
                                                                       for k, v in labels.items())]
        return float(s.value)

    assert value(fams, "syncd_link_up", peer="430600", direction="parent") == 1
    assert value(fams, "syncd_capture_healthy") == 1

    # the replication path's counters move: a member written at the county is captured and
    # sent there, and applied in a pushed batch at the city
    def total(fams: dict[str, Any], family: str, **labels: str) -> float:
        return sum(float(s.value) for s in fams[family].samples if s.name == family + "_total"
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    before = await families("430602")
    await tree.db("430602").execute("INSERT INTO members (org_code, name) VALUES ('430602', '计数委员')")

    async def counted() -> bool:
        county, city = await families("430602"), await families("430600")
        return (total(county, "syncd_changes_captured") > total(before, "syncd_changes_captured")
                and total(county, "syncd_changes_sent", peer="430600") > total(before, "syncd_changes_sent", peer="430600")
                and total(city, "syncd_changes_applied", peer="430602") >= 1
                and total(city, "syncd_batches", peer="430602", kind="push") >= 1
                and sum(float(x.value) for x in city["syncd_apply_seconds"].samples
                        if x.name == "syncd_apply_seconds_count") >= 1)
    await eventually(counted, 30)
    port = tree.nodes["430600"].port
    assert port is not None
    await tree.stop("430600")

    async def down() -> bool:
        return value(await families("430602"), "syncd_link_up", peer="430600", direction="parent") == 0
    await eventually(down, 30)
    assert total(await families("430602"), "syncd_errors", peer="430600") >= 1  # the failures are counted
    await restart_on_port(tree, "430600", port)


async def test_hc30_cut_city_counties_stale_at_province(tree: Tree) -> None:
    async def reported() -> bool:
        nodes = subtree(await status(tree, "430000"))
        return all(nodes[c]["state"] == "healthy" for c in ("430600", "430602"))
    await eventually(reported, 40)
    await tree.stop("430600")

    async def stale() -> dict[str, dict[str, Any]] | None:
        nodes = subtree(await status(tree, "430000"))
        return nodes if nodes["430600"]["state"] == "stale" and nodes["430602"]["state"] == "stale" else None
    nodes = await eventually(stale, 60, 0.5)
    assert nodes["430602"]["reported_at"] is not None  # "stale since …": the last report is still shown
    assert nodes["430000"]["state"] == "degraded" and nodes["430000"]["links_down"] == 1  # its own link is down
    for code in ("430100", "430102", "430104"):  # the other city's branch stays green
        assert nodes[code]["state"] == "healthy", (code, nodes[code]["state"])
    link = next(ln for ln in (await status(tree, "430000"))["links"] if ln["peer"] == "430600")
    assert link["state"] == "stalled"


def county_link(t: Tree, county: str, to: str) -> HttpParentLink:
    ring = Keyring()
    ring.add(county, wire_key_id(county, "k1"), secret(county))
    return HttpParentLink(f"http://127.0.0.1:{t.nodes[to].port}", county, ring)


def summary(node: str, **kw: Any) -> dict[str, Any]:
    ahead = time.time() + 3600  # later than any real report, so a stored one is not overwritten meanwhile
    from datetime import datetime, timezone
    return {"node": node, "name": node, "level": "county", "parent": "430100", "state": "healthy",
            "reported_at": datetime.fromtimestamp(ahead, timezone.utc).isoformat().replace("+00:00", "Z"),
            "lag_changes": 0, "conflicts_open": 0, "parked": 0, "links_down": 0, **kw}


async def test_hc30_report_about_a_node_outside_the_senders_subtree_is_refused(tree: Tree) -> None:
    await eventually(lambda: all_running(tree, "430104"), 30)
    link = county_link(tree, "430102", "430100")
    try:
        # 芙蓉区 reports about its sibling 岳麓区 (refused) and about itself (accepted: the control)
        await link.push(Push(batch_id=uuid.uuid4(), epoch=0, from_pos=0, to_pos=0, changes=(),
                             summary=(summary("430104", quarantined=999), summary("430102", quarantined=777))))
    finally:
        await link.close()
    cs = tree.db("430100")
    rows = {r["node"]: (r["via"], json.loads(r["summary"])) for r in await cs.fetch(
        "SELECT node, via, summary FROM syncd.subtree_status")}
    assert rows["430102"][1]["quarantined"] == 777  # the sender's own subtree is taken
    assert "430104" not in rows or (rows["430104"][0] == "430104" and rows["430104"][1]["quarantined"] != 999)
    nodes = subtree(await status(tree, "430100"))
    assert nodes["430104"]["quarantined"] != 999


async def test_hc30_county_absent_from_config_shows_missing(tree: Tree) -> None:
    # 开福区 is in the province's committees table, but no daemon runs for it and no config names it
    await tree.db("430000").execute(
        "INSERT INTO committees (org_code, code, name, level, parent_code) "
        "VALUES ('430000', '430105', '开福区', 'county', '430100')")

    async def missing(code: str) -> dict[str, Any] | None:
        n = subtree(await status(tree, code)).get("430105")
        return n if n is not None and n["state"] == "missing" else None
    for code in ("430000", "430100"):  # the committees row travels down to 长沙市 too
        n = await eventually(lambda: missing(code), 30)
        assert n["reported_at"] is None and n["name"] == "开福区" and n["parent"] == "430100"


def toml_for(cfg_code: str, t: Tree, parent_secret: str, listen: str = "127.0.0.1:0", dsn: str | None = None) -> str:
    name, _, parent = t.tree[cfg_code]
    lines = ["[node]", f'id = "{cfg_code}"', f"name = {json.dumps(name, ensure_ascii=False)}",
             f'listen = "{listen}"', f'dsn = "{dsn or t.dsns[cfg_code]}"', f'id_hash_key = "{HASH_KEY}"', ""]
    if parent:
        lines += ["[parent]", f'id = "{parent}"', f'url = "http://127.0.0.1:{t.nodes[parent].port}"',
                  f'secret = "{parent_secret}"', ""]
    lines += ["[tuning]", "sequencer_interval_ms = 50", "pull_wait_s = 2.0", "retry_cap_s = 1.0",
              "failed_probe_s = 2.0", "", "[log]", 'format = "json"', 'level = "info"', ""]
    return "\n".join(lines)


async def test_hc31_after_401_fixing_config_restores_link_without_restart(tree: Tree, tmp_path: Path) -> None:
    """In process: a wrong secret fails the link; the SIGHUP reload path swaps it in."""
    from syncd.reload import reload_from_file

    await tree.stop("430104")
    cfg = node_config("430104", tree.tree, base(tree, "430100"), **tree.tuning)
    assert cfg.parent is not None
    wrong = dataclasses.replace(cfg, parent=dataclasses.replace(
        cfg.parent, secrets=(Secret("k1", "a-rotated-secret-not-yet-here"),)))
    node = tree.nodes["430104"] = await Node(wrong, tree.dsns["430104"]).start()
    ln = await eventually(lambda: _failed_with(tree, "430104", "BAD_SIGNATURE"), 30)
    assert ln["last_error"]["hint"]
    assert (await get(f"{base(tree, '430104')}/healthz"))[0] == 200
    assert (await get(f"{base(tree, '430104')}/readyz"))[0] == 503

    path = tmp_path / "430104.toml"
    # the file as fixed by the operator (dsn as the running node was given it: nothing else changed)
    path.write_text(toml_for("430104", tree, secret("430104"), dsn="unused"), encoding="utf-8")
    res = await reload_from_file(node, path)
    assert res is not None and "parent link" in res.applied and res.needs_restart == []
    await eventually(lambda: all_running(tree, "430104"), 30)
    assert tree.nodes["430104"] is node and (await status(tree, "430104"))["node"]["started_at"] is not None
    assert (await get(f"{base(tree, '430104')}/readyz"))[0] == 200


async def _failed_with(t: Tree, code: str, err: str, url: str | None = None) -> dict[str, Any] | None:
    st = await status(t, code) if url is None else (await get(f"{url}/status"))[1]
    ln = parent_link(st)
    return ln if ln["state"] == "failed" and (ln["last_error"] or {}).get("code") == err else None


async def test_hc31_sighup_reload_heals_a_running_daemon(tree: Tree, tmp_path: Path) -> None:
    """End to end: ``syncd run`` with a wrong secret, the file fixed, ``kill -HUP``, same process recovers."""
    import signal

    await tree.stop("430104")
    path = tmp_path / "430104.toml"
    path.write_text(toml_for("430104", tree, "a-rotated-secret-not-yet-here"), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd.cli", "run", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={**os.environ})
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "running on port" in line, line
        url = f"http://127.0.0.1:{int(line.rsplit(' ', 1)[1])}"

        async def failed() -> dict[str, Any] | None:
            return await _failed_with(tree, "430104", "BAD_SIGNATURE", url)
        await eventually(failed, 30)
        assert (await get(f"{url}/healthz"))[0] == 200 and (await get(f"{url}/readyz"))[0] == 503
        path.write_text(toml_for("430104", tree, secret("430104")), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)

        async def ready() -> bool:
            return (await get(f"{url}/readyz"))[0] == 200
        await eventually(ready, 30)
        assert proc.returncode is None  # the same process: no restart
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
