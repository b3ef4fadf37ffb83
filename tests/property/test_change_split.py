"""A change read off the wire keeps its columns split (``plain`` / ``other``, SPEC §5.1) and
makes its :class:`ColumnChange` cells only when something asks for ``cols``: every view of it
is the same change either way, and the apply's hot path never asks."""
from __future__ import annotations

import uuid

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from syncd.proto import codec
from syncd.proto.change import Change, ColumnChange, Version
from syncd.proto.messages import Push
from syncd.proto.validate import push_problems, schema_columns
from syncd.routing import check_origin, project
from syncd.schema.declarations import SCHEMA
from syncd.store.audit import personal_columns
from syncd.store.fastpath import _stage_record
from syncd.topology import Topology
from tests.property.test_codec_props import changes

HUNAN = Topology.from_rows([
    {"code": "430000", "name": "湖南省", "level": "province", "parent_code": None},
    {"code": "430100", "name": "长沙市", "level": "city", "parent_code": "430000"},
    {"code": "430102", "name": "芙蓉区", "level": "county", "parent_code": "430100"},
])


def _split_twin(c: Change) -> Change:
    return Change.split(c.table, c.id, c.org_code, c.op, c.cl, c.ts, c.origin, c.txn, c.homes,
                        dict(c.plain), dict(c.other), c.pos)


@given(changes)
def test_a_split_change_is_the_change_made_from_its_cells(c: Change) -> None:
    twin = _split_twin(c)
    assert twin._cols is None  # nothing made yet
    assert twin == c and c == twin
    assert set(twin.names) == set(c.names) == set(c.cols)
    assert all(not (cc.round or cc.stage or cc.prev) for cc in (ColumnChange(v) for v in c.plain.values()))
    assert all(cc.round or cc.stage or cc.prev is not None for cc in c.other.values())
    assert set(c.plain).isdisjoint(c.other)


@given(changes, st.data())
def test_only_and_replace_give_the_same_change_from_either_form(c: Change, data: st.DataObject) -> None:
    twin = _split_twin(c)
    keep = data.draw(st.sets(st.sampled_from(sorted(c.cols)) if c.cols else st.nothing()))
    assert twin.only(keep) == c.only(keep)
    assert set(twin.only(keep).names) == set(keep)
    assert twin.replace(pos=c.pos ^ 1) == c.replace(pos=c.pos ^ 1) != c
    assert twin.replace(pos=c.pos ^ 1)._cols is None  # a new position keeps the split


def _members_push(n: int) -> bytes:
    chs = []
    for i in range(n):
        chs.append(Change("members", uuid.uuid4(), "430102", "I", 1, 1_700_000_000_000_000 + i, "430102", 7,
                          {"home": "430102"}, {"name": ColumnChange(f"委员{i}"), "gender": ColumnChange("女"),
                                               "birth_month": ColumnChange("1970-01"),
                                               "sector_code": ColumnChange(None)}, i + 1))
    return codec.encode(Push(uuid.uuid4(), 1, 0, n, tuple(chs)))


def test_the_apply_hot_path_never_makes_a_received_changes_cells() -> None:
    """Decoding, validating, routing, auditing and staging a batch of new rows: the cells
    (``cols``) of no change are made.  If one of these steps reads ``cols`` again, the ~8 µs
    a members change saved comes back (README, Benchmarks)."""
    push = codec.decode("push", _members_push(50))
    got = push_problems(push, schema_columns(SCHEMA), 1_800_000_000_000_000, 10**12)
    assert got == []
    for i, c in enumerate(push.changes, 1):
        assert check_origin(c, None, "430102", "430100", HUNAN, "from_child") == []
        assert project(c, {"430000"}, HUNAN) is not None
        _stage_record(i, c, "430102")
    assert personal_columns(push.changes) == []
    assert all(c._cols is None for c in push.changes)


def test_a_plain_cell_sent_in_x_is_read_as_plain() -> None:
    """The wire lets a sender put a plain cell in ``x``; it decodes to the same change as when
    sent in ``c``, and its log columns keep it among the plain ones (the canonical split)."""
    rid = uuid.uuid4()
    head = {"t": "members", "i": rid.bytes, "o": "430102", "op": "U", "cl": 1, "ts": 5, "or": "430102",
            "tx": 1, "h": {"home": "430102"}, "p": 1}
    prev = [1, 0, 0, 4, "430102"]
    sent_in_x = {**head, "c": {"name": "甲"}, "x": {"gender": ["女", 0, 0, None], "title": ["处长", 0, 0, prev]}}
    sent_in_c = {**head, "c": {"name": "甲", "gender": "女"}, "x": {"title": ["处长", 0, 0, prev]}}
    a, b = (codec.decode("push", msgpack.packb({"b": uuid.uuid4().bytes, "e": 1, "f": 0, "to": 1, "ch": [m], "sm": []},
                                               use_bin_type=True)).changes[0] for m in (sent_in_x, sent_in_c))
    assert a == b
    assert a.plain == b.plain == {"name": "甲", "gender": "女"}
    assert set(a.other) == {"title"} and a.other["title"].prev == Version(1, 0, 0, 4, "430102")
    assert _stage_record(1, a, None)[10] == _stage_record(1, b, None)[10]


@given(changes)
def test_a_split_change_gives_each_column_the_version_its_cells_give(c: Change) -> None:
    twin = _split_twin(c)
    for name in c.cols:
        assert twin.version(name) == c.version(name)
    assert twin._cols is None  # asked for versions only: still no cells made
