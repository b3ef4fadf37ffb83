"""Hypothesis: decode is total, encode∘decode is the identity (SPEC R4.2, R4.8)."""
from __future__ import annotations

import json
import uuid
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.proto import codec
from syncd.proto.change import Change, ColumnChange, Version
from syncd.proto.fields import DecodeError
from syncd.proto.messages import (
    KINDS, ErrorReply, Hello, HelloReply, IdRange, PullReply, PullRequest, Push, PushReply, Quarantined,
    RangeSum, SnapshotChunk, SnapshotRequest, SnapshotRow, TableDecl, VerifyReply, VerifyRequest,
)

u64 = st.integers(0, 2**63 - 1)
small = st.integers(0, 10**6)
node = st.from_regex(r"[0-9A-Za-z_-]{1,32}", fullmatch=True)
ident = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)
uuids = st.uuids()
h32 = st.binary(min_size=32, max_size=32)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
versions = st.builds(Version, small, small, st.integers(-1, 50), u64, node)
col_changes = st.builds(ColumnChange, json_values, small, st.integers(-1, 50), st.none() | versions)
changes = st.builds(
    Change, table=ident, id=uuids, org_code=node, op=st.sampled_from("IUD"), cl=small, ts=u64, origin=node,
    txn=u64, homes=st.dictionaries(ident, node, max_size=3), cols=st.dictionaries(ident, col_changes, max_size=3),
    pos=u64,
)
tables = st.dictionaries(ident, st.builds(TableDecl, st.integers(1, 9), st.lists(ident, max_size=4)), max_size=3)
summary = st.lists(st.dictionaries(ident, json_values, max_size=3).map(lambda d: {**d, "node": "430102"}),
                   max_size=2)
code = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True)
scalars = st.none() | st.booleans() | st.integers(0, 10**9) | st.text(max_size=10)

messages = st.one_of(
    st.builds(Hello, st.lists(st.integers(1, 255), min_size=1, max_size=3), node, uuids, uuids, u64, u64, u64,
              st.none() | h32, tables),
    st.builds(HelloReply, st.sampled_from([2]), node, uuids, u64, u64, u64, st.none() | h32, tables),
    st.builds(Push, uuids, u64, u64, u64, st.lists(changes, max_size=3), summary),
    st.builds(PushReply, u64, u64, st.lists(st.builds(Quarantined, u64, code), max_size=3)),
    st.builds(PullRequest, u64, u64, st.integers(1, 10_000), st.integers(0, 300_000)),
    st.builds(PullReply, st.lists(changes, max_size=3), u64, u64, u64, st.booleans()),
    st.builds(SnapshotRequest, ident, st.none() | uuids, st.integers(1, 10_000), st.none() | u64),
    st.builds(SnapshotChunk, ident, u64, st.lists(st.builds(
        SnapshotRow, uuids, node, small, st.dictionaries(ident, node, max_size=2),
        st.dictionaries(ident, st.tuples(json_values, versions), max_size=3)), max_size=3),
        st.none() | uuids, st.booleans()),
    st.builds(VerifyRequest, ident, st.none() | u64, st.lists(st.builds(IdRange, uuids, st.none() | uuids), max_size=3)),
    st.builds(VerifyReply, ident, u64, st.lists(st.builds(RangeSum, uuids, st.none() | uuids, u64, h32), max_size=3)),
    st.builds(ErrorReply, code, st.text(max_size=30), st.none() | st.text(max_size=30), st.booleans(),
              st.dictionaries(ident, scalars, max_size=3)),
)
KIND_BY_CLS = {cls: kind for kind, cls in KINDS.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_r4_2_encode_decode_is_identity(msg: object) -> None:
    data = codec.encode(msg)  # type: ignore[arg-type]
    back = codec.decode(KIND_BY_CLS[type(msg)], data)
    assert back == msg
    assert codec.encode(back) == data


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(KINDS)), st.binary(max_size=200), st.sampled_from([1, 2, 3]))
def test_r4_8_any_bytes_decode_or_decode_error(kind: str, data: bytes, version: int) -> None:
    try:
        codec.decode(kind, data, version)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_r4_8_mutated_valid_bodies_decode_or_decode_error(msg: object, data: st.DataObject) -> None:
    body = bytearray(codec.encode(msg))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    try:
        codec.decode(KIND_BY_CLS[type(msg)], bytes(body[:cut]))
    except DecodeError:
        pass


@given(st.lists(changes, max_size=2))
def test_r8_2_change_hash_is_stable_under_pos(cs: list[Change]) -> None:
    for c in cs:
        moved = c.replace(pos=c.pos ^ 1)
        assert codec.change_hash(c) == codec.change_hash(moved)


def _paths(obj: object, at: tuple = ()) -> list[tuple]:
    """Every place inside an unpacked change map, as key/index paths."""
    out = [at]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*at, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*at, i))
    return out


_EDGES = st.sampled_from([-2, -1, 0, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, "a" * 33, "a" * 64, "A", "x\n",
                          "", None, True, 1.5, float("nan"), float("inf"), b"\0" * 16, b"", [], {}, [1] * 5])
_ANY = (_EDGES | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=70) | st.binary(max_size=20)
        | st.lists(st.integers(-2, 2), max_size=6) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _mutate(obj: object, data: st.DataObject) -> object:
    """``obj`` (an unpacked change map) with one place, at any depth, replaced or removed."""
    path = data.draw(st.sampled_from(_paths(obj)))
    if not path:
        return data.draw(_ANY)

    def at(node: object, rest: tuple) -> object:
        key, *more = rest
        new = at(node[key], tuple(more)) if more else data.draw(_ANY)  # type: ignore[index]
        if isinstance(node, dict):
            out = dict(node)
            if not more and data.draw(st.integers(0, 5)) == 0:
                del out[key]
            else:
                out[key] = new
            return out
        return [*node[:key], new, *node[key + 1:]]  # type: ignore[index]
    return at(obj, path)


def _put(node: object, path: tuple, value: object) -> object:
    """``node`` with the place at ``path`` set to ``value`` (a map entry removed for REMOVE)."""
    k, *more = path
    if isinstance(node, dict):
        out = dict(node)
        if more:
            out[k] = _put(node[k], tuple(more), value)
        elif value is REMOVE:
            del out[k]
        else:
            out[k] = value
        return out
    assert isinstance(node, list)
    new = _put(node[k], tuple(more), value) if more else (None if value is REMOVE else value)
    return [*node[:k], new, *node[k + 1:]]


REMOVE = object()


def _every_edit(raw: object) -> Iterator[object]:
    """``raw`` with each place replaced by each edge value, and removed."""
    edges = _EDGES.wrapped_strategy.elements if hasattr(_EDGES, "wrapped_strategy") else _EDGES.elements
    for path in _paths(raw)[1:]:
        for value in [*edges, REMOVE]:
            yield _put(raw, path, value)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes, st.data())
def test_fast_change_reader_agrees_with_the_checked_one(c: Change, data: st.DataObject) -> None:
    """The inline fast reader of a change accepts only what the checked reader accepts,
    and reads it to the same change; anything else it hands to the checked reader."""
    version = data.draw(st.sampled_from([2, 3]))  # the forms before and from version 3
    fast_reader, checked_reader, reader = ((codec._change_fast, codec._change_checked, codec._change) if version < 3
                                           else (codec._change_fast_v3, codec._change_checked_v3, codec._change_v3))
    raw = codec.unpack(codec.encode(Push(uuid.uuid4(), 1, 0, 1, (c,)), version))["ch"][0]
    if data.draw(st.booleans()):
        raw = _mutate(raw, data)
    fast = fast_reader(raw)
    try:
        checked = checked_reader(raw, "changes[0]")
    except DecodeError:
        assert fast is None
        return
    assert fast is None or fast == checked
    if raw is not None and not data.draw(st.booleans()):
        assert reader(raw, "changes[0]") == checked


def _agree(raw: object, fast_reader: Any = codec._change_fast, checked_reader: Any = codec._change_checked) -> None:
    """The fast reader accepts only what the checked one accepts, and reads it the same."""
    fast = fast_reader(raw)
    try:
        checked = checked_reader(raw, "changes[0]")
    except DecodeError:
        assert fast is None, raw
        return
    assert fast is None or fast == checked, raw


@pytest.mark.parametrize("version", [2, 3])
def test_fast_change_reader_agrees_at_every_place_with_every_edge_value(version: int) -> None:
    """Exhaustive twin of the property above: each place of a full change replaced by each
    edge value (and removed), both readers agree (the forms before and from version 3)."""
    c = Change("members", uuid.uuid4(), "430102", "U", 3, 10**15, "430102", 7, {"home": "430102", "org": "430100"},
               {"name": ColumnChange("王芳", 0, 0, Version(3, 0, 0, 10**15 - 1, "430100")),
                "status": ColumnChange("已答复", 2, 5, None), "extra": ColumnChange({"a": [1, 2.5]}, 0, -1, None)},
               42)
    raw = codec.unpack(codec.encode(Push(uuid.uuid4(), 1, 0, 1, (c,)), version))["ch"][0]
    readers = ((codec._change_fast, codec._change_checked) if version < 3 else
               (codec._change_fast_v3, codec._change_checked_v3))
    assert readers[0](raw) is not None
    _agree(raw, *readers)
    for edited in _every_edit(raw):
        _agree(edited, *readers)


@pytest.mark.parametrize("version", [2, 3])
def test_fast_snapshot_row_reader_agrees_at_every_place_with_every_edge_value(version: int) -> None:
    """The snapshot-row twin of the test above, for the row forms before and from version 3."""
    row = SnapshotRow(uuid.uuid4(), "430102", 3, {"home": "430102", "organiser": "430000"},
                      {"name": ("王芳", Version(3, 0, 0, 10**15, "430100")),
                       "note": ("", Version(3, 0, 0, 10**15, "430100")),
                       "status": ("已答复", Version(3, 2, 5, 10**15 + 1, "430000")),
                       "extra": ({"a": [1, 2.5]}, Version(3, 0, -1, 7, "430102"))},
                      {"status": Version(3, 2, 4, 10**15 - 5, "430102")})
    chunk = SnapshotChunk("members", 1, (row,), None, True)
    raw = codec.unpack(codec.encode(chunk, version))
    key = next(k for k, v in raw.items() if isinstance(v, list) and v)
    raw = raw[key][0]
    fast, checked = ((codec._snapshot_row_fast, codec._snapshot_row_checked) if version < 3 else
                     (codec._snapshot_row_fast_v3, codec._snapshot_row_checked_v3))
    assert fast(raw) is not None
    for edited in [raw, *_every_edit(raw)]:
        _agree(edited, fast, checked)


def test_fast_stored_row_reader_agrees_at_every_place_with_every_edge_value() -> None:
    """The version-4 twin (R9.2): the places of the row map, and every place inside its two
    JSON texts (values and versions) replaced by each edge value and removed."""
    row = SnapshotRow(uuid.uuid4(), "430102", 3, {"home": "430102", "organiser": "430000"},
                      {"name": ("王芳", Version(3, 0, 0, 10**15, "430100")),
                       "status": ("已答复", Version(3, 2, 5, 10**15 + 1, "430000")),
                       "extra": ({"a": [1, 2.5]}, Version(3, 0, -1, 7, "430102"))},
                      {"status": Version(3, 2, 4, 10**15 - 5, "430102")})
    raw = codec.unpack(codec.encode(SnapshotChunk("members", 1, (row,), None, True), 4))["r"][0]
    fast, checked = codec._stored_row_fast, codec._stored_row_checked
    assert fast(raw) == row
    for edited in [raw, *_every_edit(raw)]:
        _agree(edited, fast, checked)
    for key in ("c", "v"):
        for doc in _every_edit(json.loads(raw[key])):
            try:
                text = json.dumps(doc, ensure_ascii=False)
            except TypeError:  # bytes: not JSON
                continue
            _agree({**raw, key: text}, fast, checked)
    for text in ('{"name": "王芳"', "[]", "", "null", '{"name": 1e400}'):
        _agree({**raw, "c": text}, fast, checked)
        _agree({**raw, "v": text}, fast, checked)
