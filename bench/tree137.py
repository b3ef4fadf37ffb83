"""tree137: the whole Hunan tree — 1 province, 14 cities, 122 counties — in this process, every
node a real daemon on its own database of the run's one embedded PostgreSQL, seeded with a
small realistic load (``tests.fulltree``; issue 8, item 9).

At ``--size full`` all 137 nodes; ``small`` takes the first ``scale_cities`` cities with *all*
their counties, ``tiny`` (CI) 长沙市 and two of its counties.  Measured (each step must pass, within
its own bound): building and starting the tree, the seed rolled up to the province, a new
member at every county at once → all at the province, a provincial activity → all counties,
and the province's ``/status`` roll-up listing every node ``healthy``.  The CI test
``tests/integration/test_full_tree.py`` runs the same steps on 21 nodes.
"""
from __future__ import annotations

import csv
import time
from importlib import resources

from bench.harness import Run
from tests.fulltree import build, hunan, run_tree_check

SCENARIO = "tree137"


def _cities(n: int | None) -> list[str] | None:
    if n is None:
        return None
    text = resources.files("syncd.data").joinpath("hunan_divisions.csv").read_text(encoding="utf-8")
    return [r["code"] for r in csv.DictReader(text.splitlines()) if r["level"] == "city"][:n]


def _tiny(tree: dict[str, tuple[str, str, str | None]]) -> dict[str, tuple[str, str, str | None]]:
    """长沙市 and its first two counties: the CI run only checks the scenario still works
    (``tests/integration/test_full_tree.py`` runs the steps on 21 nodes)."""
    counties = [c for c, (_, lv, _) in tree.items() if lv == "county"][:2]
    return {c: v for c, v in tree.items() if v[1] != "county" or c in counties}


async def run(r: Run) -> None:
    tiny = r.size.name == "tiny"
    tree = hunan(_cities(1 if tiny else r.size.scale_cities))
    if tiny:
        tree = _tiny(tree)
    t0 = time.perf_counter()
    t, seeded = await build(r.cluster, tree)
    counties = sum(lv == "county" for _, lv, _ in tree.values())
    r.add(SCENARIO, f"{len(tree)} nodes ({len(tree) - counties - 1} cities, {counties} counties) built, "
          f"seeded ({seeded} members) and started", time.perf_counter() - t0, "s")
    try:
        f = await run_tree_check(t, seeded, timeout=300)
    finally:
        await t.close()
    r.add(SCENARIO, "seed rolled up: every committee's members at the province", f["seed_at_province_s"], "s")
    r.add(SCENARIO, f"a new member at each of the {counties} counties at once → all at the province",
          f["county_members_to_province_s"], "s")
    r.add(SCENARIO, f"a provincial activity → all {counties} counties", f["province_activity_to_counties_s"], "s")
    r.add(SCENARIO, f"province's /status roll-up: all {len(tree)} nodes healthy", f["rollup_all_healthy_s"], "s")
    r.extra["tree137"] = f
