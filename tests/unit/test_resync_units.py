"""Pure parts of retention and resync (issue 6): the retention duration, an upward snapshot's
changes, batch cuts that never split a row of it (HC-21, HC-7, HC-22)."""
from __future__ import annotations

import uuid

import pytest

from syncd.config import ConfigError, Secret, Tuning, parse_config, parse_duration
from syncd.merge import RowState, decide, merge_states
from syncd.batching import cut_batch
from syncd.proto.change import Change, ColumnChange, Version
from syncd.schema.declarations import SCHEMA
from syncd.store.resync import UPWARD_TXN_BASE, created_here, row_changes
from syncd.store.versioning import RowVer, id_card_hash

NODE = {"id": "430102", "name": "芙蓉区", "listen": "127.0.0.1:0"}


def test_hc21_max_retention_is_a_duration_with_a_default_of_30_days() -> None:
    assert Tuning().max_retention == "30d" and Tuning().max_retention_s == 30 * 86400
    assert [parse_duration(v) for v in ("45s", "90m", "12h", "30d", "2w", "1.5h")] == \
        [45, 5400, 43200, 2592000, 1209600, 5400]
    cfg = parse_config({"node": NODE, "tuning": {"max_retention": "7d", "max_retention_entries": 1_000_000}})
    assert cfg.tuning.max_retention_s == 7 * 86400 and cfg.tuning.max_retention_entries == 1_000_000


@pytest.mark.parametrize("bad", ["30", "30 days", "0d", "-1h", "d", ""])
def test_hc21_a_bad_max_retention_is_a_named_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"node": NODE, "tuning": {"max_retention": bad}})
    (problem,) = [p for p in e.value.problems if p[0] == "tuning.max_retention"]
    assert problem[1] == bad and problem[2].startswith("INVALID_DURATION")


def test_hc21_max_retention_must_be_text() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"node": NODE, "tuning": {"max_retention": 30, "max_retention_entries": -5}})
    paths = {p for p, _, _ in e.value.problems}
    assert {"tuning.max_retention", "tuning.max_retention_entries"} <= paths


MEMBERS = SCHEMA["members"]
ROW = uuid.UUID("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b")
KEY = Secret("h1", "province-issued-id-hash-key-2026")


def v(ts: int, origin: str, cl: int = 1) -> Version:
    return Version(cl, 0, 0, ts, origin)


def mine_430102(code: str) -> bool:
    return code == "430102"


def test_hc7_upward_snapshot_row_keeps_each_cell_version_and_only_this_subtrees_writes() -> None:
    rv = RowVer("430102", 1, {"home": "430102"},
                {"name": v(10, "430102"), "work_unit": v(20, "430102"), "title": v(20, "430102"),
                 "party": v(30, "430000"), "id_card_hash": v(10, "430102"), "id_card_no": v(10, "430102")},
                {"name": None, "work_unit": v(10, "430102"), "title": None, "party": None,
                 "id_card_hash": None, "id_card_no": None})
    values = {"name": "甲", "work_unit": "新单位", "title": "主任", "party": "民盟", "id_card_hash": None,
              "id_card_no": "430102199001011234", "updated_at": "2026-01-01"}
    out = row_changes(MEMBERS, ROW, rv, values, mine_430102, UPWARD_TXN_BASE + 7, KEY)
    assert [(c.ts, c.origin, sorted(c.cols)) for c in out] == [
        (10, "430102", ["id_card_hash", "id_card_no", "name"]), (20, "430102", ["title", "work_unit"])]
    assert all(c.op == "U" and c.cl == 1 and c.txn == UPWARD_TXN_BASE + 7 and c.homes == {"home": "430102"}
               for c in out)
    assert out[1].cols["work_unit"] == ColumnChange("新单位", 0, 0, v(10, "430102"))  # prev kept: no conflict
    # the ID hash is not stored in the home's table: it is derived again, as when it was first sent
    assert out[0].cols["id_card_hash"].value == id_card_hash(KEY, "430102199001011234")
    assert "updated_at" not in out[0].cols and "party" not in {c for ch in out for c in ch.cols}


def test_hc7_upward_snapshot_of_a_row_that_came_back_keeps_its_stored_hash() -> None:
    # a row returned home by a snapshot: the hash is stored, the ID number (home-only) was lost
    rv = RowVer("430102", 1, {"home": "430102"}, {"name": v(10, "430102"), "id_card_hash": v(10, "430102")})
    out = row_changes(MEMBERS, ROW, rv, {"name": "乙", "id_card_hash": "h1:abc", "id_card_no": None},
                      mine_430102, UPWARD_TXN_BASE, KEY)
    assert out[0].cols["id_card_hash"].value == "h1:abc"


def test_hc21_upward_snapshot_sends_own_tombstones_and_nothing_of_foreign_ones() -> None:
    own = RowVer("430102", 2, {"home": "430102"})
    (d,) = row_changes(MEMBERS, ROW, own, None, mine_430102, UPWARD_TXN_BASE, KEY)
    assert (d.op, d.cl, d.origin, d.cols) == ("D", 2, "430102", {})
    assert row_changes(MEMBERS, ROW, RowVer("430000", 2, {"home": "430000"}), None, mine_430102,
                       UPWARD_TXN_BASE, KEY) == []
    # a live row versioned but missing from the table (its write failed) shows nothing
    assert row_changes(MEMBERS, ROW, RowVer("430102", 1, {"home": "430102"}, {"name": v(1, "430102")}), None,
                       mine_430102, UPWARD_TXN_BASE, KEY) == []


def test_hc22_upward_snapshot_merges_like_the_original_changes_and_records_no_conflict() -> None:
    """The parent holds a newer version that saw ours: replaying ours loses quietly (HC-17)."""
    rv = RowVer("430102", 1, {"home": "430102"}, {"name": v(10, "430102")}, {"name": None})
    (mine,) = row_changes(MEMBERS, ROW, rv, {"name": "旧"}, mine_430102, UPWARD_TXN_BASE, KEY)
    parent = RowState(1, {"name": ("新", v(20, "430102"))}, {"name": v(10, "430102")})
    d = decide(parent, mine, MEMBERS)
    assert d.state == parent and not d.conflicts
    # and where the parent lacks the row, the row arrives whole (one batch, several changes)
    rv2 = RowVer("430102", 1, {"home": "430102"}, {"name": v(10, "430102"), "work_unit": v(20, "430102")},
                 {"name": None, "work_unit": None})
    a, b = row_changes(MEMBERS, ROW, rv2, {"name": "丙", "work_unit": "单位"}, mine_430102, UPWARD_TXN_BASE, KEY)
    state = decide(decide(None, a, MEMBERS).state, b, MEMBERS).state
    assert state.values() == {"name": "丙", "work_unit": "单位"}
    assert merge_states(state, decide(None, b, MEMBERS).state) == state


def test_upward_snapshot_rows_are_never_split_between_batches() -> None:
    def ch(i: int, txn: int, origin: str) -> Change:
        return Change("members", uuid.uuid4(), "430102", "U", 1, i, origin, txn, {"home": "430102"},
                      {"name": ColumnChange(str(i))}, i)
    row = [ch(1, UPWARD_TXN_BASE + 1, "430102"), ch(2, UPWARD_TXN_BASE + 1, "430104"),
           ch(3, UPWARD_TXN_BASE + 1, "430100")]
    entries = [ch(0, 5, "430102"), *row, ch(4, UPWARD_TXN_BASE + 2, "430102")]
    assert cut_batch(entries, 2) == entries[:1]  # not between the three changes of one row
    assert cut_batch(entries, 4) == entries[:4]
    # ordinary transactions of different origins with the same number may still be cut apart
    plain = [ch(0, 5, "430102"), ch(1, 5, "430104"), ch(2, 6, "430104")]
    assert cut_batch(plain, 1) == plain[:1]


def test_created_here_tells_a_row_this_node_inserted_from_one_it_only_updated() -> None:
    inserted = RowVer("430100", 1, {"home": "430100"}, {"status": v(5, "430102")}, {"status": None})
    updated = RowVer("430100", 1, {"home": "430100"}, {"status": v(5, "430102"), "member_id": v(1, "430100")},
                     {"status": v(1, "430100"), "member_id": None})
    assert created_here(inserted, mine_430102) and not created_here(updated, mine_430102)
