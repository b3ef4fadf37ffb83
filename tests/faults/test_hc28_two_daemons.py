"""HC-28: two daemons on one database.

* Two daemon replicas of 长沙市 share one database.  芙蓉区 times out on replica A and
  sends the same push to replica B while A still applies: the batch is applied once
  (the cursor row is locked ``FOR UPDATE``), relayed once, audited once, and both
  replies acknowledge the same position.  Replica A is held inside its apply until
  B's transaction is seen waiting on a lock, so the two really overlap.
* A second live 芙蓉区 (a DR copy started with the same config) is refused at hello
  with ``DUPLICATE_INSTANCE``, shown in its ``/status``; the first keeps syncing, and
  once it is gone the copy is accepted by itself.
"""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import AsyncIterator

import pytest

from syncd.node import Node
from syncd.proto.messages import SUPPORTED_VERSIONS, Hello, Push
from syncd.routing import project
from syncd.store.log import read_log
from syncd.store.sequencer import Sequencer
from tests.faults.daemons import duplicates
from tests.pg import Cluster
from tests.tree import Pending, Tree, eventually, node_config, node_status

pytestmark = pytest.mark.timeout(120)

PAIR = {
    "430100": ("长沙市", "city", None),
    "430102": ("芙蓉区", "county", "430100"),
}
TUNING = {"pull_wait_s": 0.5, "retry_cap_s": 0.5}


@pytest.fixture
async def pair(cluster: Cluster) -> AsyncIterator[Tree]:
    t = Tree(cluster, PAIR, tuning=TUNING)
    try:
        yield t
    finally:
        await t.close()


async def _county_batch(t: Tree, n: int) -> tuple[list, int]:
    """``n`` new 委员 at 芙蓉区, versioned, projected for 长沙市 as the push loop would."""
    county = t.db("430102")
    async with county.transaction():
        await county.executemany("INSERT INTO members (org_code, name, id_card_no) VALUES ('430102', $1, $2)",
                                 [(f"委员{i}", f"43010219800101{i:04d}") for i in range(n)])
    await Sequencer(me="430102").drain(county)
    topo = t.topology
    behind = topo.behind("430102", "430100")
    changes = [p for c in await read_log(county, 0, 10_000) if c.org_code == "430102"
               for p in [project(c, behind, topo)] if p is not None]
    return changes, changes[-1].pos


async def test_hc28_same_push_to_two_daemon_replicas_applies_once(pair: Tree) -> None:
    t = await pair.prepare()  # no daemon: the replicas and the county's pushes are made here
    city_cfg = node_config("430100", PAIR, None, **TUNING)
    replica_a = await Node(city_cfg, t.dsns["430100"]).start()
    replica_b = await Node(city_cfg, t.dsns["430100"]).start()
    t.nodes["430100"] = replica_a  # closed by the fixture
    changes, to_pos = await _county_batch(t, 40)
    try:
        # A holds the batch's locks until B's transaction is seen waiting behind them
        released = asyncio.Event()

        async def hold() -> None:
            async def b_waits() -> bool:
                return bool(await t.db("430100").fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"))
            await eventually(b_waits, 20, 0.05)
            released.set()
        replica_a.ctx.after_lock = hold

        links = []
        for replica in (replica_a, replica_b):
            cfg = node_config("430102", PAIR, f"http://127.0.0.1:{replica.port}", **TUNING)
            link = Node(cfg, t.dsns["430102"])._http_link()
            links.append(link)
        instance = uuid.uuid4()
        incarnation = await t.db("430102").fetchval("SELECT incarnation FROM syncd.node")
        epoch = 0
        for link in links:  # one county daemon: the same instance (and database) at both replicas
            epoch = (await link.hello(Hello(versions=SUPPORTED_VERSIONS, node="430102", instance=instance,
                                            incarnation=incarnation, epoch=epoch, clock=_now_us(), pull_cursor=0,
                                            pull_hash=None, tables={}))).epoch
        push = Push(batch_id=uuid.uuid4(), epoch=0, from_pos=0, to_pos=to_pos, changes=tuple(changes))
        first = asyncio.create_task(links[0].push(push))
        await asyncio.sleep(0.2)  # A is inside its apply, holding the cursor row
        second = asyncio.create_task(links[1].push(push))
        ra, rb = await asyncio.gather(first, second)
        assert released.is_set(), "replica B never waited on replica A's locks"
        replica_a.ctx.after_lock = None
        for link in links:
            await link.close()

        assert ra.acked_pos == rb.acked_pos == to_pos
        assert sorted([ra.applied, rb.applied]) == [0, len(changes)], (ra, rb)
        city = t.db("430100")
        assert await city.fetchval("SELECT count(*) FROM members WHERE org_code = '430102'") == 40

        async def relayed() -> int:  # both replicas' sequencers move what was queued for relay
            return int(await city.fetchval("SELECT count(*) FROM syncd.log WHERE received_from = '430102'"))
        await eventually(relayed, 20)
        await asyncio.sleep(0.5)
        assert await relayed() == len(changes)
        assert not await duplicates(city)
        assert await city.fetchval("SELECT count(*) FROM syncd.audit WHERE peer = '430102' "
                                   "AND direction = 'received' AND batch_id = $1", str(push.batch_id)) == 1
        assert await city.fetchval(
            "SELECT pos FROM syncd.cursors WHERE peer = '430102' AND kind = 'applied'") == to_pos
    finally:
        await replica_b.stop()


def _now_us() -> int:
    from syncd.node import now_us
    return now_us()


async def test_hc28_second_live_instance_is_refused_by_name(pair: Tree) -> None:
    t = pair
    await t.setup()
    await t.settled()  # the first daemon is connected and has loaded its snapshot
    city_url = f"http://127.0.0.1:{t.nodes['430100'].port}"
    copy = await Node(node_config("430102", PAIR, city_url, **TUNING), t.dsns["430102"]).start()
    try:
        async def refused() -> bool | str:
            up = next(ln for ln in (await node_status(copy.port))["links"] if ln["direction"] == "parent")
            return (up["last_error"] or {}).get("code") == "DUPLICATE_INSTANCE" or Pending(str(up))
        await eventually(refused, 20)
        up = next(ln for ln in (await node_status(copy.port))["links"] if ln["direction"] == "parent")
        assert up["state"] == "crashing" and "another live daemon of 430102" in up["last_error"]["reason"]
        first = t.nodes["430102"].links

        async def first_running() -> bool | str:  # the first daemon is not disturbed by the copy
            return first.push_health.state == first.pull_health.state == "running" or Pending(
                f"{first.push_health.state}/{first.pull_health.state} {await t.diagnose()}")
        await eventually(first_running, 20)

        await t.db("430102").execute("INSERT INTO members (org_code, name) VALUES ('430102', '主用委员')")

        async def arrived(name: str) -> bool:
            return bool(await t.db("430100").fetchval("SELECT count(*) FROM members WHERE name = $1", name))
        await eventually(lambda: arrived("主用委员"), 20)

        await t.stop("430102")  # the first daemon goes away: the copy is accepted by itself
        await t.db("430102").execute("INSERT INTO members (org_code, name) VALUES ('430102', '备用委员')")
        await eventually(lambda: arrived("备用委员"), 30)

        async def copy_running() -> bool | str:
            up = next(ln for ln in (await node_status(copy.port))["links"] if ln["direction"] == "parent")
            return up["state"] == "running" or Pending(str(up["state"]))
        await eventually(copy_running, 20)
        assert not await duplicates(t.db("430100"))
    finally:
        await copy.stop()


def test_hc28_only_transaction_scoped_advisory_locks() -> None:
    """A session-level advisory lock would outlive a crashed transaction of one replica."""
    import syncd

    root = Path(syncd.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if any(f"{fn}(" in p.read_text(encoding="utf-8")
                        for fn in ("pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_lock_shared"))]
    assert offenders == []
