"""PostgreSQL restarted under running nodes (DESIGN §9, HC-31).

The session cluster is shared by every test, so this test runs its own
:class:`EmbeddedPostgres`.  One cluster holds the databases of the province (parent
side) and the county (child side), so one restart hits both ends of every link and
the city in the middle.  While it is down every node still answers ``/status``
(``database.state`` ``down``, links ``crashing``) and ``/readyz`` says 503; after
``start()`` the loops recover by themselves, the LISTEN connections are made again,
the sequencer moves writes made meanwhile, and the tree converges.

What made it fail before: asyncpg detaches a pooled connection's proxy when the
server goes away, and then even ``is_closed()`` raises ``InterfaceError`` — which
killed the sequencer's loop (see ``syncd/store/listen.py``).
"""
from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from syncd.store.embedded import EmbeddedPostgres
from tests.faults.daemons import duplicates, wait_until
from tests.pg import Cluster
from tests.tree import Tree

pytestmark = pytest.mark.timeout(150)
RESTARTS = 3

CHAIN = {
    "430000": ("湖南省", "province", None),
    "430100": ("长沙市", "city", "430000"),
    "430102": ("芙蓉区", "county", "430100"),
}


@pytest.fixture
async def own() -> AsyncIterator[Cluster]:
    c = Cluster.__new__(Cluster)
    c.pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="syncd-pgrestart-")) / "cluster",
                            settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    c._template_ready = False
    await asyncio.to_thread(c.pg.start)
    try:
        yield c
    finally:
        await asyncio.to_thread(c.pg.destroy)



async def test_postgres_restart_under_running_nodes_reported_recovered_converged(own: Cluster) -> None:
    import asyncpg

    t = Tree(own, CHAIN, tuning={"pull_wait_s": 1.0, "retry_cap_s": 1.0})
    await t.setup()
    try:
        await t.db("430000").execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                                     "VALUES ('430000', '视察', '重启前', now())")

        async def reached() -> bool:
            return bool(await t.db("430102").fetchval("SELECT count(*) FROM activities WHERE title = '重启前'"))
        await wait_until(reached, 20)
        for c in t.conns.values():
            await c.close()

        await asyncio.to_thread(own.pg.stop, "fast")

        def failing(code: str) -> bool:
            ln = t.nodes[code].links
            return any(h.state in ("crashing", "failed") and h.last_error is not None
                       for h in (ln.push_health, ln.pull_health))

        async def reported() -> bool:
            return failing("430100") and failing("430102")
        await wait_until(reported, 20)

        async def database_down() -> bool | str:  # every node, the root too, still answers /status
            states = {c: (await t.status(c))["database"]["state"] for c in CHAIN}
            return set(states.values()) == {"down"} or str(states)
        await wait_until(database_down, 20)
        down = await t.status("430102")
        assert down["database"]["last_error"]["code"] in ("DATABASE", "UNREACHABLE"), down["database"]
        assert down["subtree"][0]["state"] == "degraded" and down["node"]["log_position"] is None, down
        up_link = next(ln for ln in down["links"] if ln["direction"] == "parent")
        assert up_link["state"] in ("crashing", "failed") and up_link["lag_changes"] is None, up_link
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{t.nodes['430000'].port}/readyz") as r:
                assert r.status == 503 and "database unreachable" in (await r.json())["reason"]
            async with s.get(f"http://127.0.0.1:{t.nodes['430100'].port}/metrics") as r:
                assert r.status == 200 and "syncd_database_up 0.0" in await r.text()
        errors = {c: (t.nodes[c].links.push_health.last_error or t.nodes[c].links.pull_health.last_error or {})
                  .get("code") for c in ("430100", "430102")}
        await asyncio.sleep(2.0)  # down for a while: every loop retries against a dead database
        await asyncio.to_thread(own.pg.start)
        for _ in range(RESTARTS - 1):  # a few more short outages: each one is a chance to kill a task
            await asyncio.sleep(1.0)
            await asyncio.to_thread(own.pg.stop, "immediate")
            await asyncio.sleep(0.5)
            await asyncio.to_thread(own.pg.start)
        t.conns = {c: await asyncpg.connect(dsn) for c, dsn in t.dsns.items()}

        prov, fr = t.db("430000"), t.db("430102")
        await prov.execute("INSERT INTO activities (org_code, kind, title, starts_at) "
                           "VALUES ('430000', '视察', '重启后', now())")
        await fr.execute("INSERT INTO members (org_code, name) VALUES ('430102', '重启委员')")

        async def converged() -> bool | str:
            a = [await t.db(c).fetchval("SELECT count(*) FROM activities WHERE title = '重启后'") for c in CHAIN]
            m = [await t.db(c).fetchval("SELECT count(*) FROM members WHERE name = '重启委员'") for c in CHAIN]
            return (a == [1, 1, 1] and m == [1, 1, 1]) or f"activities {a} members {m}"
        await asyncio.sleep(1.0)
        dead = {c: [f"{task.get_coro().__qualname__}: {task.exception()!r}"  # type: ignore[union-attr]
                    for task in n.tasks if task.done() and not task.cancelled()] for c, n in t.nodes.items()}
        assert not any(dead.values()), f"daemon tasks died with the database: {dead}"
        await wait_until(converged, 45, 0.3)

        async def running() -> bool | str:
            links = (await t.status("430102"))["links"]
            up = next(ln for ln in links if ln["direction"] == "parent")
            return up["state"] == "running" or str(up["state"])
        await wait_until(running, 20)
        after = await t.status("430102")
        assert after["database"]["state"] == "up" and after["node"]["log_position"], after["database"]
        up = next(ln for ln in after["links"] if ln["direction"] == "parent")
        assert any(e["event"] in ("crashing", "failed") for e in up["history"]), up["history"]
        assert set(errors.values()) <= {"DATABASE", "UNREACHABLE", "UNAVAILABLE", "INTERNAL"}, errors
        for c in CHAIN:
            assert not await duplicates(t.db(c)), c
    finally:
        await t.close()
