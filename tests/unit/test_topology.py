"""The committee tree is data (HC-27): parents, subtrees, aliases, errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from syncd.topology import Topology, TopologyError

CSV = Path(__file__).resolve().parents[2] / "syncd" / "data" / "hunan_divisions.csv"

SMALL = [
    ("430000", "湖南省", "province", None, []),
    ("430100", "长沙市", "city", "430000", []),
    ("430102", "芙蓉区", "county", "430100", []),
    ("430124", "宁乡县", "county", "430100", []),
    ("430200", "株洲市", "city", "430000", []),
    ("430221", "株洲县", "county", "430200", []),
]


def test_hunan_csv_has_137_nodes_in_three_levels() -> None:
    topo = Topology.from_csv(CSV)
    assert len(topo) == 137 and topo.root == "430000"
    assert len(topo.children("430000")) == 14
    assert sum(1 for n in topo.nodes if topo.level(n) == "county") == 122
    assert topo.parent("430102") == "430100"
    assert topo.ancestors("430102") == ("430100", "430000")
    assert topo.path("430102") == ("430000", "430100", "430102")
    assert topo.depth("430000") == 0 and topo.depth("430102") == 2
    assert topo.name("430102") == "芙蓉区"
    assert topo.subtree("430000") == topo.nodes


def test_queries_on_small_tree() -> None:
    topo = Topology.from_rows(SMALL)
    assert topo.children("430100") == ("430102", "430124")
    assert topo.subtree("430100") == {"430100", "430102", "430124"}
    assert topo.in_subtree("430102", "430100")
    assert topo.in_subtree("430100", "430100")
    assert not topo.in_subtree("430100", "430102")
    assert not topo.in_subtree("430221", "430100")
    assert topo.parent("430000") is None and topo.ancestors("430000") == ()
    assert topo.neighbours("430100") == ("430000", "430102", "430124")
    assert topo.behind("430100", "430000") == {"430000", "430200", "430221"}
    assert topo.behind("430100", "430102") == {"430102"}
    with pytest.raises(TopologyError) as e:
        topo.behind("430102", "430000")
    assert e.value.code == "UNKNOWN_NODE"


def test_dict_rows_and_string_aliases() -> None:
    rows = [
        {"code": "430000", "name": "湖南省", "level": "province", "parent_code": ""},
        {"code": "430124", "name": "宁乡市", "level": "county", "parent_code": "430000",
         "aliases": "430182; 430199"},
    ]
    topo = Topology.from_rows(rows)
    assert topo.resolve("430182") == "430124" == topo.resolve("430199")
    assert topo.aliases("430124") == ("430182", "430199")


def test_national_level_above_provinces_works_unchanged() -> None:
    rows = [("100000", "全国政协", "national", None, [])] + [
        (c, n, lv, p or "100000", a) for c, n, lv, p, a in SMALL
    ] + [("440000", "广东省", "province", "100000", []), ("441900", "东莞市", "city", "440000", []),
         ("429004", "仙桃市", "city", "100000", [])]
    topo = Topology.from_rows(rows)
    assert topo.root == "100000"
    assert topo.ancestors("430102") == ("430100", "430000", "100000")
    assert topo.depth("430102") == 3
    # no digit rule: 441900 is a child of 440000 only because the row says so
    assert topo.parent("441900") == "440000" and topo.parent("429004") == "100000"


def test_unknown_code_is_a_named_error() -> None:
    topo = Topology.from_rows(SMALL)
    for call in (topo.parent, topo.subtree, topo.resolve, topo.name, topo.depth):
        with pytest.raises(TopologyError) as e:
            call("439999")
        assert e.value.code == "UNKNOWN_NODE"


@pytest.mark.parametrize(
    ("rows", "code"),
    [
        (SMALL + [("430300", "湘潭市", "city", None, [])], "TWO_ROOTS"),
        (SMALL + [("430301", "x", "county", "430399", [])], "DANGLING_PARENT"),
        (SMALL + [("430102", "dup", "county", "430100", [])], "DUPLICATE_NODE"),
        (SMALL + [("430500", "a", "city", "430600", []), ("430600", "b", "city", "430500", [])], "CYCLE"),
        ([("430000", "x", "province", "430000", [])], "CYCLE"),
        ([("430000", "x", "p", "430100", []), ("430100", "y", "c", "430000", [])], "CYCLE"),
        ([], "NO_ROOT"),
        (SMALL + [("430500", "a", "city", "430000", ["430102"])], "ALIAS_CLASH"),
        ([("430000", "p", "p", None, ["439000"]), ("430100", "c", "c", "430000", ["439000"])],
         "ALIAS_CLASH"),
    ],
)
def test_inconsistent_rows_raise_named_errors(rows: list, code: str) -> None:
    with pytest.raises(TopologyError) as e:
        Topology.from_rows(rows)
    assert e.value.code == code


def test_hc27_rename_is_alias_and_reparent_follows() -> None:
    before = Topology.from_rows(SMALL)
    # 宁乡县 430124 becomes 宁乡市 430182: the stable id stays, the new code is an alias.
    # 株洲县 430221 (渌口区 430212) is moved under 长沙市 (a re-parenting, for the test).
    after_rows = [
        ("430124", "宁乡市", "county", "430100", ["430182"]) if r[0] == "430124"
        else ("430221", "渌口区", "county", "430100", ["430212"]) if r[0] == "430221"
        else r
        for r in SMALL
    ]
    after = Topology.from_rows(after_rows)
    assert after.nodes == before.nodes  # ids unchanged: org_codes and origins stay valid
    assert after.resolve("430182") == "430124" and after.resolve("430124") == "430124"
    assert after.name("430182") == "宁乡市"
    assert after.parent("430182") == "430100"
    # subtree checks follow the new parent
    assert before.in_subtree("430221", "430200") and not before.in_subtree("430221", "430100")
    assert after.in_subtree("430212", "430100") and not after.in_subtree("430221", "430200")
    assert after.subtree("430200") == {"430200"}
    assert after.children("430100") == ("430102", "430124", "430221")
    # an alias can name the parent in later rows
    moved = Topology.from_rows(after_rows + [("430199", "新区", "county", "430212", [])])
    assert moved.parent("430199") == "430221"
    assert moved.ancestors("430199") == ("430221", "430100", "430000")
