"""HC-35: a link carries the volume its changes weigh, not a multiple of it.

Rows that reach their peer once, intact, also pass when every batch is sent twice (the
receiver drops what it holds); only the bytes on the wire tell.  Every node counts them
per link, endpoint and direction (``syncd_link_bytes_total`` in ``/metrics``).  芙蓉区
catches up 1,000 members written while its daemon was down; the push bytes 长沙市 received
meanwhile are held against the gzip-compressed encoding of exactly those changes in one
push, and the two ends' counts of the same bodies agree.
"""
from __future__ import annotations

import uuid

from syncd.proto import codec
from syncd.proto.messages import Push
from syncd.routing import project
from syncd.store.log import read_log
from syncd.store.sequencer import Sequencer
from tests.pg import Cluster
from tests.tree import HASH_KEY, Tree, eventually

TREE = {"430100": ("长沙市", "city", None), "430102": ("芙蓉区", "county", "430100")}
N = 1000


def counted(t: Tree, code: str, peer: str, kind: str, direction: str) -> float:
    value = t.nodes[code].metrics.registry.get_sample_value(
        "syncd_link_bytes_total", {"peer": peer, "kind": kind, "direction": direction})
    return value or 0.0


async def test_hc35_push_bytes_match_the_changes_they_carry(cluster: Cluster) -> None:
    from syncd.config import Secret

    t = Tree(cluster, TREE)
    try:
        await t.setup()
        await t.settled()
        city, county = t.db("430100"), t.db("430102")
        await t.stop("430102")
        head = await county.fetchval("SELECT head FROM syncd.node")
        await county.execute("INSERT INTO members (org_code, name, work_unit, title) "
                             "SELECT '430102', '委员' || g, '芙蓉区第' || g || '中学', '教师' FROM generate_series(1, $1) g", N)
        await Sequencer(me="430102", id_hash_key=Secret("h1", HASH_KEY)).drain(county)
        changes = [c for c in await read_log(county, head, 10 * N) if c.table == "members"]
        assert len(changes) == N
        topo = t.topology
        sent = tuple(p for p in (project(c, topo.behind("430102", "430100"), topo) for c in changes) if p)
        expected = len(codec.gzip_body(codec.encode(Push(uuid.uuid4(), 1, head, sent[-1].pos, sent), 3)))
        before = counted(t, "430100", "430102", "push", "received")
        await t.start("430102")
        await eventually(lambda: city.fetchval("SELECT count(*) = $1 FROM members WHERE org_code = '430102'", N))
        got = counted(t, "430100", "430102", "push", "received") - before
        # hellos' and heartbeats' summaries ride on pushes too: a few hundred bytes each
        print(f"push bytes received {got:.0f}, the changes' own push {expected} ({got / expected:.3f}×)")
        assert 0.7 * expected <= got <= 1.3 * expected + 8192, (got, expected)

        async def counted_by_the_county() -> bool:  # once its push's reply is in: after the city's commit
            return (counted(t, "430102", "430100", "push", "sent")  # the county counts from its restart
                    == counted(t, "430100", "430102", "push", "received") - before)

        await eventually(counted_by_the_county, timeout=10)  # one body, counted at both ends
        metrics = await _metrics(t, "430100")
        assert 'syncd_link_bytes_total{direction="received",kind="push",peer="430102"}' in metrics
    finally:
        await t.close()


async def _metrics(t: Tree, code: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{t.nodes[code].port}/metrics") as r:
            assert r.status == 200
            return await r.text()
