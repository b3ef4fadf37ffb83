"""Crashes: real daemons SIGKILLed at named fault points and at random moments (HC-35, DESIGN §9).

Tree: 430000 湖南省 → 430100 长沙市 → 430102 芙蓉区, each ``syncd run`` a subprocess on its
own database.  The province writes 活动 (reaching every level), the county writes 委员
(reaching up).  After every crash: every row at every node it reaches with the same
values (no change lost), every (origin, row, column, version) at most once in each
node's log (nothing applied twice), and the logs stop growing once converged.

A named point dies *deterministically* where random kills rarely land (between the
merge and the cursor commit, after commit before the reply): ``SYNCD_FAULT`` arms
:func:`syncd.faults.fault_point` in the daemon, which exits 137 there.
``mid_snapshot_chunk`` kills a new county while it loads its snapshot; that a killed
snapshot resumes rather than restarts is ``test_snapshot_resume.py``.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import AsyncIterator

import pytest

from syncd.faults import EXIT_CODE, FAULT_POINTS
from tests.faults.daemons import (DaemonTree, assert_no_duplicates, assert_quiet, converged, wait_until,
                                  write_county, write_province)
from tests.pg import Cluster

pytestmark = pytest.mark.timeout(150)

PROVINCE, CITY, COUNTY = "430000", "430100", "430102"

#: (fault point, daemon armed with it, which apply reaches it first)
CASES = [
    ("after_copy", CITY, "push"),
    ("before_cursor_commit", CITY, "push"),
    ("after_commit_before_response", CITY, "push"),
    ("after_copy", COUNTY, "pull"),
    ("before_cursor_commit", COUNTY, "pull"),
    ("after_pull_apply", COUNTY, "pull"),
    ("before_push_cursor_save", COUNTY, "push"),
    ("mid_snapshot_chunk", COUNTY, "snapshot"),
]

#: Figures for the README's Reliability section (printed with -s).
FIGURES: dict[str, int] = {}


@pytest.fixture
async def dtree(cluster: Cluster) -> AsyncIterator[DaemonTree]:
    t = DaemonTree(cluster)
    try:
        await t.setup()
        yield t
    finally:
        await t.close()


def test_hc35_every_named_fault_point_is_covered() -> None:
    assert {p for p, _, _ in CASES} == set(FAULT_POINTS)


async def _final_checks(t: DaemonTree, timeout: float = 45) -> None:
    await wait_until(lambda: converged(t), timeout)
    await assert_no_duplicates(t)
    await assert_quiet(t)
    for code in t.tree:
        assert await t.db(code).fetchval("SELECT count(*) FROM syncd.quarantine") == 0, code
        assert await t.db(code).fetchval("SELECT count(*) FROM syncd.parked") == 0, code


@pytest.mark.parametrize("point,target,direction", CASES, ids=[f"{p}-{t}-{d}" for p, t, d in CASES])
async def test_hc35_kill_at_named_point_converges_without_duplicates(
        dtree: DaemonTree, point: str, target: str, direction: str) -> None:
    t = dtree
    await write_province(t.db(PROVINCE), 20, "before")
    await write_county(t.db(COUNTY), 20, "before")
    d = t.daemons
    if target == CITY:
        # Province down: the city's only apply is the county's push, so the point is reached there.
        await d[CITY].start(fault=point, wait=False)
        await d[COUNTY].start()
    else:
        await d[PROVINCE].start()
        await d[CITY].start()
        await d[COUNTY].start(fault=point, wait=False)
    if direction == "pull":  # a new county loads a snapshot first: keep changes coming for its pulls
        for i in range(40):
            if d[target].proc is not None and d[target].proc.returncode is not None:
                break
            await write_province(t.db(PROVINCE), 1, f"poke{i}")
            await asyncio.sleep(1.0)
    rc = await d[target].exited(40)
    assert rc == EXIT_CODE, d[target].log_text()[-2000:]
    assert f"fault point {point} reached" in d[target].log_text()
    # writers go on at both ends while the crashed daemon is down
    await write_province(t.db(PROVINCE), 5, "down")
    await write_county(t.db(COUNTY), 5, "down")
    if target == CITY:
        await d[PROVINCE].start()
    await d[target].start()
    await write_province(t.db(PROVINCE), 5, "after")
    await write_county(t.db(COUNTY), 5, "after")
    await _final_checks(t)


@pytest.mark.timeout(360)
async def test_hc35_random_sigkills_while_both_ends_write(dtree: DaemonTree) -> None:
    """≥ 20 SIGKILLs of random daemons at random moments while province and county keep writing."""
    t = dtree
    seed = int(os.environ.get("SYNCD_FAULT_SEED") or time.time())
    rng = random.Random(seed)
    print(f"random kill seed {seed} (SYNCD_FAULT_SEED={seed} to repeat)")
    await t.start_all()
    stop = asyncio.Event()
    written = {PROVINCE: 0, COUNTY: 0}

    async def writer(code: str) -> None:
        conn = await __import__("asyncpg").connect(t.dsns[code])
        try:
            i = 0
            while not stop.is_set() and i < 2000:
                n = rng.randint(1, 5)
                await (write_province if code == PROVINCE else write_county)(conn, n, f"w{i}")
                written[code] += n
                i += 1
                await asyncio.sleep(rng.uniform(0.01, 0.08))
        finally:
            await conn.close()

    writers = [asyncio.create_task(writer(PROVINCE)), asyncio.create_task(writer(COUNTY))]
    kills, deadline = 0, time.monotonic() + 200  # 22 kills take ~60 s idle, 90+ s on a loaded machine
    try:
        while kills < 22 and time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            victim = t.daemons[rng.choice(list(t.tree))]
            await victim.kill()
            kills += 1
            await victim.start()
    finally:
        stop.set()
        await asyncio.gather(*writers)
    FIGURES.update(random_kills=kills, rows_written=sum(written.values()))
    assert kills >= 20
    await _final_checks(t, timeout=60)
    lost = 0
    for home, table in ((PROVINCE, "activities"), (COUNTY, "members")):
        n_home = await t.db(home).fetchval(f"SELECT count(*) FROM {table} WHERE org_code = $1", home)
        for code in t.tree:
            lost += n_home - await t.db(code).fetchval(f"SELECT count(*) FROM {table} WHERE org_code = $1", home)
    FIGURES["rows_lost"] = lost
    print(f"FIGURES {FIGURES}")
    assert lost == 0
