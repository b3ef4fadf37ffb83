"""Test support for fault tests: real ``syncd run`` daemons as subprocesses, and the
convergence / no-duplicate checks every fault test ends with (HC-35).

Each node gets its database in the session cluster, a TOML config written to a
temp dir (keys as in ``tests/tree.py::node_config``) and a fixed loopback port, so
a daemon can be SIGKILLed and started again at the same address.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.pg import Cluster
from tests.tree import HASH_KEY, secret

#: province → city → county: the shortest chain with a relay in the middle.
CHAIN = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
}
TUNING = {"sequencer_interval_ms": 50, "pull_wait_s": 0.5, "retry_cap_s": 0.5, "failed_probe_s": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_toml(code: str, tree: dict[str, tuple[str, str, str | None]], dsn: str, port: int,
                parent_url: str | None, tuning: dict[str, Any] | None = None) -> str:
    name, _, parent = tree[code]
    lines = ["[node]", f"id = {_toml_value(code)}", f"name = {_toml_value(name)}", f"dsn = {_toml_value(dsn)}",
             f'listen = "127.0.0.1:{port}"', f"id_hash_key = {_toml_value(HASH_KEY)}", ""]
    if parent is not None:
        assert parent_url is not None
        lines += ["[parent]", f"id = {_toml_value(parent)}", f"url = {_toml_value(parent_url)}",
                  f"secret = {_toml_value(secret(code))}", ""]
    for c, (_, _, p) in tree.items():
        if p == code:
            lines += ["[[children]]", f"id = {_toml_value(c)}", f"secret = {_toml_value(secret(c))}", ""]
    lines += ["[tuning]", *(f"{k} = {_toml_value(v)}" for k, v in {**TUNING, **(tuning or {})}.items()), ""]
    lines += ["[log]", 'format = "json"', 'level = "warning"', ""]
    return "\n".join(lines)


@dataclass
class Daemon:
    """One ``python -m syncd.cli run`` process for a node (restartable at the same port)."""

    code: str
    config: Path
    port: int
    logdir: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, fault: str | None = None, wait: bool = True) -> "Daemon":
        assert self.proc is None or self.proc.returncode is not None, f"{self.code} is already running"
        env = {k: v for k, v in os.environ.items() if k != "SYNCD_FAULT"}
        if fault:
            env["SYNCD_FAULT"] = fault
        self.starts += 1
        out = open(self.logdir / f"{self.code}.{self.starts}.log", "wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "syncd.cli", "run", "--config", str(self.config),
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=env)
        finally:
            out.close()
        if wait:
            await self.wait_healthy()
        return self

    def log_text(self, n: int | None = None) -> str:
        p = self.logdir / f"{self.code}.{n or self.starts}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"{self.code} exited {self.proc.returncode}:\n{self.log_text()[-2000:]}")
                try:
                    async with s.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.code} not healthy within {timeout}s:\n{self.log_text()[-2000:]}")

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.url + "/status", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return await r.json()  # type: ignore[no-any-return]

    async def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            self.kills += 1

    async def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                await self.kill()

    async def exited(self, timeout: float) -> int:
        """Wait for the process to end by itself; its return code."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.code} still running after {timeout}s:\n{self.log_text()[-2000:]}") from None


@dataclass
class DaemonTree:
    """A tree of subprocess daemons on databases of the session cluster."""

    cluster: Cluster
    tree: dict[str, tuple[str, str, str | None]] = field(default_factory=lambda: dict(CHAIN))
    tuning: dict[str, Any] = field(default_factory=dict)
    dsns: dict[str, str] = field(default_factory=dict)
    conns: dict[str, asyncpg.Connection] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)
    #: a node's parent URL, when it should differ from the parent daemon's (a proxy)
    parent_url: dict[str, str] = field(default_factory=dict)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="syncd-faults-")))

    async def setup(self) -> "DaemonTree":
        """Databases, committees at the root, configs; no daemon is started."""
        ports = {code: free_port() for code in self.tree}
        for code in self.tree:
            self.dsns[code] = await self.cluster.new_node_db(code, prefix="f")
            self.conns[code] = await asyncpg.connect(self.dsns[code])
        root = self.root
        await self.conns[root].executemany(
            "INSERT INTO committees (org_code, code, name, level, parent_code) VALUES ($1, $2, $3, $4, $5)",
            [(root, c, n, lv, p) for c, (n, lv, p) in self.tree.items()])
        for code, (_, _, parent) in self.tree.items():
            url = self.parent_url.get(code) or (f"http://127.0.0.1:{ports[parent]}" if parent else None)
            path = self.tmp / f"{code}.toml"
            path.write_text(config_toml(code, self.tree, self.dsns[code], ports[code], url, self.tuning))
            self.daemons[code] = Daemon(code, path, ports[code], self.tmp)
        return self

    @property
    def root(self) -> str:
        return next(c for c, (_, _, p) in self.tree.items() if p is None)

    def db(self, code: str) -> asyncpg.Connection:
        return self.conns[code]

    async def start_all(self, faults: dict[str, str] | None = None) -> None:
        for code in self.tree:  # top-down: a child's first hello finds its parent up
            await self.daemons[code].start((faults or {}).get(code))

    async def close(self) -> None:
        for d in self.daemons.values():
            await d.kill()
        for c in self.conns.values():
            await c.close()
        for dsn in self.dsns.values():
            await self.cluster.drop(dsn)


# -- checks -------------------------------------------------------------------------------

#: an entry's columns are ``[plain, other]`` (or, written before that form, one map: syncd.store.log);
#: an entry without columns (a delete) counts as its column ""
DUPLICATES_SQL = """
SELECT origin, tbl, id, col, cl, ts, count(*) AS n
FROM (SELECT origin, tbl, id, cl, ts, k AS col
      FROM syncd.log,
           LATERAL (SELECT CASE WHEN json_typeof(cols) = 'array' THEN (cols -> 0)::jsonb || (cols -> 1)::jsonb
                                ELSE cols::jsonb END AS m) d,
           jsonb_object_keys(CASE WHEN d.m = '{}' THEN '{"":null}'::jsonb ELSE d.m END) k) x
GROUP BY origin, tbl, id, col, cl, ts HAVING count(*) > 1
"""


async def duplicates(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every (origin, row, column, version) logged more than once at this node (HC-35)."""
    return await conn.fetch(DUPLICATES_SQL)


async def rows_of(conn: asyncpg.Connection, table: str, org: str, expr: str) -> dict[Any, Any]:
    """``{id: expr}`` for the rows of ``table`` homed at ``org``."""
    return {r["id"]: r["v"] for r in await conn.fetch(
        f"SELECT id, ({expr})::text AS v FROM {table} WHERE org_code = $1", org)}


#: What each writer writes and where it must arrive: (home, table, compared expression, nodes).
PROVINCE_ROWS = ("430000", "activities", "title || '/' || coalesce(place, '')", ("430000", "430100", "430102"))
COUNTY_ROWS = ("430102", "members", "name || '/' || coalesce(work_unit, '')", ("430102", "430100", "430000"))


async def write_province(conn: asyncpg.Connection, n: int, tag: str) -> None:
    """``n`` new 活动 in one transaction, and a change of place on an older one."""
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO activities (org_code, kind, title, starts_at) VALUES ('430000', '视察', $1, now())",
            [(f"{tag}-{i}",) for i in range(n)])
        await conn.execute("UPDATE activities SET place = $1 WHERE id = (SELECT id FROM activities "
                           "WHERE org_code = '430000' ORDER BY random() LIMIT 1)", f"地点{tag}")


async def write_county(conn: asyncpg.Connection, n: int, tag: str) -> None:
    """``n`` new 委员 in one transaction, and a new work unit for an older one."""
    async with conn.transaction():
        await conn.executemany("INSERT INTO members (org_code, name) VALUES ('430102', $1)",
                               [(f"{tag}-{i}",) for i in range(n)])
        await conn.execute("UPDATE members SET work_unit = $1 WHERE id = (SELECT id FROM members "
                           "WHERE org_code = '430102' ORDER BY random() LIMIT 1)", f"单位{tag}")


async def converged(t: "DaemonTree") -> bool | str:
    """True when every written row is at every node it reaches, with the same values."""
    for home, table, expr, nodes in (PROVINCE_ROWS, COUNTY_ROWS):
        want = await rows_of(t.db(home), table, home, expr)
        for code in nodes:
            got = await rows_of(t.db(code), table, home, expr)
            if got != want:
                missing = len(set(want) - set(got))
                return f"{table} at {code}: {len(got)} rows, {missing} missing, home has {len(want)}"
    return True


async def assert_no_duplicates(t: "DaemonTree") -> None:
    for code in t.tree:
        dups = await duplicates(t.db(code))
        assert not dups, f"{code} logged {len(dups)} versions twice, e.g. {dict(dups[0])}"


async def assert_quiet(t: "DaemonTree", seconds: float = 1.5) -> None:
    """A converged tree stops logging: a second sync moves nothing (cr-sqlite's lesson)."""
    async def heads() -> list[int]:
        return [int(await t.db(c).fetchval("SELECT head FROM syncd.node")) for c in t.tree]
    # late arrivals (a retried batch, a resync) may still settle: the logs must stop within 20 s
    for _ in range(int(20 / seconds)):
        before = await heads()
        await asyncio.sleep(seconds)
        if await heads() == before:
            return
    raise AssertionError("logs still growing after convergence")


async def wait_until(check: Any, timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last is True or (last and not isinstance(last, str)):
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"not converged within {timeout}s: {last}")
