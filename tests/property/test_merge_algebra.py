"""merge.decide is a join: commutative, associative, idempotent (HC-18)."""
from __future__ import annotations

import itertools
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd import merge
from syncd.merge import RowState, canonical_value_bytes, decide
from syncd.proto.change import Change, ColumnChange, Version

ROW = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
ORIGINS = ("430000", "430100", "430102")
COLUMNS = ("status", "spoke", "sign_in_at")
VALUES = st.one_of(st.none(), st.sampled_from(["出席", "请假", "缺席"]), st.integers(0, 2), st.booleans())


def _prev(cl: int, ts: int, origin: str) -> Version | None:
    # one write has one prev: derive it from the version so duplicates agree
    return None if ts % 3 == 0 else Version(cl, 0, 0, ts - 1 - ts % 2, origin)


@st.composite
def changes(draw: st.DrawFn, max_cl: int = 5) -> Change:
    cl = draw(st.integers(1, max_cl))
    ts = draw(st.integers(1, 12))
    origin = draw(st.sampled_from(ORIGINS))
    if cl % 2 == 0:
        op, cols = "D", {}
    else:
        op = draw(st.sampled_from(["I", "U"]))
        names = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=3, unique=True))
        cols = {n: ColumnChange(draw(VALUES), prev=_prev(cl, ts, origin)) for n in names}
    return Change("attendance", ROW, "430102", op, cl, ts, origin, ts,
                  {"home": "430102", "organiser": "430000"}, cols)


def fold(cs: list[Change], state: RowState | None = None) -> RowState | None:
    for c in cs:
        state = decide(state, c).state
    return state


def oracle(cs: list[Change]) -> RowState | None:
    """The specification, written independently of decide: cl is the maximum; each
    column is the highest (version, value bytes) among writes at that cl."""
    if not cs:
        return None
    top = max(c.cl for c in cs)
    best: dict[str, tuple[Version, bytes, Any, Version | None]] = {}
    for c in cs:
        if c.cl != top:
            continue
        for name, cc in c.cols.items():
            cand = (c.version(name), canonical_value_bytes(cc.value), cc.value, cc.prev)
            if name not in best or cand[:2] > best[name][:2]:
                best[name] = cand
    return RowState(top, {n: (b[2], b[0]) for n, b in best.items()}, {n: b[3] for n, b in best.items()})


def check_invariant(state: RowState | None) -> None:
    if state is None:
        return
    assert all(v.cl == state.cl for _, v in state.cols.values())
    if not state.alive:
        assert state.cols == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(changes(), max_size=8), st.randoms(use_true_random=False))
def test_commutative_matches_oracle(cs: list[Change], rnd: Any) -> None:
    shuffled = list(cs)
    rnd.shuffle(shuffled)
    a, b = fold(cs), fold(shuffled)
    assert a == b == oracle(cs)
    check_invariant(a)


@settings(max_examples=200, deadline=None)
@given(st.lists(changes(), min_size=1, max_size=8))
def test_idempotent(cs: list[Change]) -> None:
    once = fold(cs)
    assert fold(cs, once) == once
    for c in cs:
        d = decide(once, c)
        assert not d.changed and d.writes == {} and d.state == once


@settings(max_examples=200, deadline=None)
@given(st.lists(changes(), max_size=5), st.lists(changes(), max_size=5), st.lists(changes(), max_size=5))
def test_associative_and_consistent_with_state_join(
    xs: list[Change], ys: list[Change], zs: list[Change]
) -> None:
    a, b, c = fold(xs), fold(ys), fold(zs)
    left = merge.merge_states(merge.merge_states(a, b), c)
    right = merge.merge_states(a, merge.merge_states(b, c))
    assert left == right == fold(xs + ys + zs)
    # applying a group of changes to a state built from another group: same result
    assert fold(zs, fold(ys, a)) == fold(xs + ys + zs)


@settings(max_examples=25, deadline=None)
@given(st.lists(changes(max_cl=1).filter(lambda c: c.op == "U"), min_size=1, max_size=2),
       st.integers(1, 12), st.integers(1, 12))
def test_hc18_delete_and_reinsert_interleaved_with_edits_in_every_order(
    edits: list[Change], del_ts: int, re_ts: int
) -> None:
    home = "430102"
    insert = Change("attendance", ROW, home, "I", 1, 1, home, 1, {"home": home},
                    {"status": ColumnChange("出席")})
    delete = Change("attendance", ROW, home, "D", 2, del_ts, home, 2, {"home": home})
    reinsert = Change("attendance", ROW, home, "I", 3, re_ts, home, 3, {"home": home},
                      {"status": ColumnChange("缺席"), "spoke": ColumnChange(False)})
    late = edits + [Change("attendance", ROW, home, "U", 3, re_ts + 1, "430000", 4,
                           {"home": home}, {"spoke": ColumnChange(True, prev=reinsert.version("spoke"))})]
    everything = [insert, delete, reinsert, *late]
    results = [fold(list(p)) for p in itertools.permutations(everything)]
    assert all(r == results[0] for r in results)
    final = results[0]
    assert final is not None and final.cl == 3
    assert final.values() == {"status": "缺席", "spoke": True}


@settings(max_examples=200, deadline=None)
@given(st.lists(changes(), max_size=8))
def test_conflicts_only_between_concurrent_different_values(cs: list[Change]) -> None:
    state: RowState | None = None
    for c in cs:
        d = decide(state, c)
        for x in d.conflicts:
            assert canonical_value_bytes(x.winner[1]) != canonical_value_bytes(x.loser[1])
            assert merge.compare(x.winner, x.loser) > 0
            assert x.id == merge.conflict_id("attendance", ROW, x.column, x.loser[0], x.winner[0])
        state = d.state
