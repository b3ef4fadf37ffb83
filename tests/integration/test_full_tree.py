"""The Hunan tree in one process on one embedded PostgreSQL (issue 8, item 9), reduced for CI:
湖南省 + 长沙市 + 岳阳市 and all 18 of their counties (21 nodes, the same code path as the
full 137).  The full tree runs with ``python -m bench --only tree137`` (README, Benchmarks).
"""
from __future__ import annotations

import pytest

from tests.fulltree import build, hunan, run_tree_check
from tests.pg import Cluster

pytestmark = pytest.mark.timeout(240)


async def test_reduced_hunan_tree_converges_and_rolls_up_healthy(cluster: Cluster) -> None:
    tree = hunan(["430100", "430600"])
    assert len(tree) == 21 and sum(lv == "county" for _, lv, _ in tree.values()) == 18
    t, seeded = await build(cluster, tree)
    try:
        figures = await run_tree_check(t, seeded, timeout=90)
        print(f"FIGURES {figures}")
    finally:
        await t.close()
