"""merge.decide, conflicts, workflow rank and the hybrid clock (HC-5, HC-8, HC-17, HC-18, HC-23)."""
from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from syncd import merge
from syncd.merge import RowState, canonical_value_bytes, compare, decide
from syncd.proto.change import Change, ColumnChange, Version
from syncd.schema.declarations import PROPOSAL_WORKFLOW, SCHEMA

ROW = uuid.UUID("00000000-0000-4000-8000-000000000001")
FURONG, CHANGSHA, PROVINCE = "430102", "430100", "430000"
ATT_HOMES = {"home": FURONG, "organiser": PROVINCE}


def ch(op: str, cl: int, ts: int, origin: str, cols: dict[str, Any] | None = None,
       table: str = "attendance", prevs: dict[str, Version | None] | None = None,
       ranks: dict[str, tuple[int, int]] | None = None) -> Change:
    cols = cols or {}
    return Change(
        table=table, id=ROW, org_code=FURONG, op=op, cl=cl, ts=ts, origin=origin, txn=ts,
        homes=ATT_HOMES if table == "attendance" else {"home": FURONG},
        cols={c: ColumnChange(v, *(ranks or {}).get(c, (0, 0)), prev=(prevs or {}).get(c))
              for c, v in cols.items()},
    )


def fold(changes: list[Change], state: RowState | None = None) -> tuple[RowState | None, list[merge.Conflict]]:
    conflicts: list[merge.Conflict] = []
    for c in changes:
        d = decide(state, c)
        state = d.state
        conflicts += d.conflicts
    return state, conflicts


def test_canonical_bytes_and_total_order() -> None:
    assert canonical_value_bytes({"b": 1, "a": "政协"}) == '{"a":"政协","b":1}'.encode()
    v = Version(1, 0, 0, 10, FURONG)
    assert compare((v, "a"), (v, "a")) == 0
    assert compare((v, "b"), (v, "a")) == 1
    assert compare((Version(2, 0, 0, 0, "a"), None), (Version(1, 9, 9, 99, "z"), "z")) == 1
    assert compare((Version(1, 1, 0, 0, "a"), None), (Version(1, 0, 9, 99, "z"), "z")) == 1
    assert compare((Version(1, 0, 0, 5, "430000"), 1), (Version(1, 0, 0, 5, "430102"), 1)) == -1


def test_decide_flags_created_deleted_resurrected_cleared_lost() -> None:
    ins = decide(None, ch("I", 1, 10, FURONG, {"status": "出席", "spoke": False}))
    assert ins.created and ins.cl == 1 and set(ins.writes) == {"status", "spoke"} and ins.changed
    dele = decide(ins.state, ch("D", 2, 20, FURONG))
    assert dele.deleted and dele.tombstone and set(dele.cleared) == {"status", "spoke"}
    assert dele.state.cols == {}
    late = decide(dele.state, ch("U", 1, 99, PROVINCE, {"status": "请假"}))
    assert late.lost == ("status",) and not late.changed and late.state == dele.state
    back = decide(dele.state, ch("I", 3, 30, FURONG, {"status": "缺席"}))
    assert back.resurrected and back.state.values() == {"status": "缺席"}
    dup = decide(back.state, ch("I", 3, 30, FURONG, {"status": "缺席"}))
    assert dup.duplicate and not dup.changed and dup.state == back.state
    again = decide(dele.state, ch("D", 2, 20, FURONG))
    assert again.duplicate and not again.changed


def test_hc18_delete_reinsert_beats_late_edit_in_every_order() -> None:
    changes = [
        ch("I", 1, 10, FURONG, {"status": "出席", "spoke": True}),
        ch("D", 2, 20, FURONG),
        ch("I", 3, 30, FURONG, {"status": "缺席", "spoke": False}),
        # the organiser's late edit from cl 1, with a much higher ts: must lose everywhere
        ch("U", 1, 10_000, PROVINCE, {"status": "请假"}),
    ]
    final, _ = fold(changes)
    for p in itertools.permutations(changes):
        assert fold(list(p))[0] == final
    assert final is not None and final.cl == 3
    assert final.values() == {"status": "缺席", "spoke": False}


def test_hc18_equal_version_different_values_decided_by_value_bytes() -> None:
    # a restore can yield equal (rank, ts, origin) with different values
    a = ch("U", 1, 50, FURONG, {"status": "出席"})
    b = ch("U", 1, 50, FURONG, {"status": "请假"})
    s1, c1 = fold([a, b])
    s2, c2 = fold([b, a])
    assert s1 == s2
    winner = max(["出席", "请假"], key=lambda v: canonical_value_bytes(v))
    assert s1 is not None and s1.values()["status"] == winner
    assert [c.id for c in c1] == [c.id for c in c2] and len(c1) == 1


def test_hc8_rehandling_reaches_answered_round_2() -> None:
    status = SCHEMA["proposals"].column("status")
    # the home (芙蓉区) runs the workflow; every write ranks against what the home holds
    steps = ["立案", "交办", "办理中", "已答复", "已评价", "重新办理", "办理中", "已答复"]
    home: RowState | None = None
    emitted: list[Change] = []
    for ts, value in enumerate(steps, start=1):
        prev = home.cols["status"][1] if home is not None else None
        cc = merge.column_change("proposals", "status", value, prev)
        c = Change("proposals", ROW, FURONG, "I" if home is None else "U", 1, ts * 10, FURONG, ts,
                   {"home": FURONG}, {"status": cc})
        emitted.append(c)
        home = decide(home, c).state
    assert home is not None
    city, _ = fold(emitted)  # in log order
    province, conflicts = fold(list(reversed(emitted)))  # a resync in the worst order
    for state in (home, city, province):
        assert state is not None
        value, version = state.cols["status"]
        assert value == "已答复" and version.round == 2
        assert version.stage == PROPOSAL_WORKFLOW.stage("已答复")
    assert conflicts == []  # a chain from one writer is never a conflict
    assert status.workflow is PROPOSAL_WORKFLOW


def test_hc8_local_rank_rules() -> None:
    wf = PROPOSAL_WORKFLOW
    assert merge.local_rank(None, (3, 4), "x") == (0, 0)
    assert merge.local_rank(wf, None, "草稿") == (1, 0)
    assert merge.local_rank(wf, (1, wf.stage("交办")), "办理中") == (1, wf.stage("办理中"))
    for starter in ("重新办理", "退回", "改办"):
        assert merge.local_rank(wf, (1, wf.stage("已答复")), starter) == (2, wf.stage(starter))
        # a starter begins a new round even from an earlier stage
        assert merge.local_rank(wf, (1, 0), starter)[0] == 2
    # a backward move made at the home (a correction) still wins: new round
    assert merge.local_rank(wf, (2, wf.stage("办结")), "办理中") == (3, wf.stage("办理中"))
    assert merge.local_rank(wf, (2, wf.stage("办理中")), "办理中") == (3, wf.stage("办理中"))


def test_hc8_old_assignment_never_beats_answer_same_round() -> None:
    wf = PROPOSAL_WORKFLOW
    assigned = ch("U", 1, 9_000_000, FURONG, {"status": "交办"}, table="proposals",
                  ranks={"status": (1, wf.stage("交办"))})  # a skewed, late-relayed ts
    answered = ch("U", 1, 100, FURONG, {"status": "已答复"}, table="proposals",
                  ranks={"status": (1, wf.stage("已答复"))})
    for order in ([assigned, answered], [answered, assigned]):
        state, _ = fold(order)
        assert state is not None and state.values()["status"] == "已答复"


def test_hc17_replay_records_no_conflict() -> None:
    # the home writes a chain v1 -> v2 -> v3; a county loads a snapshot then replays the log
    chain: list[Change] = []
    prev: Version | None = None
    for ts, value in ((10, "出席"), (20, "请假"), (30, "缺席")):
        c = ch("U" if prev else "I", 1, ts, FURONG, {"status": value}, prevs={"status": prev})
        chain.append(c)
        prev = c.version("status")
    snapshot, _ = fold(chain)
    replayed, conflicts = fold(chain, snapshot)
    assert conflicts == [] and replayed == snapshot
    # duplicates and replays in any order record none either
    for p in itertools.permutations(chain):
        assert fold(list(p))[1] == []


def test_hc17_a_snapshot_row_meets_an_edit_as_decide_would() -> None:
    # 芙蓉区 holds its own edit; 湖南省's concurrent edit arrives inside a snapshot row (the
    # state after base and by_org, with prevs): the same one conflict as decide records
    base = ch("I", 1, 10, FURONG, {"status": "出席"})
    v0 = base.version("status")
    by_home = ch("U", 1, 20, FURONG, {"status": "请假"}, prevs={"status": v0})
    by_org = ch("U", 1, 25, PROVINCE, {"status": "缺席"}, prevs={"status": v0})
    local, _ = fold([base, by_home])
    snapshot_row, _ = fold([base, by_org])
    assert local is not None and snapshot_row is not None
    _, met = fold([base, by_home, by_org])
    assert merge.state_conflicts("attendance", ROW, local, snapshot_row) == met and len(met) == 1
    # the other way round: the snapshot holds the home's edit
    assert merge.state_conflicts("attendance", ROW, snapshot_row, local) == met
    # a snapshot of a later edit that saw the local one is no conflict; nor is a replay, nor an
    # older version, nor a row of another causal length
    later = ch("U", 1, 30, PROVINCE, {"status": "缺席"}, prevs={"status": by_home.version("status")})
    seen, _ = fold([base, by_home, later])
    assert seen is not None
    assert merge.state_conflicts("attendance", ROW, local, seen) == []
    assert merge.state_conflicts("attendance", ROW, seen, local) == []
    assert merge.state_conflicts("attendance", ROW, local, local) == []
    gone, _ = fold([base, by_org, ch("D", 2, 40, PROVINCE)])
    assert gone is not None and merge.state_conflicts("attendance", ROW, local, gone) == []
    assert merge.state_conflicts("attendance", ROW, None, snapshot_row) == []
    # a version-2 snapshot row carries no prevs: nothing is judged (a replay must not count)
    assert merge.state_conflicts("attendance", ROW, local, RowState(snapshot_row.cl, snapshot_row.cols, {})) == []


def test_hc17_concurrent_edit_one_conflict_same_id_everywhere() -> None:
    base = ch("I", 1, 10, FURONG, {"status": "出席"})
    v0 = base.version("status")
    by_home = ch("U", 1, 20, FURONG, {"status": "请假"}, prevs={"status": v0})
    by_org = ch("U", 1, 25, PROVINCE, {"status": "缺席"}, prevs={"status": v0})
    home, c_home = fold([base, by_home, by_org])
    prov, c_prov = fold([base, by_org, by_home])
    city, c_city = fold([base, by_home, by_org])
    assert home == prov == city
    assert len(c_home) == len(c_prov) == len(c_city) == 1
    assert c_home[0] == c_prov[0] == c_city[0]
    conflict = c_home[0]
    assert conflict.winner == (by_org.version("status"), "缺席")
    assert conflict.loser == (by_home.version("status"), "请假")
    # an edit that saw the other is not concurrent: resolving records nothing new
    fix = ch("U", 1, 40, FURONG, {"status": "请假"}, prevs={"status": by_org.version("status")})
    assert decide(home, fix).conflicts == ()
    # equal values never conflict
    same = ch("U", 1, 26, CHANGSHA, {"status": "缺席"}, prevs={"status": v0})
    assert decide(home, same).conflicts == ()


def test_conflict_id_independent_of_argument_order() -> None:
    v1, v2 = Version(1, 0, 0, 5, FURONG), Version(1, 0, 0, 6, PROVINCE)
    a = merge.conflict_id("attendance", ROW, "status", v1, v2)
    assert a == merge.conflict_id("attendance", ROW, "status", v2, v1)
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != merge.conflict_id("attendance", ROW, "spoke", v1, v2)
    assert a != merge.conflict_id("attendance", ROW, "status", v1, Version(1, 0, 0, 7, PROVINCE))


def test_hc5_next_ts_keeps_capture_time_but_stays_monotonic() -> None:
    assert merge.next_ts(1_000, 500) == 1_000  # a write made while the daemon was down keeps its time
    assert merge.next_ts(1_000, 1_000) == 1_001
    assert merge.next_ts(1_000, 5_000) == 5_001


def test_hc23_skewed_child_refused_and_clock_not_dragged() -> None:
    now, second = 1_700_000_000_000_000, 1_000_000
    soft, hard = 5 * second, 300 * second
    year_ahead = now + 365 * 24 * 3600 * second
    assert merge.clock_check(year_ahead, now, soft, hard) == "refuse"
    assert merge.clock_check(now + 60 * second, now, soft, hard) == "warn"
    assert merge.clock_check(now + second, now, soft, hard) == "ok"
    assert merge.clock_check(now - 3600 * second, now, soft, hard) == "ok"
    with pytest.raises(ValueError):
        merge.clock_check(now, now, hard, soft)
    # a node that only lets accepted ts raise its highest_seen never stamps next year
    highest = now
    for incoming in (now + second, year_ahead, now + 60 * second):
        if merge.clock_check(incoming, now, soft, hard) != "refuse":
            highest = max(highest, incoming)
    assert merge.next_ts(now + 2 * second, highest) == now + 60 * second + 1
    assert merge.next_ts(now + 2 * second, highest) < now + hard


def test_merge_states_matches_decide() -> None:
    a = [ch("I", 1, 10, FURONG, {"status": "出席"}), ch("U", 1, 30, PROVINCE, {"spoke": True})]
    b = [ch("U", 1, 20, FURONG, {"status": "请假"}), ch("D", 2, 25, FURONG)]
    sa, _ = fold(a)
    sb, _ = fold(b)
    assert merge.merge_states(sa, sb) == merge.merge_states(sb, sa)
    assert merge.merge_states(sa, sb) == fold(a + b)[0]
    assert merge.merge_states(sa, None) == sa and merge.merge_states(None, sb) == sb
