"""The dashboard in headless Chromium against real nodes (issue 7): the province's ``/`` with the
SMALL_TREE daemons running shows 6 nodes; stopping 岳阳市 turns it and its county red/stale.

Set ``SYNCD_DASHBOARD_LIVE_SCREENSHOT=docs/dashboard-live.png`` to also save the screenshot the
docs show (taken once, with 岳阳市's link down).
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.browser import Element, dump_dom, parse_dom, screenshot
from tests.pg import Cluster
from tests.tree import SMALL_TREE, Tree, eventually

pytestmark = pytest.mark.timeout(300)

WAIT_MS = 4000
CUT_CITY, ITS_COUNTY = "430600", "430602"


def state_of(e: Element) -> str:
    states = [c for c in e.classes if c.startswith("state-")]
    assert len(states) == 1, f"node {e.attrs.get('data-node')} has state classes {states}"
    return states[0].removeprefix("state-")


async def page(t: Tree) -> tuple[Element, dict[str, Element]]:
    html = await asyncio.to_thread(dump_dom, f"http://127.0.0.1:{t.nodes['430000'].port}/", WAIT_MS)
    dom = parse_dom(html)
    return dom, {e.attrs["data-node"]: e for e in dom.find_all(**{"data-node": True})}  # type: ignore[misc]


async def test_dashboard_live_node_count_and_a_red_city_when_its_link_is_down(tree: Tree) -> None:
    async def all_healthy() -> tuple[Element, dict[str, Element]] | None:
        dom, nodes = await page(tree)
        ok = set(nodes) == set(SMALL_TREE) and all(state_of(e) == "healthy" for e in nodes.values())
        return (dom, nodes) if ok else None
    dom, nodes = await eventually(all_healthy, 90, 1.0)
    assert dom.by_id("node-count").text() == "6"
    assert "岳阳市" in nodes[CUT_CITY].text()

    await tree.stop(CUT_CITY)

    async def cut() -> tuple[Element, dict[str, Element]] | None:
        dom, nodes = await page(tree)
        ok = (state_of(nodes[CUT_CITY]) in ("failed", "stale") and state_of(nodes[ITS_COUNTY]) == "stale")
        return (dom, nodes) if ok else None
    dom, nodes = await eventually(cut, 120, 1.0)
    assert dom.by_id("node-count").text() == "6"
    for code in ("430100", "430102", "430104"):  # the other branch stays green
        assert state_of(nodes[code]) == "healthy", code
    shot = os.environ.get("SYNCD_DASHBOARD_LIVE_SCREENSHOT")
    if shot:
        path = Path(shot)
        await asyncio.to_thread(screenshot, f"http://127.0.0.1:{tree.nodes['430000'].port}/?select={CUT_CITY}",
                                path, WAIT_MS)
        assert path.stat().st_size > 10_000
