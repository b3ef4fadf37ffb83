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
