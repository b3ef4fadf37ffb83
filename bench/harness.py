"""What every scenario shares: the cluster, the tree of real nodes, rows, timing, results.

The cluster is one embedded PostgreSQL (``syncd.store.embedded``) started once per run
with :data:`SETTINGS`; the ceilings and syncd use the same cluster and settings.  A tree
is built exactly as the integration tests build it (``tests.tree``: every node on its own
database cloned from a migrated template, ``init_node``, real :class:`syncd.node.Node`
objects in this process, HTTP on loopback), reusing ``tests.pg``/``tests.tree``.
"""
from __future__ import annotations

import asyncio
import os
import csv
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import asyncpg

from syncd.store.embedded import EmbeddedPostgres
from syncd.store.sequencer import Sequencer
from tests.pg import Cluster
from tests.tree import HASH_KEY, TREE_TUNING, Tree

#: One set of settings for the ceilings and for syncd (printed beside the results).
SETTINGS = {
    "shared_buffers": "256MB",
    "max_connections": "1200",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "work_mem": "4MB",
}
#: ``python -m bench --statements N``: PostgreSQL's totals per statement (execution and planning,
#: nested statements too: trigger and foreign-key queries) for each scenario; the module costs
#: some CPU of its own, so such a run's timings are not comparable with a plain run's
STATEMENTS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all",
              "pg_stat_statements.track_planning": "on", "pg_stat_statements.max": "10000"}
SHOWN = ("server_version", "shared_buffers", "fsync", "synchronous_commit", "full_page_writes",
         "wal_level", "max_wal_size", "work_mem", "max_connections", "checkpoint_timeout")

#: The parent refuses a second instance of a child for ``pull_wait_s + 5`` s after its
#: last request (DUPLICATE_INSTANCE); a stopped node stays down at least this long.
DOWN_AT_LEAST_S = 7.5


@dataclass(frozen=True)
class Size:
    name: str
    rows: int  # ceilings and catch-up: member rows
    updates: int  # batched UPDATE ceiling and update catch-up
    capture_rows: int  # capture overhead, 1k-row transactions
    capture_single: int  # capture overhead, 1-row transactions
    samples: int  # live latency samples per phase
    probe_rate: float  # probe writes per second
    load_rate: float  # background rows per second under load
    scale_cities: int | None  # None: the whole of Hunan
    scale_counties_per_city: int | None
    fanin_rows: int  # rows per city in the fan-in
    signins: int  # sign-ins per county in the plenary burst
    profile_rows: int


SIZES = {
    "tiny": Size("tiny", 1_000, 300, 2_000, 200, 50, 50, 100, 2, 1, 200, 5, 500),
    "small": Size("small", 20_000, 5_000, 10_000, 1_000, 1_000, 50, 1_000, 3, 4, 1_000, 10, 5_000),
    "full": Size("full", 100_000, 20_000, 20_000, 2_000, 10_000, 100, 5_000, None, None, 2_000, 20, 20_000),
}


@dataclass
class Result:
    scenario: str
    measure: str
    value: float
    unit: str
    ceiling: str | None = None  # the ceiling measure the ratio is taken against
    ratio: float | None = None
    goal: str | None = None
    ok: bool | None = None  # None: no goal

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


@dataclass
class Run:
    """State shared by the scenarios of one run."""

    size: Size
    cluster: "BenchCluster"
    results: list[Result] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # ceiling name -> rows/s
    extra: dict[str, Any] = field(default_factory=dict)  # profile, notes, per-scenario details

    def add(self, scenario: str, measure: str, value: float, unit: str, *args: Any, **kw: Any) -> Result:
        r = Result(scenario, measure, float(value), unit, *args, **kw)
        self.results.append(r)
        return r

    def ratio_to(self, ceiling: str, rate: float) -> float | None:
        base = self.rates.get(ceiling)
        return rate / base if base else None


class BenchCluster(Cluster):
    """``tests.pg.Cluster`` with the bench's settings instead of the throwaway test ones."""

    def __init__(self, base: Path, settings: dict[str, str]) -> None:  # noqa: D107 - no super(): other settings
        self.pg = EmbeddedPostgres(base / "cluster", settings=dict(settings))
        self._template_ready = False

    async def show(self) -> dict[str, str]:
        async with self.connect() as conn:
            return {k: await conn.fetchval(f"SHOW {k}") for k in SHOWN}

    async def checkpoint(self) -> None:
        async with self.connect() as conn:
            await conn.execute("CHECKPOINT")

    async def reset_statements(self) -> None:
        """Start ``pg_stat_statements``' totals afresh (the cluster runs with :data:`STATEMENTS`)."""
        async with self.connect() as conn:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")

    async def top_statements(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` statements PostgreSQL spent most time in since the last reset, each summed
        over the databases that ran it (the nodes' databases are gone by now; their entries
        stay), the bench's creating and dropping of databases, its checkpoints and its own use of
        the view left out.  A statement planned but failed or interrupted while running has
        planning time and no calls (pg_stat_statements counts each phase when it ends)."""
        async with self.connect() as conn:
            recs = await conn.fetch(
                "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 400) AS query, count(DISTINCT dbid) AS databases, "
                "sum(calls)::bigint AS calls, sum(rows)::bigint AS rows, sum(total_exec_time) AS exec_ms, "
                "sum(total_plan_time) AS plan_ms FROM pg_stat_statements "
                "WHERE query !~* '^\\s*((CREATE|DROP) DATABASE|CHECKPOINT)' "  # the bench's own set-up
                # and its reading of the view: this very query, planned, shows with no calls yet
                "AND query !~ 'pg_stat_statements' GROUP BY 1 "
                # an entry made at parse time and never planned or run has no time (and no calls)
                "HAVING sum(total_exec_time + total_plan_time) > 0 "
                "ORDER BY sum(total_exec_time + total_plan_time) DESC LIMIT $1", n)
        return [{**dict(r), "exec_ms": round(r["exec_ms"], 1), "plan_ms": round(r["plan_ms"], 1)} for r in recs]


# ---------------------------------------------------------------- trees

def hunan(cities: int | None = None, counties_per_city: int | None = None) -> dict[str, tuple[str, str, str | None]]:
    """The Hunan tree from ``syncd/data/hunan_divisions.csv`` (all 137, or the first cities/counties)."""
    text = resources.files("syncd.data").joinpath("hunan_divisions.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    out: dict[str, tuple[str, str, str | None]] = {}
    kept_cities: list[str] = []
    per_city: dict[str, int] = {}
    for r in rows:
        code, parent = r["code"], r["parent_code"] or None
        if r["level"] == "province":
            out[code] = (r["name"], "province", None)
        elif r["level"] == "city":
            if cities is None or len(kept_cities) < cities:
                kept_cities.append(code)
                out[code] = (r["name"], "city", parent)
        elif parent in kept_cities:
            n = per_city.get(parent, 0)
            if counties_per_city is None or n < counties_per_city:
                per_city[parent] = n + 1
                out[code] = (r["name"], "county", parent)
    return out


def chain() -> dict[str, tuple[str, str, str | None]]:
    """湖南省 → 长沙市 → 芙蓉区, 岳麓区 (catch-up and latency)."""
    full = hunan()
    return {c: full[c] for c in ("430000", "430100", "430102", "430104")}


def sequencer_interval_ms() -> int:
    """The sequencer's safety-net poll the bench's nodes run with: ``BENCH_SEQUENCER_INTERVAL_MS``,
    else the tests' 50 ms (``tests.tree``; every run since the bench began), not the shipped
    1 s.  A node is woken by NOTIFY either way; on this VM the busier 50 ms poll still made
    every step of an idle sample ~5-10 % faster, the application's own commit too — a
    CPU wake-up effect, not a missed notification (README, Benchmarks, session 6)."""
    raw = os.environ.get("BENCH_SEQUENCER_INTERVAL_MS")
    return int(raw) if raw else int(TREE_TUNING["sequencer_interval_ms"])


async def build_tree(cluster: BenchCluster, tree: dict[str, tuple[str, str, str | None]],
                     before_start: Callable[[Tree], Awaitable[None]] | None = None,
                     **tuning: Any) -> Tree:
    """``tests.tree.Tree.setup`` with a hook between creating the databases and starting the
    nodes; the tests' tuning, the sequencer interval :func:`sequencer_interval_ms` unless
    ``tuning`` names one."""
    tuning.setdefault("sequencer_interval_ms", sequencer_interval_ms())
    t = await Tree(cluster, tree, tuning=tuning).prepare()
    if before_start is not None:
        await before_start(t)
    await t.start_all()
    return t


async def drain_offline(t: Tree, code: str) -> int:
    """Version a stopped node's captures into its log (what its sequencer does with the link down)."""
    from syncd.config import Secret

    return await Sequencer(me=code, id_hash_key=Secret("h1", HASH_KEY)).drain(t.db(code))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> float:
    """Poll ``check`` until true; return the seconds it took (raise TimeoutError after ``timeout``)."""
    start = time.perf_counter()
    deadline = start + timeout
    while True:
        if await check():
            return time.perf_counter() - start
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not reached within {timeout:.0f} s")
        await asyncio.sleep(interval)


async def count(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    return int(await conn.fetchval(sql, *args))


SEEN_SQL = """
CREATE OR REPLACE FUNCTION public.bench_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_seen', NEW.id::text); RETURN NULL; END $$;
CREATE TRIGGER bench_seen_members AFTER INSERT ON members FOR EACH ROW
    WHEN (NEW.work_unit = 'probe') EXECUTE FUNCTION public.bench_seen();
CREATE TRIGGER bench_seen_attendance AFTER INSERT ON attendance FOR EACH ROW
    WHEN (NEW.sign_in_method = '扫码') EXECUTE FUNCTION public.bench_seen();
"""


class Arrivals:
    """Times at which probe rows become visible (committed) at a node.

    A bench-only row trigger on the observed node's ``members`` (``work_unit = 'probe'``) and
    ``attendance`` (``sign_in_method = '扫码'``) sends ``NOTIFY bench_seen, id``; PostgreSQL
    delivers it at commit, so the arrival time is when the row became visible there.
    """

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.conn: asyncpg.Connection | None = None
        self.changed = asyncio.Event()

    async def attach(self, dsn: str) -> "Arrivals":
        self.conn = await asyncpg.connect(dsn)
        await self.conn.add_listener("bench_seen", self._on)
        return self

    def _on(self, _c: Any, _pid: int, _ch: str, payload: str) -> None:
        self.seen.setdefault(payload, time.perf_counter())
        self.changed.set()

    async def wait_for(self, ids: Sequence[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not all(i in self.seen for i in ids) and time.perf_counter() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                break

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


def percentile(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


# ---------------------------------------------------------------- rows

MEMBER_COLS = ("id", "org_code", "name", "gender", "ethnicity", "birth_month", "id_card_no", "mobile",
               "address", "party", "sector_code", "work_unit", "title", "role", "term", "special_committee",
               "status")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国红梅志强晓东海燕玉兰春花立新"
_PARTIES = ("中国共产党", "中国国民党革命委员会", "中国民主同盟", "中国民主建国会", "无党派人士", "九三学社")
_UNITS = ("湖南师范大学文学院", "长沙市第一中学", "湖南省人民医院心血管内科", "中联重科股份有限公司",
          "芙蓉区人民法院", "湖南大学土木工程学院", "长沙银行股份有限公司芙蓉支行")


def member_rows(org_code: str, n: int, seed: int, start: int = 0) -> list[tuple[Any, ...]]:
    """``n`` realistic member rows of ``org_code`` (~300 bytes each on disk), ids client-made."""
    rnd = random.Random(seed)
    out = []
    for i in range(start, start + n):
        name = rnd.choice(_SURNAMES) + "".join(rnd.choice(_GIVEN) for _ in range(rnd.randint(1, 2)))
        out.append((
            uuid.UUID(int=rnd.getrandbits(128), version=4), org_code, name, rnd.choice(("男", "女")),
            "汉族", f"{rnd.randint(1950, 1995)}-{rnd.randint(1, 12):02d}",
            f"{org_code}{rnd.randint(1950, 1995)}{i:08d}",  # unique per i: UNIQUE (org_code, id_card_no)
            f"13{rnd.randint(0, 999_999_999):09d}",
            f"湖南省长沙市芙蓉区五一大道{rnd.randint(1, 999)}号{rnd.randint(1, 30)}栋{rnd.randint(101, 2505)}室",
            rnd.choice(_PARTIES), "JJ", rnd.choice(_UNITS), "教授、博士生导师、副院长", "委员", "第十三届",
            "提案委员会", "在任"))
    return out


_TYPES = ("uuid", *["text"] * (len(MEMBER_COLS) - 1))
INSERT_MEMBERS = (
    "INSERT INTO {table} ({cols}) SELECT * FROM unnest(" +
    ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES)) + ")")


async def insert_members(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]], per_txn: int = 1000,
                         table: str = "members") -> None:
    """Insert ``rows`` with one multi-row INSERT per ``per_txn``-row transaction (autocommit)."""
    sql = INSERT_MEMBERS.format(table=table, cols=", ".join(MEMBER_COLS))
    for i in range(0, len(rows), per_txn):
        chunk = rows[i:i + per_txn]
        await conn.execute(sql, *[list(col) for col in zip(*chunk)])


async def update_members(conn: asyncpg.Connection, ids: Sequence[uuid.UUID], value: str, per_txn: int = 1000,
                         table: str = "members") -> None:
    """``UPDATE … SET work_unit, title`` of ``ids``, ``per_txn`` rows per statement/transaction."""
    for i in range(0, len(ids), per_txn):
        await conn.execute(f"UPDATE {table} SET work_unit = $1, title = $2 WHERE id = ANY($3::uuid[])",
                           value, value + "职务", list(ids[i:i + per_txn]))


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *_: Any) -> None:
        self.s = time.perf_counter() - self.t0
