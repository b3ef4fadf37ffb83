"""Test support: a tree of real nodes, each on its own database, talking HTTP on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg

from syncd.config import Config, parse_config
from syncd.node import Node
from syncd.schema.declarations import Schema
from syncd.store.retention import RESYNC_ALWAYS
from syncd.topology import Topology
from tests.pg import Cluster

#: The replication issue's test tree (names from the Hunan divisions).
SMALL_TREE = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
    "430104": ("岳麓区", "county", "430100"),
    "430600": ("岳阳市", "city", "430000"),
    "430602": ("岳阳楼区", "county", "430600"),
}

HASH_KEY = "province-issued-id-hash-key-2026"


def secret(child: str) -> str:
    return f"link-secret-for-{child}-0123456789"


#: what the test trees run with: quick polls and retries, so a test waits seconds, not minutes
TREE_TUNING: dict[str, Any] = {"sequencer_interval_ms": 50, "pull_wait_s": 2.0, "retry_cap_s": 1.0,
                               "failed_probe_s": 2.0}


def node_config(code: str, tree: dict[str, tuple[str, str, str | None]], parent_url: str | None,
                listen: str = "127.0.0.1:0", **tuning: Any) -> Config:
    name, _, parent = tree[code]
    data: dict[str, Any] = {
        "node": {"id": code, "name": name, "listen": listen, "dsn": "unused",
                 "id_hash_key": HASH_KEY},
        "children": [{"id": c, "secret": secret(c)} for c, (_, _, p) in tree.items() if p == code],
        "tuning": {**TREE_TUNING, **tuning},
        "log": {"format": "json", "level": "warning"},
    }
    if parent is not None:
        assert parent_url is not None
        data["parent"] = {"id": parent, "url": parent_url, "secret": secret(code)}
    return parse_config(data)


@dataclass
class Tree:
    cluster: Cluster
    tree: dict[str, tuple[str, str, str | None]]
    dsns: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    conns: dict[str, asyncpg.Connection] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    #: protocol versions a node speaks when it should play an older (or newer) build
    versions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: table declarations a node runs with when it should play another release (HC-13)
    schemas: dict[str, Schema] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # where each node listened: a restart listens there again
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def topology(self) -> Topology:
        return Topology.from_rows([(c, n, lv, p) for c, (n, lv, p) in self.tree.items()])

    async def setup(self) -> "Tree":
        await self.prepare()
        await self.start_all()
        return self

    async def prepare(self) -> "Tree":
        """Every node's database (initialised) and the committees at the root; no daemon yet."""
        for code in self.tree:
            if code not in self.dsns:  # a test may bring its own (e.g. populated) database
                self.dsns[code] = await self.cluster.new_node_db(code)
            self.conns[code] = await asyncpg.connect(self.dsns[code])
        root = next(c for c, (_, _, p) in self.tree.items() if p is None)
        await self.conns[root].executemany(
            "INSERT INTO committees (org_code, code, name, level, parent_code) VALUES ($1, $2, $3, $4, $5)",
            [(root, c, n, lv, p) for c, (n, lv, p) in self.tree.items()])
        return self

    async def start_all(self, only: set[str] | None = None) -> None:
        """Start the nodes (or ``only`` those) top-down: a child's first hello finds its parent up."""
        for code in self.topology:
            if only is None or code in only:
                await self.start(code)

    async def start(self, code: str, port: int | None = None) -> Node:
        """Start ``code``'s daemon; ``port``: listen there (a parent restarted where its children
        expect it), else its old port if it ran before, else any."""
        parent = self.tree[code][2]
        url = self.urls.get(parent) if parent else None
        if parent and url is None:
            url = self.urls[parent] = f"http://127.0.0.1:{self.nodes[parent].port}"
        port = port if port is not None else self.ports.get(code, 0)
        extra: dict[str, Any] = {"versions": self.versions[code]} if code in self.versions else {}
        if code in self.schemas:
            extra["schema"] = self.schemas[code]
        node = await Node(node_config(code, self.tree, url, f"127.0.0.1:{port}", **self.tuning),
                          self.dsns[code], **extra).start()
        self.nodes[code] = node
        self.ports[code] = node.port or 0
        self.urls.setdefault(code, f"http://127.0.0.1:{node.port}")
        return node

    async def stop(self, code: str) -> None:
        await self.nodes.pop(code).stop()

    async def close(self) -> None:
        for code in list(self.topology)[::-1]:
            if code in self.nodes:
                await self.stop(code)
        for c in self.conns.values():
            await c.close()
        for dsn in self.dsns.values():
            await self.cluster.drop(dsn)

    async def settled(self, timeout: float = 45.0) -> None:
        """Wait until start-up resyncs are over: every child has loaded its snapshot and no
        parent still asks a child to resync (so later rows travel by push and pull)."""
        async def done() -> bool:
            for code, node in self.nodes.items():
                links = node.links
                if links is not None and (links.snapshot_state or {}).get("state") != "done":
                    return False
                if links is not None and links.upward_pending:
                    return False
                if await self.conns[code].fetchval(  # (a child not started yet has not been asked)
                        "SELECT count(*) FROM syncd.cursors WHERE kind = 'truncated' AND pos >= $1 "
                        "AND peer = ANY($2::text[])", RESYNC_ALWAYS, list(self.nodes)):
                    return False
            return True
        await eventually(done, timeout)

    async def diagnose(self) -> str:
        """Where every node stands: for failure messages."""
        lines = []
        for code, conn in self.conns.items():
            node = self.nodes.get(code)
            links = node.links if node is not None else None
            lines.append(
                f"{code}: running={node is not None} head={await conn.fetchval('SELECT head FROM syncd.node')} "
                f"cursors={[tuple(r) for r in await conn.fetch('SELECT peer, kind, pos FROM syncd.cursors')]} "
                f"outbox={[tuple(r) for r in await conn.fetch('SELECT peer, max(pos) FROM syncd.outbox GROUP BY 1')]} "
                f"quarantine={[tuple(r) for r in await conn.fetch('SELECT code, reason FROM syncd.quarantine')]} "
                f"parked={await conn.fetchval('SELECT count(*) FROM syncd.parked')} "
                + (f"push={links.push_health.state}/{links.push_cursor} pull={links.pull_health.state}/"
                   f"{links.pull_cursor} last_error={links.pull_health.last_error or links.push_health.last_error} "
                   f"snapshot={links.snapshot_state}" if links else ""))
        return "\n".join(lines)

    def db(self, code: str) -> asyncpg.Connection:
        return self.conns[code]

    async def status(self, code: str) -> dict[str, Any]:
        """The node's ``GET /status`` (200 asserted)."""
        port = self.nodes[code].port
        assert port is not None
        return await node_status(port)


async def node_status(port: int) -> dict[str, Any]:
    """``GET /status`` of the daemon on this loopback port (200 asserted).  Generous timeout:
    137 daemons in one event loop can keep a province's answer waiting for seconds."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/status", timeout=aiohttp.ClientTimeout(total=60)) as r:
            assert r.status == 200, await r.text()
            return await r.json()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def running(t: "Tree") -> AsyncIterator["Tree"]:
    """Set the tree up, hand it out, close it whatever happened (for fixtures)."""
    try:
        await t.setup()
        yield t
    finally:
        await t.close()


class Pending(str):
    """A check's "not yet", with the reason :func:`eventually` shows if it never comes true
    (falsy, unlike a plain non-empty string)."""

    def __bool__(self) -> bool:
        return False


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 45.0, interval: float = 0.1) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with the last value after ``timeout``.
    A check says why it is not there yet by returning a :class:`Pending`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
