"""The log's JSON (``syncd.store.log.dumps`` / ``loads``, orjson with a ``json`` fallback)
reads and writes the same values as the standard library, including what orjson alone gets
wrong: integers beyond 64 bits, named tuples, non-string keys, numbers beyond a double."""
from __future__ import annotations

import json
import math

from hypothesis import given, strategies as st

from syncd.proto.change import ColumnChange, Version
from syncd.store.log import decode_cols, dumps, loads

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@given(_values)
def test_dumps_then_loads_is_the_standard_librarys_reading(v: object) -> None:
    text = dumps(v)
    assert loads(text) == json.loads(text) == json.loads(json.dumps(v, ensure_ascii=False))


def test_integers_beyond_64_bits_stay_exact() -> None:
    big = 123456789012345678901234567890
    assert dumps({"n": big}) == '{"n": 123456789012345678901234567890}'  # the json fallback's spacing
    got = loads('{"n": [123456789012345678901234567890, 1]}')
    assert got == {"n": [big, 1]} and type(got["n"][0]) is int
    assert loads("[18446744073709551615]") == [2**64 - 1]  # u64: orjson reads it exactly


def test_a_number_beyond_a_double_reads_as_json_reads_it() -> None:
    assert math.isinf(loads('{"x": [1, {"y": 1e400}]}')["x"][1]["y"])


def test_named_tuples_are_arrays_and_int_keys_are_strings() -> None:
    cols = {"name": ColumnChange("高涛", 1, 0, Version(3, 0, 0, 1_700_000_000_000_000, "430102"))}
    assert json.loads(dumps(cols)) == {"name": ["高涛", 1, 0, [3, 0, 0, 1_700_000_000_000_000, "430102"]]}
    assert decode_cols(dumps(cols)) == cols
    assert json.loads(dumps({1: "a"})) == {"1": "a"}


@given(_values)
def test_a_logged_columns_document_decodes_to_the_values_written(v: object) -> None:
    cols = {"title": ColumnChange(v, 2, 1, Version(3, 0, 0, 1_700_000_000_000_000, "430102")),
            "name": ColumnChange("高涛", 0, 0, None)}
    back = decode_cols(dumps(cols))
    assert back["title"].value == json.loads(json.dumps(v, ensure_ascii=False)) and back["name"] == cols["name"]
    assert back["title"][1:] == cols["title"][1:]


def test_a_logged_integer_beyond_64_bits_stays_exact() -> None:
    big = 2**70 + 1
    back = decode_cols(dumps({"points": ColumnChange([1, {"x": big}], 0, 0, None)}))
    assert back["points"].value == [1, {"x": big}] and type(back["points"].value[1]["x"]) is int


def test_an_integer_just_below_int64_stays_exact() -> None:
    assert loads("[-9223372036854775809]") == [-(2**63) - 1]  # hypothesis found orjson reads it as a float


# -- a log row on its way out: StoredChange maps on the wire exactly as its Change ----------

_LOG_FIELDS = ("pos", "epoch", "tbl", "id", "org_code", "op", "cl", "ts", "origin", "txn", "homes", "cols",
               "received_from")
_versions = st.builds(Version, st.integers(1, 9), st.integers(0, 3), st.integers(-1, 3),
                      st.integers(0, 2**62), st.sampled_from(["430000", "430100", "430102"]))
#: what the wire can carry: integers within 64 bits (beyond, the validator refuses a change)
_wire_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
_wire_values = st.recursive(_wire_scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_cells = st.builds(ColumnChange, _wire_values, st.integers(0, 3), st.integers(-1, 3), st.none() | _versions)
#: members columns, personal ones among them: what crosses a link is projected per column
_member_cols = st.dictionaries(st.sampled_from(["name", "work_unit", "mobile", "id_card_no", "party", "title"]),
                               _cells, min_size=1)


@given(_member_cols, st.sampled_from(["I", "U"]), st.integers(0, 2**40))
def test_a_stored_change_goes_out_as_its_change_would(cols: dict[str, ColumnChange], op: str, pos: int) -> None:
    import uuid

    from syncd import routing
    from syncd.proto import codec
    from syncd.proto.change import Change, StoredChange
    from syncd.proto.messages import Push
    from syncd.store.log import change_from_record, log_record, stored_from_record
    from syncd.topology import Topology
    from tests.unit.test_routing import CSV

    change = Change("members", uuid.uuid4(), "430102", op, 1, 1_700_000_000_000_000, "430102", 7,
                    {"home": "430102"}, cols, pos)
    rec = dict(zip(_LOG_FIELDS, log_record(pos, 1, change, None)))
    full, stored = change_from_record(rec), stored_from_record(rec)
    assert type(stored) is StoredChange and stored.to_change() == full
    topo = Topology.from_csv(CSV)
    for behind in (topo.behind("430102", "430100"), topo.behind("430100", "430102")):
        a, b = routing.project(full, behind, topo), routing.project(stored, behind, topo)
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert type(b) is StoredChange and b.to_change() == a
        for version in codec.SUPPORTED_VERSIONS:
            push = Push(batch_id=uuid.UUID(int=1), epoch=1, from_pos=0, to_pos=pos, changes=(a,))
            assert codec.encode(push, version) == codec.encode(
                Push(batch_id=uuid.UUID(int=1), epoch=1, from_pos=0, to_pos=pos, changes=(b,)), version)


# -- the log's two forms of a change's columns ---------------------------------------------


def _change(cols: dict[str, ColumnChange], op: str = "U", pos: int = 5) -> "Change":
    import uuid

    from syncd.proto.change import Change

    return Change("members", uuid.UUID(int=7), "430102", op, 1, 1_700_000_000_000_000, "430102", 7,
                  {"home": "430102"}, cols, pos)


@given(_member_cols)
def test_columns_are_logged_split_as_the_wire_splits_them(cols: dict[str, ColumnChange]) -> None:
    from syncd.proto import codec
    from syncd.store.log import encode_cols

    wire = codec.change_map_v3(_change(cols))
    assert json.loads(encode_cols(_change(cols))) == json.loads(json.dumps([wire["c"], wire["x"]]))
    assert decode_cols(encode_cols(_change(cols))) == cols


@given(_member_cols, st.sampled_from(["I", "U"]), st.integers(0, 2**40))
def test_an_entry_logged_before_the_split_goes_out_as_one_logged_now(cols: dict[str, ColumnChange], op: str,
                                                                      pos: int) -> None:
    """A log row written by an earlier release (``{col: [value, round, stage, prev]}``, maps
    in values unsorted) decodes to the same change and the same bytes on the wire."""
    import uuid

    from syncd.proto import codec
    from syncd.proto.messages import Push
    from syncd.store.log import columns_map, log_record, stored_from_record

    change = _change(cols, op, pos)
    new = dict(zip(_LOG_FIELDS, log_record(pos, 1, change, None)))
    # the earlier writer: orjson without sorted keys, reversed so any map's order differs
    old = {**new, "cols": dumps({k: [_reversed(v[0]), *v[1:]] for k, v in reversed(columns_map(change).items())})}
    assert decode_cols(old["cols"]) == decode_cols(new["cols"]) == cols
    a, b = stored_from_record(old), stored_from_record(new)
    assert a.to_change() == b.to_change()
    for version in codec.SUPPORTED_VERSIONS:
        def push(c: object) -> bytes:
            return codec.encode(Push(batch_id=uuid.UUID(int=1), epoch=1, from_pos=0, to_pos=pos, changes=(c,)),
                                version)
        assert push(a) == push(b) == push(change)


def _reversed(v: object) -> object:
    """``v`` with every map's keys in reverse order."""
    if isinstance(v, dict):
        return {k: _reversed(v[k]) for k in reversed(list(v))}
    if isinstance(v, list):
        return [_reversed(x) for x in v]
    return v


def test_a_split_entrys_integers_beyond_64_bits_and_large_floats_stay_as_written() -> None:
    from syncd.store.log import encode_cols

    cols = {"points": ColumnChange(2**70 + 1, 0, 0, None), "score": ColumnChange(1e300, 0, 0, None),
            "nested": ColumnChange([1, {"x": -(2**65)}], 0, 0, None)}
    back = decode_cols(encode_cols(_change(cols)))
    assert back == cols and type(back["points"].value) is int and type(back["nested"].value[1]["x"]) is int


_floatless = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
                          | st.text(max_size=300), lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@given(st.dictionaries(st.sampled_from(["name", "work_unit", "mobile", "id_card_no", "party", "title"]),
                       st.builds(ColumnChange, _floatless, st.integers(0, 3), st.integers(-1, 3),
                                 st.none() | _versions), min_size=1))
def test_a_logged_entrys_text_is_no_smaller_than_its_change_on_the_wire(cols: dict[str, ColumnChange]) -> None:
    """What batching estimates a log entry's wire size from (``batching.entry_size_sql``: its
    columns' and homes' JSON plus the fixed overhead) is not below the msgpack map sent, for a
    change without floats (``syncd/batching.py``)."""
    import msgpack

    from syncd.batching import CHANGE_OVERHEAD_BYTES
    from syncd.proto import codec
    from syncd.store.log import encode_cols, encode_homes

    change = _change(cols)
    estimate = len(encode_cols(change).encode()) + len(encode_homes(change.homes).encode()) + CHANGE_OVERHEAD_BYTES
    assert estimate >= len(msgpack.packb(codec.change_map_v3(change), use_bin_type=True))
