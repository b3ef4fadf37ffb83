"""HC-34: correctly signed bodies with invalid content get named errors (SPEC R5.4–R5.6)."""
from __future__ import annotations

import uuid

import pytest

from syncd.errors import SyncdError
from syncd.proto import codec, signing
from syncd.proto.change import Change, ColumnChange, Version
from syncd.proto.fields import DecodeError
from syncd.proto.messages import TableDecl, Push, tables_from_schema
from syncd.proto.validate import check_tables, push_problems, schema_columns, validate_push
from syncd.schema.declarations import SCHEMA

NOW = 1_767_225_600_000_000
BOUND = 300_000_000
KEY = signing.Key("k1", b"furong-changsha-secret-1")
RING = signing.Keyring({"430102": [KEY]})


def ch(**kw: object) -> Change:
    base: dict = dict(table="members", id=uuid.UUID(int=1), org_code="430102", op="U", cl=1, ts=NOW - 1,
                      origin="430102", txn=1, homes={"home": "430102"},
                      cols={"name": ColumnChange("李四", 0, 0, Version(1, 0, 0, NOW - 9, "430102"))}, pos=1)
    base.update(kw)
    return Change(**base)  # type: ignore[arg-type]


def receive(push: Push, allowed: dict | None = None) -> Push:
    """What the parent does: verify the signature, decode, validate."""
    body = codec.encode(push)
    h = signing.sign_request(KEY, "POST", "/v1/push", body, NOW // 1_000_000)
    signing.verify_request(RING, "POST", "/v1/push", h, body, NOW // 1_000_000)
    got = codec.decode("push", body)
    validate_push(got, SCHEMA, NOW, BOUND, allowed)  # type: ignore[arg-type]
    return got  # type: ignore[return-value]


def code_of(push: Push, allowed: dict | None = None) -> str:
    with pytest.raises(SyncdError) as info:
        receive(push, allowed)
    return info.value.code


def test_hc34_valid_push_passes() -> None:
    assert receive(Push(uuid.UUID(int=9), 1, 0, 1, [ch()])).changes[0].cols["name"].value == "李四"


def test_hc34_future_ts_refused() -> None:
    assert code_of(Push(uuid.UUID(int=9), 1, 0, 1, [ch(ts=NOW + BOUND + 1)])) == "FUTURE_TS"
    receive(Push(uuid.UUID(int=9), 1, 0, 1, [ch(ts=NOW + BOUND)]))  # at the bound: fine


def test_hc34_negative_cl_refused_by_codec_and_validator() -> None:
    with pytest.raises(SyncdError) as info:
        validate_push(Push(uuid.UUID(int=9), 1, 0, 1, [ch(cl=-1)]), SCHEMA, NOW, BOUND)
    assert info.value.code == "NEGATIVE_CL"
    m = codec.unpack(codec.encode(Push(uuid.UUID(int=9), 1, 0, 1, [ch()])))
    m["ch"][0]["cl"] = -5
    with pytest.raises(DecodeError) as dinfo:
        codec.decode("push", codec.pack_object(m))
    assert dinfo.value.code == "NEGATIVE_CL" and dinfo.value.path == "changes[0].cl"


def test_hc34_unknown_column_refused_unless_declared_at_hello() -> None:
    p = Push(uuid.UUID(int=9), 1, 0, 1, [ch(cols={"wechat_id": ColumnChange("wx123")})])
    assert code_of(p) == "UNKNOWN_COLUMN"
    ours = tables_from_schema(SCHEMA)
    theirs = {**ours, "members": TableDecl(1, ours["members"].columns + ("wechat_id",))}
    receive(p, check_tables(ours, theirs))  # HC-13: a newer child's additive column is opaque, not refused


def test_hc34_unknown_table_and_local_column() -> None:
    assert code_of(Push(uuid.UUID(int=9), 1, 0, 1, [ch(table="secrets")])) == "UNKNOWN_TABLE"
    assert code_of(Push(uuid.UUID(int=9), 1, 0, 1, [ch(cols={"updated_at": ColumnChange(1)})])) == "UNKNOWN_COLUMN"


def test_hc34_ten_megabyte_string_refused() -> None:
    p = Push(uuid.UUID(int=9), 1, 0, 1, [ch(cols={"name": ColumnChange("x" * 10_000_000)})])
    assert code_of(p) == "VALUE_TOO_LARGE"  # caught by the decoder's max_str_len
    big = ["y" * 600_000, "z" * 600_000]  # each string fits, the value does not
    with pytest.raises(SyncdError) as info:
        validate_push(Push(uuid.UUID(int=9), 1, 0, 1, [ch(cols={"name": ColumnChange(big)})]), SCHEMA, NOW, BOUND)
    assert info.value.code == "VALUE_TOO_LARGE"


def test_hc34_duplicate_row_refused() -> None:
    p = Push(uuid.UUID(int=9), 1, 0, 2, [ch(), ch(pos=2, txn=2)])
    assert code_of(p) == "DUPLICATE_ROW"


def test_r5_6_first_problem_names_its_position_and_all_are_listed() -> None:
    p = Push(uuid.UUID(int=9), 1, 10, 13, [ch(pos=11), ch(id=uuid.UUID(int=2), pos=12, table="nope"),
                                           ch(id=uuid.UUID(int=3), pos=13, ts=NOW * 2)])
    with pytest.raises(SyncdError) as info:
        validate_push(p, SCHEMA, NOW, BOUND)
    assert info.value.code == "UNKNOWN_TABLE" and info.value.details["pos"] == 12
    codes = [(x.pos, x.code) for x in push_problems(p, schema_columns(SCHEMA), NOW, BOUND)]
    assert codes == [(12, "UNKNOWN_TABLE"), (13, "FUTURE_TS")]


@pytest.mark.parametrize("change, why", [
    ({"cl": 0}, "cl 0"), ({"op": "D"}, "delete with odd cl"), ({"op": "U", "cl": 2}, "write with even cl"),
    ({"homes": {"home": "430100"}}, "home is not org_code"),
    ({"cols": {"name": ColumnChange("x", 0, 0, Version(1, 0, 0, NOW, "430102"))}}, "prev not below"),
])
def test_r5_4_inconsistent_changes_are_invalid(change: dict, why: str) -> None:
    assert code_of(Push(uuid.UUID(int=9), 1, 0, 1, [ch(**change)])) == "INVALID_CHANGE", why


def test_r5_5_positions_must_increase_within_the_batch() -> None:
    assert code_of(Push(uuid.UUID(int=9), 1, 5, 9, [ch(pos=5)])) == "INVALID_CHANGE"
    assert code_of(Push(uuid.UUID(int=9), 1, 5, 9, [ch(pos=10)])) == "INVALID_CHANGE"
    assert code_of(Push(uuid.UUID(int=9), 1, 0, 9, [ch(pos=3), ch(id=uuid.UUID(int=2), pos=3)])) == "INVALID_CHANGE"


def test_r3_4_incompatible_table_version_refused() -> None:
    ours = tables_from_schema(SCHEMA)
    with pytest.raises(SyncdError) as info:
        check_tables(ours, {**ours, "proposals": TableDecl(2, ours["proposals"].columns)})
    assert info.value.code == "SCHEMA_INCOMPATIBLE" and "proposals" in info.value.reason
    assert "members" in check_tables(ours, {"members": ours["members"]})
    assert "proposals" not in check_tables(ours, {"members": ours["members"]})
