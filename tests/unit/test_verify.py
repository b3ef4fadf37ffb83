"""verify's pure part (SPEC R9.2–R9.4, HC-33): ranges, sums, what a link shares, naming differences."""
from __future__ import annotations

import random
import uuid
from pathlib import Path

from syncd.proto.change import Version
from syncd.proto.codec import range_checksum, row_digest
from syncd.proto.messages import IdRange, SnapshotRow
from syncd.schema.declarations import SCHEMA, Column, Route, Table
from syncd.topology import Topology
from syncd.verify import (ID_SPACE, RangeSummer, before, contains, diff_rows, exact_range, initial_ranges,
                          link_row, range_sums, split_range)

TOPO = Topology.from_csv(Path(__file__).resolve().parents[2] / "syncd" / "data" / "hunan_divisions.csv")
PROVINCE, CHANGSHA, FURONG, YUELU, ZHUZHOU = "430000", "430100", "430102", "430104", "430200"
V = Version(1, 0, 0, 1_000, FURONG)


def row(home: str, cols: dict[str, object], cl: int = 1, homes: dict[str, str] | None = None,
        rid: uuid.UUID | None = None) -> SnapshotRow:
    return SnapshotRow(rid or uuid.uuid4(), home, cl, homes or {"home": home}, {c: (v, V) for c, v in cols.items()})


def test_r9_3_initial_ranges_cover_the_id_space_once_and_splits_stay_inside() -> None:
    rs = initial_ranges(64)
    assert rs[0].lo.int == 0 and rs[-1].hi is None and len(rs) == 64
    assert all(a.hi == b.lo for a, b in zip(rs, rs[1:]))
    for rid in [uuid.UUID(int=0), uuid.UUID(int=ID_SPACE - 1), *(uuid.uuid4() for _ in range(200))]:
        assert sum(contains(r, rid) for r in rs) == 1
    parts = split_range(rs[-1], 16)
    assert parts[0].lo == rs[-1].lo and parts[-1].hi is None and len(parts) == 16
    assert all(a.hi == b.lo for a, b in zip(parts, parts[1:]))
    tiny = IdRange(uuid.UUID(int=10), uuid.UUID(int=13))
    assert [(r.lo.int, r.hi.int) for r in split_range(tiny, 16)] == [(10, 11), (11, 12), (12, 13)]  # type: ignore[union-attr]
    one = exact_range(uuid.UUID(int=7))
    assert contains(one, uuid.UUID(int=7)) and not contains(one, uuid.UUID(int=8))
    assert before(one) == uuid.UUID(int=6) and before(rs[0]) is None


def test_r9_2_sums_do_not_depend_on_the_order_rows_come_in() -> None:
    rows = [row(FURONG, {"name": f"委员{i}"}) for i in range(300)]
    ranges = initial_ranges(8)
    ordered = range_sums(ranges, sorted(rows, key=lambda r: r.id.int))
    shuffled = rows[:]
    random.Random(7).shuffle(shuffled)
    assert range_sums(ranges, shuffled) == ordered
    assert sum(s.count for s in ordered) == 300
    first = sorted((r for r in rows if contains(ranges[0], r.id)), key=lambda r: r.id.int)
    assert ordered[0].checksum == range_checksum([row_digest(r) for r in first])
    # overlapping ranges count a row in each of them
    both = range_sums([IdRange(uuid.UUID(int=0), None), ranges[3]], rows)
    assert both[0].count == 300 and both[1] == ordered[3]
    assert RangeSummer([]).sums() == []


def test_r9_4_a_link_shares_a_county_row_without_its_home_only_columns() -> None:
    members = SCHEMA["members"]
    r = row(FURONG, {"name": "甲", "mobile": "139", "id_card_no": "4301", "id_card_hash": "k1:ab"})
    shared = link_row(members, r, CHANGSHA, FURONG, TOPO)
    assert shared is not None and set(shared.cols) == {"name", "id_card_hash"}
    assert link_row(members, r, PROVINCE, CHANGSHA, TOPO) is not None  # it goes on up
    assert link_row(members, r, CHANGSHA, YUELU, TOPO) is None  # never reaches the other county
    city_row = row(CHANGSHA, {"name": "乙"})
    assert link_row(members, city_row, CHANGSHA, FURONG, TOPO) is None  # members flow up only
    dead = row(FURONG, {"name": "丙"}, cl=2)
    assert link_row(members, dead, CHANGSHA, FURONG, TOPO).cols == {}  # type: ignore[union-attr]
    unknown = row("999999", {"name": "丁"})
    assert link_row(members, unknown, CHANGSHA, FURONG, TOPO) is None


def test_r9_4_an_up_n_column_is_shared_only_on_the_links_it_crosses() -> None:
    t = Table("notes", columns=(Column("body"), Column("phone", reach="up:1")), routes=(Route("home", ("org_code",), "up"),))
    r = row(FURONG, {"body": "x", "phone": "y"})
    assert set(link_row(t, r, CHANGSHA, FURONG, TOPO).cols) == {"body", "phone"}  # type: ignore[union-attr]
    assert set(link_row(t, r, PROVINCE, CHANGSHA, TOPO).cols) == {"body"}  # type: ignore[union-attr]


def test_r9_4_province_rows_going_down_are_shared_with_every_county_on_the_way() -> None:
    activities = SCHEMA["activities"]
    r = row(PROVINCE, {"title": "全体会议"})
    assert link_row(activities, r, CHANGSHA, FURONG, TOPO) is not None
    assert link_row(activities, r, PROVINCE, ZHUZHOU, TOPO) is not None


def test_hc33_differences_are_named_by_row_and_column_without_values() -> None:
    same, changed, gone, only_parent = (uuid.uuid4() for _ in range(4))
    ours = [row(FURONG, {"name": "甲", "title": "t"}, rid=same), row(FURONG, {"name": "乙"}, rid=changed),
            row(FURONG, {"name": "丙"}, rid=gone)]
    theirs = [row(FURONG, {"name": "甲", "title": "t"}, rid=same), row(FURONG, {"name": "乙改"}, rid=changed),
              row(FURONG, {"name": "戊"}, rid=only_parent)]
    diffs = {d.row_id: d for d in diff_rows("members", theirs, ours)}
    assert set(diffs) == {changed, gone, only_parent}
    assert diffs[gone].kind == "only_at_child" and diffs[only_parent].kind == "only_at_parent"
    col = diffs[changed].columns[0]
    assert (col.column, col.same_value) == ("name", False) and "capture bypassed" in col.what
    assert "乙" not in str(diffs[changed].as_dict())
    emptied = row(FURONG, {"name": None}, rid=changed)
    d = diff_rows("members", [emptied], [ours[1]])[0]
    assert "empty at the parent" in d.detail
    d = diff_rows("members", [theirs[1]], [row(FURONG, {"name": None}, rid=changed)], frozenset({changed}))[0]
    assert "table has no such row" in d.detail
    deleted = SnapshotRow(changed, FURONG, 2, {"home": FURONG}, {})
    assert "cl 2 (deleted) at the parent, 1 (alive) here" in diff_rows("members", [deleted], [ours[1]])[0].detail
