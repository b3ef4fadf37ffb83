"""Codec behaviour beyond the vectors (SPEC §3, §4)."""
from __future__ import annotations

import uuid

import pytest

from syncd.errors import SyncdError
from syncd.proto import codec
from syncd.proto.change import Change, ColumnChange, Version
from syncd.proto.fields import DecodeError
from syncd.proto.messages import (
    ErrorReply, Hello, HelloReply, PullRequest, Push, SnapshotChunk, SnapshotRow, TableDecl, negotiate,
    tables_from_schema,
)
from syncd.schema.declarations import SCHEMA

ROW = uuid.UUID(int=7)


def ch(**kw: object) -> Change:
    base: dict = dict(table="attendance", id=ROW, org_code="430102", op="U", cl=3, ts=10, origin="430102",
                      txn=1, homes={"home": "430102", "organiser": "430100"},
                      cols={"status": ColumnChange("出席", 0, 0, Version(1, 0, 0, 5, "430100"))}, pos=4)
    base.update(kw)
    return Change(**base)  # type: ignore[arg-type]


def test_r4_2_encoding_is_canonical_whatever_the_dict_order() -> None:
    a = ch(cols={"spoke": ColumnChange(True), "status": ColumnChange({"b": 1, "a": [1, 2]})})
    b = ch(cols={"status": ColumnChange({"a": [1, 2], "b": 1}), "spoke": ColumnChange(True)})
    pa, pb = (codec.encode(Push(uuid.UUID(int=1), 0, 3, 4, [c])) for c in (a, b))
    assert pa == pb
    assert codec.encode_value({"b": 1, "a": 2}) == codec.encode_value({"a": 2, "b": 1})


def test_r4_8_error_path_names_the_field() -> None:
    m = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 0, 4, [ch(), ch(id=uuid.UUID(int=8))]), 2))
    m["ch"][1]["c"]["status"]["p"] = [1, 0, 0, "x", "430100"]
    with pytest.raises(DecodeError) as info:
        codec.decode("push", codec.pack_object(m), 2)
    assert info.value.path == "changes[1].cols.status.prev[3]"
    assert info.value.code == "DECODE_ERROR" and info.value.status == 400
    # version 3: the same column, written over a version, is in x as [value, round, stage, prev]
    edited = ch(cols={"status": ColumnChange("请假", prev=Version(1, 0, 0, 5, "430102"))})
    m = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 0, 4, [ch(), edited]), 3))
    m["ch"][1]["x"]["status"][3] = [1, 0, 0, "x", "430100"]
    with pytest.raises(DecodeError) as info:
        codec.decode("push", codec.pack_object(m), 3)
    assert info.value.path == "changes[1].other_cols.status.prev[3]"


def test_r4_8_homes_are_checked_every_time_though_their_answer_is_remembered() -> None:
    """A valid homes map seen before does not let an invalid one of equal value through."""
    good = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 0, 4, [ch()]), 3))
    assert codec.decode("push", codec.pack_object(good), 3).changes[0].homes == ch().homes
    for bad in ({"home": 430102}, {"home": True}, {"home": ["430102"]}, {"home": {"a": "430102"}},
                {"home": "430102", "bad key": "430100"}, {f"r{i}": "430102" for i in range(17)}):
        for _ in range(2):  # the second time from the remembered answer
            m = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 0, 4, [ch()]), 3))
            m["ch"][0]["h"] = {**ch().homes, **bad}  # the valid map's keys, a value changed
            with pytest.raises(DecodeError) as info:
                codec.decode("push", codec.pack_object(m), 3)
            assert info.value.path.startswith("changes[0].homes"), (bad, info.value.path)
    assert codec.decode("push", codec.pack_object(good), 3).changes[0].homes == ch().homes


def test_r4_8_bool_is_not_an_int_and_ints_fit_bigint() -> None:
    for bad in (True, 2**63, -1, 1.0):
        with pytest.raises(DecodeError):
            codec.decode("pull", codec.pack_object({"a": bad, "e": 0, "l": 1, "w": 0}))


def test_r4_7_real_10mb_string_is_value_too_large() -> None:
    m = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 3, 4, [ch()])))
    m["ch"][0]["x"]["status"][0] = "x" * (10 * 2**20)
    with pytest.raises(DecodeError) as info:
        codec.decode("push", codec.pack_object(m))
    assert info.value.code == "VALUE_TOO_LARGE"


def test_r4_7_body_over_limit_refused_before_unpacking() -> None:
    with pytest.raises(DecodeError) as info:
        codec.decode("push", b"\x00" * (codec.MAX_BODY_BYTES + 1))
    assert info.value.code == "BODY_TOO_LARGE" and info.value.status == 413


def test_r4_7_too_many_changes() -> None:
    m = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 0, 1, [ch()])))
    m["ch"] = m["ch"] * (codec.MAX_CHANGES + 1)
    with pytest.raises(DecodeError) as info:
        codec.decode("push", codec.pack_object(m))
    assert info.value.code == "BODY_TOO_LARGE"


def test_r4_6_deep_nesting_is_a_decode_error() -> None:
    v: object = 1
    for _ in range(40):
        v = [v]
    m = codec.unpack(codec.encode(Push(uuid.UUID(int=1), 0, 3, 4, [ch()])))
    m["ch"][0]["x"]["status"][0] = v
    with pytest.raises(DecodeError):
        codec.decode("push", codec.pack_object(m))


def test_r3_1_negotiate_highest_common_or_unsupported() -> None:
    assert negotiate([1, 2]) == 2 and negotiate([1]) == 1 and negotiate([2, 3]) == 3 and negotiate([4, 5]) == 4
    with pytest.raises(SyncdError) as info:
        negotiate([5, 6])
    assert info.value.code == "UNSUPPORTED_VERSION"


def test_r3_5_v1_push_drops_summary_and_hello_reply_clock() -> None:
    p = Push(uuid.UUID(int=1), 0, 3, 4, [ch()], [{"node": "430102"}])
    back = codec.decode("push", codec.encode(p, 1), 1)
    assert back.summary == () and back.changes == p.changes  # type: ignore[union-attr]
    r = HelloReply(1, "430100", uuid.UUID(int=2), 1, 123, 0, None, {})
    assert codec.decode("hello_reply", codec.encode(r)).clock is None  # type: ignore[union-attr]


def test_r3_2_hello_layout_is_the_same_whatever_version_is_asked() -> None:
    h = Hello((1, 2), "430102", uuid.UUID(int=1), uuid.UUID(int=2), 0, 5, 0, None,
              tables_from_schema(SCHEMA))
    data = codec.encode(h)
    assert codec.decode("hello", data, 1) == h == codec.decode("hello", data, 2)
    assert "updated_at" not in h.tables["members"].columns


def test_r8_2_change_hash_ignores_pos_only() -> None:
    assert codec.change_hash(ch(pos=4)) == codec.change_hash(ch(pos=999))
    assert codec.change_hash(ch()) != codec.change_hash(ch(ts=11))
    assert len(codec.change_hash(ch())) == 32


def test_r10_1_error_reply_round_trips_to_syncd_error() -> None:
    from syncd.errors import must_resync
    err = must_resync(7, "cursor below retention")
    back = codec.decode("error", codec.encode(ErrorReply.from_error(err)))
    assert back.to_error() == err and back.to_error().epoch == 7  # type: ignore[union-attr]


def test_r11_4_gzip_bomb_capped() -> None:
    bomb = codec.gzip_body(b"\x00" * (codec.MAX_BODY_BYTES + 10))
    assert len(bomb) < 100_000
    with pytest.raises(SyncdError) as info:
        codec.gunzip_capped(bomb)
    assert info.value.code == "BODY_TOO_LARGE"
    body = codec.encode(PullRequest(1, 1, 1, 0))
    assert codec.gunzip_capped(codec.gzip_body(body)) == body
    for bad in (b"not gzip", codec.gzip_body(body) + b"junk"):
        with pytest.raises(SyncdError) as info:
            codec.gunzip_capped(bad)
        assert info.value.code == "MALFORMED_BODY"


def test_unknown_kind_and_table_decl_bounds() -> None:
    with pytest.raises(DecodeError):
        codec.decode("nope", b"\x80")
    h = Hello((2,), "430102", uuid.UUID(int=1), uuid.UUID(int=2), 0, 5, 0, None, {"members": TableDecl(0, ())})
    with pytest.raises(DecodeError):
        codec.decode("hello", codec.encode(h))


def test_r9_2_a_cells_prev_travels_from_version_3_and_is_left_out_of_the_digest() -> None:
    v0, v1 = Version(1, 0, 0, 10, "430104"), Version(1, 0, 0, 25, "430000")
    row = SnapshotRow(uuid.UUID(int=7), "430104", 1, {"home": "430104"},
                      {"status": ("缺席", v1), "note": ("", v0)}, {"status": v0})
    chunk = SnapshotChunk("attendance", 9, (row,), None, True)
    v3 = codec.decode("snapshot_chunk", codec.encode(chunk, 3), 3)
    assert v3 == chunk  # type: ignore[comparison-overlap]
    v2 = codec.decode("snapshot_chunk", codec.encode(chunk, 2), 2)
    assert v2.rows[0].cols == row.cols and v2.rows[0].prevs == {}  # type: ignore[union-attr]
    assert codec.row_digest(v2.rows[0]) == codec.row_digest(row)  # type: ignore[union-attr]
    with pytest.raises(DecodeError):  # a version-2 reader refuses a third element
        codec.decode("snapshot_chunk", codec.encode(chunk, 3), 2)
    wire = codec.unpack(codec.encode(chunk, 3))["r"][0]
    assert wire["v"] == list(v0) and wire["c"] == {"note": ""} and wire["x"] == {"status": ["缺席", list(v1), list(v0)]}
    bad = codec.unpack(codec.encode(chunk, 3))
    bad["r"][0]["x"]["status"][2] = [1, 0, 0]
    with pytest.raises(DecodeError) as info:
        codec.decode("snapshot_chunk", codec.pack_object(bad), 3)
    assert "prev" in info.value.path
    bad = codec.unpack(codec.encode(chunk, 3))
    bad["r"][0]["c"]["status"] = "出席"  # one column twice
    with pytest.raises(DecodeError):
        codec.decode("snapshot_chunk", codec.pack_object(bad), 3)
    bad = codec.unpack(codec.encode(chunk, 3))
    bad["r"][0]["v"] = None  # bare values without the row's version
    with pytest.raises(DecodeError):
        codec.decode("snapshot_chunk", codec.pack_object(bad), 3)


def test_r9_2_v4_row_too_long_for_one_string_sends_its_values_as_a_map() -> None:
    """A row's values text over MAX_VALUE_BYTES (each value within it) goes as a map (R4.7)."""
    ver = Version(1, 0, 0, 10**15, "430102")
    big = "委" * 250_000  # 750 kB of UTF-8: one is allowed, the two in one text are not
    row = SnapshotRow(uuid.uuid4(), "430102", 1, {"home": "430102"}, {"body": (big, ver), "title": (big, ver)})
    data = codec.encode(SnapshotChunk("proposals", 1, (row,), None, True), 4)
    raw = codec.unpack(data)["r"][0]
    assert raw["c"] == {"body": big, "title": big} and isinstance(raw["v"], str)
    back = codec.decode("snapshot_chunk", data, 4)
    assert back.rows == (row,) and codec.encode(back, 4) == data
    small = SnapshotRow(row.id, "430102", 1, {"home": "430102"}, {"title": ("短", ver)})
    assert isinstance(codec.unpack(codec.encode(SnapshotChunk("proposals", 1, (small,), None, True), 4))["r"][0]["c"],
                      str)
