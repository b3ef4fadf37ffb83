"""Catch-up through one hop, daemon memory while rows stream, and a profile of the path.

Tree 湖南省 → 长沙市 → 芙蓉区, real nodes over HTTP on loopback.  Pinned (HC-36): the city
has a parent (relay on) and its ``members`` table is populated — N rows of its own, written
before the nodes start and replicated to the province before the measurement.

Link down = 芙蓉区's daemon stopped (``Node.stop``).  While it is down the application writes
N member rows (1k-row transactions) and the county's sequencer versions them into its log
(``Sequencer.drain``, what the running daemon does with the link down; timed separately).
Then the daemon starts and the clock runs until 长沙市's table holds every row; the
province's copy (second hop, via the city's relay) is timed too.  The same again for U
updates of those rows.  A third, smaller catch-up runs under cProfile (all nodes run in
this process, so the profile covers push, HTTP, apply, relay and the sequencers).

The insert catch-up runs once more with every node its own ``syncd run`` process (a
deployment's shape: a daemon per server; ``tests.faults.daemons``): the rate, and the CPU
each daemon spent per 1k rows — where a caught-up row's Python goes, node by node (the
relaying city, the province applying the second hop, the county sending).  On this
machine the three daemons and PostgreSQL share two cores.

Memory: the nodes run in this process, so "daemon RSS" is this process's RSS (psutil),
sampled every 50 ms during the insert catch-up (PostgreSQL's backends are not included).
"""
from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import os
import pstats
import time
from typing import Any

import psutil

from bench.harness import (DOWN_AT_LEAST_S, HASH_KEY, Run, Tree, build_tree, chain, count, drain_offline,
                           insert_members, member_rows, update_members, wait_until)
from syncd.config import Secret
from syncd.store.sequencer import Sequencer
from tests.faults.daemons import DaemonTree
from tests.tree import TREE_TUNING

SCENARIO = "catchup"
#: the checkout syncd runs from (a worktree too), cut from profile entries
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"
GOAL = "≥ 0.15× single COPY (aim 0.45×)"
#: how often the bench counts the rows arrived: a count over the populated table costs
#: PostgreSQL ~4 ms, so polling every 50 ms took ~8 % of a core from the nodes measured
POLL_S = 0.2
#: the tests' tuning for daemon processes, the shipped sequencer interval (a safety-net poll)
DAEMON_TUNING = {k: v for k, v in TREE_TUNING.items() if k != "sequencer_interval_ms"}


class RssSampler:
    """Peak resident memory of a process (this one unless ``pid``), sampled every 50 ms."""

    def __init__(self, pid: int | None = None) -> None:
        self.proc = psutil.Process(pid or os.getpid())
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.peak = self.proc.memory_info().rss
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak


class CpuMeter:
    """CPU seconds spent by this process (every node's Python) and by the cluster's
    PostgreSQL processes (backends, walwriter, checkpointer …) between start and stop.
    A backend that exits in between loses its share (the pools keep theirs open).
    Also the cyclic garbage collector's runs in this process and their time (``gc_runs``,
    ``gc_s``): at the young-generation threshold of 50,000 a catch-up collected once a batch,
    ~9 % of its Python (``syncd.node.GC_GEN0_THRESHOLD``)."""

    def __init__(self, cluster: Any) -> None:
        pid_file = cluster.pg.pgdata / "postmaster.pid"
        self.postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        self.me = psutil.Process(os.getpid())
        self.gc_runs, self.gc_s, self._gc_t0 = 0, 0.0, 0.0
        self.kinds: dict[int, str] = {}  # PostgreSQL pid -> what it is (its process title)
        self.pg_by_kind: dict[str, float] = {}

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_runs += 1
            self.gc_s += time.perf_counter() - self._gc_t0

    def _pg(self) -> dict[int, float]:
        out = {}
        for p in [self.postmaster, *self.postmaster.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
                if p.pid not in self.kinds:
                    self.kinds[p.pid] = _pg_kind(p)
            except psutil.Error:
                pass
        return out

    def _py(self) -> float:
        t = self.me.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        self.py0, self.pg0 = self._py(), self._pg()
        gc.callbacks.append(self._on_gc)

    def stop(self) -> tuple[float, float]:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        py, pg = self._py() - self.py0, self._pg()
        self.pg_by_kind = {}
        for pid, v in pg.items():
            kind = self.kinds.get(pid, "backend")
            self.pg_by_kind[kind] = self.pg_by_kind.get(kind, 0.0) + v - self.pg0.get(pid, 0.0)
        return py, sum(v - self.pg0.get(pid, 0.0) for pid, v in pg.items())

    def pg_kinds_text(self, per: int) -> str:
        """PostgreSQL's CPU by process kind, seconds per ``per`` thousand rows (what moved a run's
        total: a checkpoint beside the backends doing syncd's statements; an autovacuum worker
        that exited before :meth:`stop` is not in it, :func:`autovacuums` counts those)."""
        return ", ".join(f"{k} {v / per:.3f}" for k, v in sorted(self.pg_by_kind.items(), key=lambda kv: -kv[1])
                         if v >= 0.0005 * per)


async def autovacuums(conns: list[Any]) -> int:
    """Autovacuum and autoanalyze runs so far on the tables of the databases of ``conns``."""
    total = 0
    for c in conns:
        total += await c.fetchval("SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint "
                                  "FROM pg_stat_all_tables")
    return total


def _pg_kind(p: psutil.Process) -> str:
    """A PostgreSQL process's kind from its title ("postgres: autovacuum worker db", …)."""
    try:
        title = " ".join(p.cmdline())
    except psutil.Error:
        return "backend"
    for kind in ("autovacuum", "checkpointer", "walwriter", "background writer", "walsummarizer", "logger"):
        if kind in title:
            return kind
    return "backend" if "postgres:" in title else "postmaster"


async def _offline(r: Run, t: Tree, write: Any, label: str) -> float:
    """Stop the county, run ``write``, version its captures offline; return when it may restart."""
    await t.stop("430102")
    down = time.perf_counter()
    await write()
    start = time.perf_counter()
    logged = await drain_offline(t, "430102")
    secs = time.perf_counter() - start
    r.add(SCENARIO, f"{label}: county sequencer versions captures into its log (offline)", logged / secs,
          "changes/s")
    await asyncio.sleep(max(0.0, DOWN_AT_LEAST_S - (time.perf_counter() - down)))
    await r.cluster.checkpoint()
    return secs


async def _restart_until(t: Tree, check: Any, timeout: float) -> float:
    t0 = time.perf_counter()
    await t.start("430102")
    await wait_until(check, timeout, POLL_S)
    return time.perf_counter() - t0


def _profile_rows(prof: cProfile.Profile, wall_s: float, top: int = 40) -> dict[str, Any]:
    st = pstats.Stats(prof, stream=io.StringIO())
    entries = []
    for (file, line, name), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = file
        for marker in ("site-packages/", _ROOT):
            if marker in file:
                short = file.split(marker, 1)[1]
        entries.append({"function": f"{short}:{line}({name})", "ncalls": nc, "tottime_s": round(tt, 4),
                        "cumtime_s": round(ct, 4)})
    by_tot = sorted(entries, key=lambda e: -e["tottime_s"])[:top]
    syncd = sorted((e for e in entries if e["function"].startswith(("syncd/", "asyncpg/connection.py",
                                                                    "json/", "aiohttp/"))),
                   key=lambda e: -e["cumtime_s"])[:top]
    total = sum(e["tottime_s"] for e in entries)
    idle = sum(e["tottime_s"] for e in entries if "select.epoll" in e["function"] or "poll" in e["function"]
               and "built-in" in e["function"])
    return {"wall_s": round(wall_s, 3), "profiled_s": round(total, 3), "waiting_in_poll_s": round(idle, 3),
            "top_tottime": by_tot, "top_cumtime_syncd": syncd}


async def run(r: Run) -> None:
    n, u, p = r.size.rows, r.size.updates, r.size.profile_rows
    tree = {k: v for k, v in chain().items() if k != "430104"}
    timeout = max(180.0, n / 100)

    async def seed(t: Tree) -> None:
        await insert_members(t.db("430100"), member_rows("430100", n, seed=21))

    t = await build_tree(r.cluster, tree, before_start=seed)
    try:
        prov, city, county = t.db("430000"), t.db("430100"), t.db("430102")
        t0 = time.perf_counter()
        await wait_until(lambda: _has(prov, "430100", n), timeout, 0.2)
        warm = time.perf_counter() - t0
        r.add(SCENARIO, f"warm-up: city's own {n} rows version + reach the province (root, no relay)",
              n / warm, "rows/s", "copy_single", r.ratio_to("copy_single", n / warm))
        # the county's first-start snapshot (the tree's bootstrap) is over before the clock runs:
        # a catch-up is measured, not a catch-up beside a bootstrap
        await t.settled(timeout)

        rows = member_rows("430102", n, seed=22)
        last = rows[-1][0]
        await _offline(r, t, lambda: insert_members(county, rows), "insert")
        rss = RssSampler()
        rss.start()
        base = rss.peak
        cpu = CpuMeter(r.cluster)
        vacuums = await autovacuums([prov, city, county])
        cpu.start()
        t0 = time.perf_counter()
        await t.start("430102")
        await wait_until(lambda: _has(city, "430102", n, last), timeout, POLL_S)
        secs = time.perf_counter() - t0
        py_s, pg_s = cpu.stop()
        peak = await rss.stop()
        rate = n / secs
        ratio = r.ratio_to("copy_single", rate)
        r.add(SCENARIO, f"{n} inserts → city (relay on, populated table)", rate, "rows/s", "copy_single", ratio,
              GOAL, None if ratio is None else ratio >= 0.15)
        # where the time went while the city caught up (the province's hop runs meanwhile too)
        r.add(SCENARIO, "  CPU while the city caught up: Python (all nodes, one process)", py_s / secs * 100, "% of a core")
        r.add(SCENARIO, "  CPU while the city caught up: PostgreSQL (all backends)", pg_s / secs * 100, "% of a core")
        r.add(SCENARIO, "  CPU per 1k rows: Python / PostgreSQL", py_s / n * 1000, f"s / {pg_s / n * 1000:.2f} s")
        r.add(SCENARIO, "  Python's garbage collector meanwhile: time in it / runs", cpu.gc_s, f"s / {cpu.gc_runs}")
        r.add(SCENARIO, "  PostgreSQL meanwhile: CPU per 1k rows by process kind; autovacuum runs", cpu.pg_by_kind.get(
            "backend", 0.0) / n * 1000, f"s ({cpu.pg_kinds_text(n // 1000 or 1)}); "
            f"{await autovacuums([prov, city, county]) - vacuums} autovacuum/analyze runs")
        await wait_until(lambda: _has(prov, "430102", n, last), timeout, POLL_S)
        two = time.perf_counter() - t0
        r.add(SCENARIO, f"{n} inserts → province (two hops, via the city's relay)", n / two, "rows/s",
              "copy_single", r.ratio_to("copy_single", n / two))
        r.add("memory", f"process RSS before catch-up (3 nodes in-process)", base / 2**20, "MiB")
        r.add("memory", f"peak process RSS while {n} rows stream through a hop", peak / 2**20, "MiB")
        r.add("memory", "RSS growth during the catch-up", (peak - base) / 2**20, "MiB")

        ids = [x[0] for x in rows[:u]]
        value = "湖南省政协机关"
        await _offline(r, t, lambda: update_members(county, ids, value), "update")
        secs = await _restart_until(
            t, lambda: _updated(city, value, u, ids[-1]), timeout)
        rate = u / secs
        ratio = r.ratio_to("copy_single", rate)
        r.add(SCENARIO, f"{u} updates → city", rate, "rows/s", "copy_single", ratio, GOAL,
              None if ratio is None else ratio >= 0.15)
        if r.rates.get("update_batched"):
            r.add(SCENARIO, f"{u} updates → city vs batched UPDATE ceiling", rate / r.rates["update_batched"],
                  "×", "update_batched", rate / r.rates["update_batched"])

        more = member_rows("430102", p, seed=23, start=n)
        await _offline(r, t, lambda: insert_members(county, more), "profiled insert")
        prof = cProfile.Profile()
        prof.enable()
        try:
            secs = await _restart_until(t, lambda: _has(city, "430102", n + p, more[-1][0]), timeout)
        finally:
            prof.disable()
        r.add(SCENARIO, f"{p} inserts → city under cProfile (profiling slows it)", p / secs, "rows/s")
        r.extra["profile_catchup"] = {"rows": p, **_profile_rows(prof, secs)}
        r.extra["catchup_counts"] = {
            "city_log": await count(city, "SELECT count(*) FROM syncd.log"),
            "city_rowver": await count(city, "SELECT count(*) FROM syncd.rowver"),
            "city_quarantine": await count(city, "SELECT count(*) FROM syncd.quarantine"),
            "city_parked": await count(city, "SELECT count(*) FROM syncd.parked"),
        }
    finally:
        await t.close()
    await _as_processes(r, tree, n, timeout)


def process_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` so far."""
    t = proc.cpu_times()
    return t.user + t.system


async def _as_processes(r: Run, tree: dict[str, tuple[str, str, str | None]], n: int, timeout: float) -> None:
    """The insert catch-up again, every node its own daemon process (see the module's text)."""
    t = await DaemonTree(r.cluster, tree, tuning=DAEMON_TUNING).setup()
    try:
        prov, city, county = t.db("430000"), t.db("430100"), t.db("430102")
        await insert_members(city, member_rows("430100", n, seed=21))
        await t.start_all()
        await wait_until(lambda: _has(prov, "430100", n), timeout, 0.2)
        await asyncio.sleep(2.0)  # the county's first-start snapshot is over
        await t.daemons["430102"].stop()
        down = time.perf_counter()
        rows = member_rows("430102", n, seed=22)
        last = rows[-1][0]
        await insert_members(county, rows)
        await Sequencer(me="430102", id_hash_key=Secret("h1", HASH_KEY)).drain(county)
        await asyncio.sleep(max(0.0, DOWN_AT_LEAST_S - (time.perf_counter() - down)))
        await r.cluster.checkpoint()
        cpu = CpuMeter(r.cluster)
        vacuums = await autovacuums([prov, city, county])
        cpu.start()
        procs = {c: psutil.Process(d.proc.pid) for c, d in t.daemons.items() if d.proc and d.proc.returncode is None}
        before = {c: process_cpu_s(p) for c, p in procs.items()}
        await t.daemons["430102"].start()
        # the clock starts at the county's first /healthz: an interpreter's start-up is not the
        # catch-up (the in-process nodes pay none); its first push follows its hello after that
        t0 = time.perf_counter()
        procs["430102"] = psutil.Process(t.daemons["430102"].proc.pid)  # type: ignore[union-attr]
        before["430102"] = process_cpu_s(procs["430102"])
        await wait_until(lambda: _has(city, "430102", n, last), timeout, POLL_S)
        secs = time.perf_counter() - t0
        await wait_until(lambda: _has(prov, "430102", n, last), timeout, POLL_S)  # the CPU of both hops
        spent = {c: process_cpu_s(p) - before[c] for c, p in procs.items()}
        _, pg_s = cpu.stop()
        rate = n / secs
        ratio = r.ratio_to("copy_single", rate)
        r.add(SCENARIO, f"{n} inserts → city, every node its own daemon process", rate, "rows/s", "copy_single",
              ratio, GOAL, None if ratio is None else ratio >= 0.15)
        names = {"430102": "county (sends)", "430100": "city (applies, relays)", "430000": "province (applies)"}
        for code in ("430102", "430100", "430000"):  # until the province has them too: both hops
            r.add(SCENARIO, f"  CPU per 1k rows, both hops: daemon {code} {names[code]}", spent[code] / n * 1000, "s")
        vacuums = await autovacuums([prov, city, county]) - vacuums
        r.add(SCENARIO, "  CPU per 1k rows, both hops: PostgreSQL (all processes)", pg_s / n * 1000,
              f"s ({cpu.pg_kinds_text(n // 1000 or 1)}); {vacuums} autovacuum/analyze runs")
        r.extra["catchup_processes"] = {"rows": n, "seconds": round(secs, 3),
                                        "cpu_s_per_1k": {c: round(v / n * 1000, 4) for c, v in spent.items()},
                                        "postgresql_cpu_s_per_1k": round(pg_s / n * 1000, 4),
                                        "postgresql_by_kind_s_per_1k": {k: round(v / n * 1000, 4)
                                                                        for k, v in cpu.pg_by_kind.items()},
                                        "autovacuum_runs": vacuums}
    finally:
        await t.close()


async def _has(conn: Any, org: str, n: int, last: Any = None) -> bool:
    """``n`` rows of ``org`` are there; with ``last`` (the id written last) that row is asked
    for first, by its key: a count(*) at every poll cost the city ~5 ms of PostgreSQL's CPU,
    ~5 % of what a catch-up's rows cost it (rows arrive in the order written, so the count is
    taken once the last one is there, and again until it holds)."""
    if last is not None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM members WHERE id = $1)", last):
        return False
    return await count(conn, "SELECT count(*) FROM members WHERE org_code = $1", org) >= n


async def _updated(conn: Any, value: str, n: int, last: Any = None) -> bool:
    """``n`` rows carry ``value``; ``last`` first, as in :func:`_has`."""
    if last is not None and not await conn.fetchval("SELECT work_unit = $2 FROM members WHERE id = $1", last, value):
        return False
    return await count(conn, "SELECT count(*) FROM members WHERE work_unit = $1", value) >= n
