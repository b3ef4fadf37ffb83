"""Issue 6: a new county joins a running tree; SIGKILLed mid-snapshot, it resumes (HC-22, HC-35).

湖南省 and 长沙市 run (subprocess daemons) with 3,000 活动 between them; 芙蓉区 starts for the
first time behind a slow link (a fault proxy adding latency, so the snapshot takes
seconds) and loads its snapshot in 100-row chunks.  While it loads, its ``/status`` shows
the progress; once part of ``activities`` is in, the daemon gets a real SIGKILL.  On
restart the snapshot resumes where the last committed chunk left it:

* the tables finished before the kill are not fetched again, and ``activities`` is
  fetched from the stored ``after_id`` on — both read from the audit of what crossed the
  link (``snapshot <table> (<after>, <next>]`` rows at the city, HC-15);
* at most the two chunks in flight when the daemon died (the one merging and the next,
  asked for while it merged) are sent twice;
* status says how many rows were resumed, and the county converges with the tree.
"""
from __future__ import annotations

import asyncio
import re
from typing import AsyncIterator

import pytest

from tests.faults.daemons import DaemonTree, assert_no_duplicates, config_toml, wait_until
from tests.faults.proxy import TcpProxy
from tests.pg import Cluster

pytestmark = pytest.mark.timeout(180)

PROVINCE, CITY, COUNTY = "430000", "430100", "430102"
CHUNK = 100
PER_LEVEL = 1500  # 活动 at the province and at the city: 3,000 reach the county


@pytest.fixture
async def dtree(cluster: Cluster) -> AsyncIterator[DaemonTree]:
    t = DaemonTree(cluster, tuning={"batch_max_changes": CHUNK})
    try:
        await t.setup()
        yield t
    finally:
        await t.close()


async def _seed(t: DaemonTree) -> None:
    for code in (PROVINCE, CITY):
        await t.db(code).execute(
            "INSERT INTO activities (org_code, kind, title, starts_at) "
            "SELECT $1, '视察', $1 || '视察' || g, now() FROM generate_series(1, $2) g", code, PER_LEVEL)


async def _snapshot_state(t: DaemonTree) -> dict:
    st = await t.daemons[COUNTY].status()
    return next(ln for ln in st["links"] if ln["direction"] == "parent")["snapshot"] or {}


def _chunks_sent(rows: list, table: str) -> list[tuple[str, str, int]]:
    """(after, next, rows) of every snapshot chunk of ``table`` in audit rows."""
    out = []
    for r in rows:
        m = re.fullmatch(rf"snapshot {table} \((\S+), (\S+)\]", r["batch_id"] or "")
        if m:
            out.append((m.group(1), m.group(2), r["changes"]))
    return out


async def test_issue6_new_county_killed_mid_snapshot_resumes_not_restarts(dtree: DaemonTree) -> None:
    t = dtree
    await _seed(t)
    await t.daemons[PROVINCE].start()
    await t.daemons[CITY].start()

    async def city_ready() -> bool | str:
        n = await t.db(CITY).fetchval("SELECT count(*) FROM activities")
        return n == 2 * PER_LEVEL or f"city holds {n} activities"
    await wait_until(city_ready, 60)

    # the county joins the running tree through a slow link
    proxy = await TcpProxy("127.0.0.1", t.daemons[CITY].port).start()
    d = t.daemons[COUNTY]
    d.config.write_text(config_toml(COUNTY, t.tree, t.dsns[COUNTY], d.port, proxy.url, t.tuning))
    proxy.latency(0.05)
    try:
        await d.start()
        seen_loading: list[dict] = []

        async def partly_loaded() -> bool | str:
            snap = await _snapshot_state(t)
            if snap.get("state") == "loading":
                seen_loading.append(snap)
            return (snap.get("state") == "loading" and snap["tables"].get("activities", 0) >= 5 * CHUNK) or str(snap)
        await wait_until(partly_loaded, 60, 0.05)
        await d.kill()  # SIGKILL, wherever the loop is
        shown = seen_loading[-1]
        assert shown["position"] and shown["chunks"] >= 5 and shown["resumed_rows"] == 0, shown
    finally:
        await proxy.close()

    county, city = t.db(COUNTY), t.db(CITY)
    saved = {r["tbl"]: r for r in await county.fetch("SELECT * FROM syncd.snapshot_progress WHERE peer = $1", CITY)}
    assert saved["committees"]["done"] and not saved["activities"]["done"], saved
    kept = saved["activities"]["rows"]
    assert kept >= 5 * CHUNK and await county.fetchval("SELECT count(*) FROM activities") >= kept
    first_run = await city.fetchval("SELECT max(id) FROM syncd.audit")
    first_chunks = _chunks_sent(await city.fetch(
        "SELECT * FROM syncd.audit WHERE peer = $1 AND direction = 'sent' ORDER BY id", COUNTY), "activities")

    # restart: a direct link now
    d.config.write_text(config_toml(COUNTY, t.tree, t.dsns[COUNTY], d.port, t.daemons[CITY].url, t.tuning))
    await d.start()

    async def loaded() -> bool | str:
        snap = await _snapshot_state(t)
        return snap.get("state") == "done" or str(snap)
    await wait_until(loaded, 60)
    done = await _snapshot_state(t)
    assert done["resumed_rows"] >= kept, done

    second = await city.fetch("SELECT * FROM syncd.audit WHERE peer = $1 AND direction = 'sent' AND id > $2 "
                              "AND batch_id LIKE 'snapshot %' ORDER BY id", COUNTY, first_run)
    tables_again = {r["batch_id"].split()[1] for r in second}
    assert "committees" not in tables_again and "sectors" not in tables_again, tables_again
    again = _chunks_sent(second, "activities")
    assert again and again[0][0] == str(saved["activities"]["after_id"]), (again[:2], saved["activities"])
    total = 2 * PER_LEVEL  # the province's and the city's
    sent_rows = sum(n for _, _, n in first_chunks) + sum(n for _, _, n in again)
    assert total <= sent_rows <= total + 2 * CHUNK, (sent_rows, total)  # at most the two in-flight chunks twice
    assert done["chunks"] >= len(second), (done, len(second))  # empty chunks are not audited
    print(f"FIGURES snapshot resume: killed with {kept} of {total} activities committed; resumed from "
          f"{done['resumed_rows']} rows; {sent_rows} activity rows sent in all ({sent_rows - total} twice); "
          f"{len(second)} chunks fetched after the restart")

    # and it takes part in the tree afterwards
    await t.db(PROVINCE).execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                                 "VALUES ('430000', '全体会议', '加入后的全会', now())")
    await t.db(COUNTY).execute("INSERT INTO members (org_code, name) VALUES ('430102', '新县委员')")

    async def converged() -> bool | str:
        acts = [await t.db(c).fetchval("SELECT count(*) FROM activities") for c in (PROVINCE, CITY, COUNTY)]
        mem = await t.db(PROVINCE).fetchval("SELECT count(*) FROM members WHERE name = '新县委员'")
        return (acts == [total + 1] * 3 and mem == 1) or f"activities {acts}, member at province {mem}"
    await wait_until(converged, 60)
    await assert_no_duplicates(t)
    for code in t.tree:
        assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
    assert await county.fetchval("SELECT count(*) FROM syncd.snapshot_progress") == 0
    await asyncio.sleep(0)
