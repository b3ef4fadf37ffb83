"""Differential test: the set-based SQL fast path of apply decides exactly as merge.decide (issue 5).

Two city databases receive the same random histories from 芙蓉区 — one applying with the fast
path (new rows and fast-forward updates merged in SQL, syncd.store.fastpath), one with every
change through ``merge.decide`` row by row.  After every batch both hold the same rows, the
same versions and the same conflicts, quarantine and parked rows.  Histories mix fast-forward
updates (prev = the version the origin last saw), stale and concurrent ones, deletes and
re-inserts, several changes of one row in a batch, and poison values (a CHECK violation).
"""
from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import asyncpg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from syncd.proto.change import Change, ColumnChange, Version
from syncd.schema.declarations import SCHEMA
from syncd.store.apply import ApplyContext, apply_batch
from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree

COUNTY, CITY = "430102", "430100"
COLUMNS = ("name", "gender", "party", "work_unit")
VALUES = {"name": st.sampled_from(["王芳", "李强", "张伟"]), "gender": st.sampled_from(["男", "女", "未知"]),
          "party": st.sampled_from(["民盟", "九三学社", None]), "work_unit": st.sampled_from(["湖南大学", "中南大学"])}
_POS = itertools.count(1)
_TS = itertools.count(time.time_ns() // 1000 - 10**9, 7)
FAST_ROWS: list[int] = []  # changes the fast path merged, over the whole run


def _ctx(fast: bool) -> ApplyContext:
    return ApplyContext(SCHEMA, CITY, Tree(None, SMALL_TREE).topology, fast_path=fast)  # type: ignore[arg-type]


@st.composite
def histories(draw: Any) -> list[list[Change]]:
    """Batches of changes of two member rows, as 芙蓉区 (and writers it relays) might send them."""
    rows = [uuid.uuid4(), uuid.uuid4()]
    cl = {r: 0 for r in rows}
    seen: dict[tuple[uuid.UUID, str], Version] = {}  # the last version of each column the origin saw
    batches = []
    for _ in range(draw(st.integers(1, 5))):
        batch = []
        for _ in range(draw(st.integers(1, 5))):
            r = draw(st.sampled_from(rows))
            kind = draw(st.sampled_from(["insert", "update", "update", "update", "delete"]))
            ts = next(_TS) + draw(st.sampled_from([0, -3]))  # -3: an older write arriving late
            if kind == "delete" and cl[r] % 2 == 1:
                cl[r] += 1
                batch.append(Change("members", r, COUNTY, "D", cl[r], ts, COUNTY, ts, {"home": COUNTY}, {}))
                continue
            if kind == "insert" or cl[r] % 2 == 0:
                cl[r] += 1 if cl[r] % 2 == 0 else 0
                names = COLUMNS
                op = "I"
            else:
                names = tuple(draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3, unique=True)))
                op = "U"
            cols = {}
            for n in names:
                prev = seen.get((r, n)) if draw(st.integers(0, 3)) else draw(st.sampled_from([None, Version(
                    cl[r], 0, 0, ts - 10**6, COUNTY)]))  # mostly what was seen: a fast-forward
                if prev is not None and prev.cl != cl[r]:
                    prev = None
                if prev is not None and not prev < Version(cl[r], 0, 0, ts, COUNTY):
                    prev = None
                cols[n] = ColumnChange(draw(VALUES[n]), 0, 0, prev)
                seen[(r, n)] = Version(cl[r], 0, 0, ts, COUNTY)
            batch.append(Change("members", r, COUNTY, op, cl[r], ts, COUNTY, ts, {"home": COUNTY}, cols))
        batches.append(batch)
    return batches


def _fast_forwards() -> list[list[Change]]:
    """A history the fast path must take whole: two new rows, then a fast-forward update of
    each (so the comparison below never rests on what the random histories happened to hold)."""
    rows = [uuid.uuid4(), uuid.uuid4()]
    t0 = next(_TS)
    first = [Change("members", r, COUNTY, "I", 1, t0, COUNTY, t0, {"home": COUNTY},
                    {n: ColumnChange("王芳" if n == "name" else None, 0, 0, None) for n in COLUMNS}) for r in rows]
    t1 = next(_TS)
    then = [Change("members", r, COUNTY, "U", 1, t1, COUNTY, t1, {"home": COUNTY},
                   {"work_unit": ColumnChange("中南大学", 0, 0, Version(1, 0, 0, t0, COUNTY))}) for r in rows]
    return [first, then]


async def _state(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[str, Any]:
    return {
        "rows": [dict(r) for r in await conn.fetch(
            "SELECT id, org_code, name, gender, party, work_unit FROM members WHERE id = ANY($1) ORDER BY id", ids)],
        "versions": [dict(r) for r in await conn.fetch(
            "SELECT id, org_code, cl, homes, v::jsonb AS v FROM syncd.rowver WHERE id = ANY($1) ORDER BY id", ids)],
        "conflicts": [dict(r) for r in await conn.fetch(
            "SELECT id, col, winner, loser FROM syncd.conflicts WHERE row_id = ANY($1) ORDER BY id", ids)],
        "quarantine": [r["c"] for r in await conn.fetch(
            "SELECT row_id::text || code AS c FROM syncd.quarantine WHERE row_id = ANY($1) ORDER BY 1", ids)],
        "parked": [r["c"] for r in await conn.fetch(
            "SELECT row_id::text AS c FROM syncd.parked WHERE row_id = ANY($1) ORDER BY 1", ids)],
        "pending": [r["c"] for r in await conn.fetch(
            "SELECT id::text || cl || ts AS c FROM syncd.pending WHERE id = ANY($1) ORDER BY 1", ids)],
    }


async def _run(dsns: tuple[str, str], batches: list[list[Change]]) -> None:
    fast, slow = await asyncpg.connect(dsns[0]), await asyncpg.connect(dsns[1])
    try:
        ids = list({c.id for b in batches for c in b})
        for batch in batches:
            batch = [c.replace(pos=next(_POS)) for c in batch]
            now = time.time_ns() // 1000
            for conn, f in ((fast, True), (slow, False)):
                await apply_batch(conn, _ctx(f), COUNTY, "applied", "from_child", batch, batch[-1].pos, now)
            assert await _state(fast, ids) == await _state(slow, ids)
    finally:
        await fast.close()
        await slow.close()


def test_fast_path_decides_exactly_as_decide(cluster: Cluster) -> None:
    async def make() -> tuple[str, str]:
        return (await cluster.new_node_db(CITY, prefix="fast"), await cluster.new_node_db(CITY, prefix="slow"))
    dsns = asyncio.run(make())
    from syncd.store import apply as apply_mod
    original = apply_mod.apply_fast
    FAST_ROWS.clear()

    async def counted(conn: Any, ctx: Any, changes: Any, *a: Any) -> Any:  # how many the fast path merged
        rest = await original(conn, ctx, changes, *a)
        FAST_ROWS.append(len(changes) - len(rest))
        return rest
    apply_mod.apply_fast = counted  # type: ignore[assignment]

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(histories())
    @example(_fast_forwards())
    def check(batches: list[list[Change]]) -> None:
        asyncio.run(_run(dsns, batches))

    try:
        check()
    finally:
        apply_mod.apply_fast = original
    # the comparison means something only if the fast path took changes: all four of the
    # explicit history, and some of the random ones
    assert sum(FAST_ROWS) >= 6, FAST_ROWS


@st.composite
def snapshot_rows(draw: Any) -> list[Any]:
    """A chunk of member rows as a snapshot carries them: per-column versions from several
    writers and times, some tombstones."""
    from syncd.proto.messages import SnapshotRow

    out = []
    for _ in range(draw(st.integers(1, 6))):
        cl = draw(st.sampled_from([1, 1, 1, 3, 2]))
        cols = {} if cl % 2 == 0 else {
            n: (draw(VALUES[n]), Version(cl, 0, 0, next(_TS) - draw(st.integers(0, 5)), draw(st.sampled_from(
                [COUNTY, "430000"])))) for n in COLUMNS}
        if cols and cols["name"][0] is None:
            continue
        out.append(SnapshotRow(uuid.uuid4(), COUNTY, cl, {"home": COUNTY}, cols))
    return out


def test_snapshot_fast_path_merges_as_merge_states(cluster: Cluster) -> None:
    """New rows of a snapshot chunk are inserted set-based; the result equals merging each
    row with merge_states (the reference path), tombstones and poison values included."""
    from syncd.store.snapshot import merge_chunk

    async def make() -> tuple[str, str]:
        return (await cluster.new_node_db(CITY, prefix="sfast"), await cluster.new_node_db(CITY, prefix="sslow"))
    dsns = asyncio.run(make())
    merged: list[int] = []

    async def run(rows: list[Any]) -> None:
        fast, slow = await asyncpg.connect(dsns[0]), await asyncpg.connect(dsns[1])
        try:
            for conn, f in ((fast, True), (slow, False)):
                async with conn.transaction():
                    await conn.execute("SET LOCAL syncd.applying = 'on'")
                    res = await merge_chunk(conn, _ctx(f), COUNTY, "members", rows)
                    if f:
                        merged.append(res.applied)
            ids = [r.id for r in rows]
            assert await _state(fast, ids) == await _state(slow, ids)
        finally:
            await fast.close()
            await slow.close()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(snapshot_rows())
    def check(rows: list[Any]) -> None:
        asyncio.run(run(rows))
    check()
    assert sum(merged) >= 20, merged


async def test_staged_rows_are_picked_by_a_hash_join_even_in_a_generic_plan(cluster: Cluster) -> None:
    """The fast path's statements pick their batch's staged rows from an unindexed temporary
    table.  ``ord = ANY($1)`` there is a linear search of the array for every staged row once
    PostgreSQL plans the prepared statement generically (a daemon's statements are prepared
    once and run thousands of times): quadratic in the batch.  Every such statement must give
    a plan without it."""
    from syncd.store import fastpath

    dsn = await cluster.new_node_db(CITY, prefix="plan")
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(fastpath._STAGE)
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            picks = {"relay": fastpath._RELAY, "new versions": fastpath._NEW_VERSIONS,
                     "held versions": fastpath._HELD_VERSIONS}
            for name, sql in picks.items():
                await conn.execute(f"PREPARE pick AS {sql}")
                plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE pick('{1,2,3}')"))
                await conn.execute("DEALLOCATE pick")
                assert "ord = ANY" not in plan and "Hash" in plan, (name, plan)
            # ords beside other lists: the fast-forwarded rows' new version maps; the changes
            # logged with their outbox entries
            for sql, args in ((fastpath._SET_VERSIONS, "'{1,2,3}', '{a,b,c}'"),
                              (fastpath._LOG_STAGED, "'{1,2,3}', '{p}', '{1}', 0")):
                await conn.execute(f"PREPARE pick AS {sql}")
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE pick({args})"))
                await conn.execute("DEALLOCATE pick")
                assert "ANY" not in plan and "Hash" in plan, plan
    finally:
        await conn.close()
        await cluster.drop(dsn)
