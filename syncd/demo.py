"""``syncd demo``: a real Hunan subtree of nodes syncing over HTTP on loopback.

Starts embedded PostgreSQL, creates one database per committee of the chosen
subtree (by default 湖南省 + 长沙市 + 岳阳市 and all their 县市区), runs every node as
a real daemon on its own loopback port, seeds realistic synthetic data, and tells
a short story with checks printed as it goes.  ``--once`` exits after the story
(non-zero if any check failed); otherwise the tree stays up until Ctrl-C.
"""
from __future__ import annotations

import asyncio
import csv
import random
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg

from syncd.config import Config, parse_config
from syncd.node import Node
from syncd.store.db import ensure_database
from syncd.store.embedded import EmbeddedPostgres
from syncd.store.migrate import init_node
from syncd.store.sequencer import Sequencer

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志红文辉宇鹏晨欣怡浩然子涵思远海燕春梅"
PARTIES = ["中共", "民革", "民盟", "民建", "民进", "农工党", "致公党", "九三学社", "无党派"]
SECTORS = [("JJ", "经济界", 21), ("JY", "教育界", 23), ("YW", "医药卫生界", 26), ("NY", "农业界", 22),
           ("KJ", "科学技术界", 19), ("WY", "文化艺术界", 18)]
UNITS = ["湖南大学", "中南大学", "湘雅医院", "市第一中学", "县人民医院", "农业科学院", "长沙银行", "湖南日报社"]


def divisions() -> list[tuple[str, str, str, str | None]]:
    """(code, name, level, parent) of the real Hunan tree shipped with syncd."""
    text = resources.files("syncd.data").joinpath("hunan_divisions.csv").read_text(encoding="utf-8")
    return [(r["code"], r["name"], r["level"], r["parent_code"] or None) for r in csv.DictReader(text.splitlines())]


def subtree(cities: list[str] | None) -> dict[str, tuple[str, str, str | None]]:
    """The province plus the given cities (all if None) and all their counties."""
    rows = divisions()
    keep = {c for c, _, lv, _ in rows if lv == "city" and (cities is None or c in cities)}
    return {c: (n, lv, p) for c, n, lv, p in rows if lv == "province" or c in keep or p in keep}


def person(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


def demo_secret(child: str) -> str:
    return f"demo-link-secret-{child}-please-change"


def demo_config(code: str, tree: dict[str, tuple[str, str, str | None]], parent_port: int | None) -> Config:
    name, _, parent = tree[code]
    data: dict[str, Any] = {
        "node": {"id": code, "name": name, "listen": "127.0.0.1:0", "dsn": "embedded",
                 "id_hash_key": "demo-id-hash-key-issued-by-province"},
        "children": [{"id": c, "secret": demo_secret(c)} for c, (_, _, p) in tree.items() if p == code],
        "tuning": {"sequencer_interval_ms": 100, "pull_wait_s": 5.0, "retry_cap_s": 2.0, "failed_probe_s": 5.0},
        "log": {"format": "json", "level": "error"},
    }
    if parent is not None:
        data["parent"] = {"id": parent, "url": f"http://127.0.0.1:{parent_port}", "secret": demo_secret(code)}
    return parse_config(data)


@dataclass
class Demo:
    data_dir: Path
    cities: list[str] | None = field(default_factory=lambda: ["430100", "430600"])
    seed: int = 2026
    tree: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    pg: EmbeddedPostgres | None = None
    dsns: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    failures: int = 0

    def say(self, text: str) -> None:
        print(text, flush=True)

    def check(self, ok: bool, text: str) -> None:
        self.say(f"  [{'ok' if ok else 'FAIL'}] {text}")
        self.failures += 0 if ok else 1

    def root(self) -> str:
        return next(c for c, (_, _, p) in self.tree.items() if p is None)

    def order(self) -> list[str]:
        depth = {c: 0 for c in self.tree}
        for c in self.tree:
            p = self.tree[c][2]
            while p is not None:
                depth[c] += 1
                p = self.tree[p][2]
        return sorted(self.tree, key=lambda c: (depth[c], c))

    async def setup(self) -> None:
        self.tree = subtree(self.cities)
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.pg = EmbeddedPostgres(self.data_dir / "pg", settings={"max_connections": "600"}).start()
        self.say(f"embedded PostgreSQL on 127.0.0.1:{self.pg.port}; {len(self.tree)} committees")
        for i, code in enumerate(self.order()):
            await ensure_database(self.pg.dsn(), f"zxy_{code}")
            self.dsns[code] = self.pg.dsn(f"zxy_{code}")
            conn = await asyncpg.connect(self.dsns[code])
            try:
                await init_node(conn, code)
                await Sequencer(me=code).drain(conn)
            finally:
                await conn.close()
            print(f"\r  initialised {i + 1}/{len(self.tree)} node databases", end="", flush=True)
        print()
        root = await asyncpg.connect(self.dsns[self.root()])
        try:
            await root.executemany(
                "INSERT INTO committees (org_code, code, name, level, parent_code) VALUES ($1, $2, $3, $4, $5)",
                [(self.root(), c, n, lv, p) for c, (n, lv, p) in self.tree.items()])
        finally:
            await root.close()

    async def start_node(self, code: str) -> Node:
        parent = self.tree[code][2]
        port = self.nodes[parent].port if parent else None
        node = await Node(demo_config(code, self.tree, port), self.dsns[code]).start()
        self.nodes[code] = node
        return node

    async def start_all(self) -> None:
        for code in self.order():
            await self.start_node(code)
        self.say(f"{len(self.nodes)} daemons running; dashboard of the province: "
                 f"http://127.0.0.1:{self.nodes[self.root()].port}/")

    async def seed_data(self) -> None:
        rng = random.Random(self.seed)
        for i, (code, (name, level, _)) in enumerate(sorted(self.tree.items())):
            conn = await asyncpg.connect(self.dsns[code])
            try:
                n = {"province": 60, "city": 30, "county": 15}[level]
                await conn.executemany(
                    "INSERT INTO sectors (org_code, code, name, national_code) VALUES ($1, $2, $3, $4)",
                    [(code, *s) for s in SECTORS])
                await conn.executemany(
                    "INSERT INTO members (org_code, name, gender, birth_month, id_card_no, mobile, party, "
                    "sector_code, work_unit, title, term) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,'十三届')",
                    [(code, person(rng), rng.choice("男女"), f"{rng.randint(1960, 1990)}-{rng.randint(1, 12):02d}",
                      f"{code}{rng.randint(1960, 1990)}{rng.randint(10000000, 99999999)}",
                      f"138{rng.randint(10000000, 99999999)}", rng.choice(PARTIES), rng.choice(SECTORS)[0],
                      rng.choice(UNITS), rng.choice(["委员", "常委"])) for _ in range(n)])
                await conn.execute(
                    "INSERT INTO proposals (org_code, term, session, seq, title, proposer_id, status, submitted_at) "
                    "SELECT $1, 13, 4, row_number() OVER (), '关于' || name || '所提问题的建议', id, "
                    "(ARRAY['已提交','立案','交办','已答复'])[1 + (row_number() OVER ()) % 4], now() "
                    "FROM members WHERE org_code = $1 LIMIT 5", code)
            finally:
                await conn.close()
            print(f"\r  seeded {i + 1}/{len(self.tree)} committees", end="", flush=True)
        print()

    async def wait_for(self, what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60) -> bool:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if await check():
                self.check(True, f"{what} ({time.monotonic() - t0:.1f}s)")
                return True
            await asyncio.sleep(0.2)
        self.check(False, f"{what} (not within {timeout:.0f}s)")
        return False

    async def count(self, code: str, sql: str, *args: Any) -> int:
        conn = await asyncpg.connect(self.dsns[code])
        try:
            return int(await conn.fetchval(sql, *args))
        finally:
            await conn.close()

    async def execute(self, code: str, sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsns[code])
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def story(self) -> None:
        root = self.root()
        counties = [c for c, (_, lv, _) in self.tree.items() if lv == "county"]
        fr = "430102" if "430102" in self.tree else counties[0]
        self.say("\n1. every committee's members roll up to the province (without ID numbers or mobiles)")
        expected = sum({"province": 60, "city": 30, "county": 15}[lv] for _, lv, _ in self.tree.values())
        await self.wait_for(f"{expected} members visible at {self.tree[root][0]}",
                            lambda: self._eq(root, "SELECT count(*) FROM members", expected), 120)
        leaked = await self.count(root, "SELECT count(*) FROM members WHERE org_code <> $1 AND "
                                        "(id_card_no IS NOT NULL OR mobile IS NOT NULL)", root)
        self.check(leaked == 0, "no ID number or mobile of another committee's member at the province")
        self.say(f"\n2. {self.tree[fr][0]} adds a member → visible at the province")
        mid = await self.execute(fr, "INSERT INTO members (org_code, name, work_unit) VALUES ($1, '新委员', '芙蓉路小学') "
                                     "RETURNING id", fr)
        await self.wait_for("the new member is at the province",
                            lambda: self._eq(root, "SELECT count(*) FROM members WHERE id = $1", 1, mid))
        self.say("\n3. the province publishes a plenary → every county has it")
        act = await self.execute(root, "INSERT INTO activities (org_code, kind, title, starts_at, half_days) VALUES "
                                       "($1, '全体会议', '省政协十三届四次会议', now(), 4) RETURNING id", root)
        async def everywhere() -> bool:
            return all([await self.count(c, "SELECT count(*) FROM activities WHERE id = $1", act) == 1
                        for c in counties])
        await self.wait_for(f"the plenary is at all {len(counties)} counties", everywhere)
        att = await self.execute(fr, "INSERT INTO attendance (org_code, activity_id, member_id, status) "
                                     "VALUES ($1, $2, $3, '出席') RETURNING id", fr, act, mid)
        await self.wait_for("the sign-in reached the province",
                            lambda: self._eq(root, "SELECT count(*) FROM attendance WHERE id = $1", 1, att))
        self.say(f"\n4. {self.tree[fr][0]} goes offline, keeps working, comes back and catches up;"
                 " meanwhile both it and the province change the same sign-in")
        await self.nodes.pop(fr).stop()
        await self.execute(fr, "UPDATE attendance SET status = '请假' WHERE id = $1 RETURNING id", att)
        await self.execute(root, "UPDATE attendance SET status = '缺席' WHERE id = $1 RETURNING id", att)
        for i in range(20):
            await self.execute(fr, "INSERT INTO micro_suggestions (org_code, member_id, title) VALUES ($1, $2, $3) "
                                   "RETURNING id", fr, mid, f"离线期间的微建议{i}")
        await self.start_node(fr)
        await self.wait_for("20 micro-suggestions written offline reached the province",
                            lambda: self._eq(root, "SELECT count(*) FROM micro_suggestions WHERE org_code = $1",
                                             20, fr))
        city = self.tree[fr][2]
        assert city is not None

        async def one_winner() -> bool:
            values = set()
            for code in (fr, city, root):
                conn = await asyncpg.connect(self.dsns[code])
                try:
                    values.add(await conn.fetchval("SELECT status FROM attendance WHERE id = $1", att))
                finally:
                    await conn.close()
            return len(values) == 1
        await self.wait_for("the concurrently edited sign-in has one value at county, city and province", one_winner)
        await self.wait_for("the conflict is recorded at the province (syncd conflicts)",
                            lambda: self._eq(root, "SELECT count(*) FROM syncd.conflicts WHERE row_id = $1", 1, att))

    async def _eq(self, code: str, sql: str, expected: int, *args: Any) -> bool:
        return await self.count(code, sql, *args) == expected

    async def close(self) -> None:
        for code in self.order()[::-1]:
            if code in self.nodes:
                await self.nodes.pop(code).stop()
        if self.pg is not None:
            self.pg.stop()


async def run_demo(data_dir: Path, once: bool, topology: str) -> int:
    demo = Demo(data_dir, cities=None if topology == "hunan" else ["430100", "430600"])
    try:
        await demo.setup()
        await demo.start_all()
        await demo.seed_data()
        await demo.story()
        print(f"\ndemo story: {'all checks passed' if demo.failures == 0 else f'{demo.failures} check(s) FAILED'}")
        if not once:
            print("the tree stays up; Ctrl-C to stop")
            await asyncio.Event().wait()
    finally:
        await demo.close()
    return 0 if demo.failures == 0 else 1
