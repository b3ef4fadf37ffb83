"""Versioning of captured row images, without a database (``syncd.store.versioning``).

The expectations are written out from the rules (DESIGN §4): a new row's columns replace
nothing, an update's columns each replace the version held, a delete carries no columns and a
new causal length starts every column afresh; workflow columns get the rank the workflow
gives.  ``RowVer.to_db`` stores ``{col: [cl, round, stage, ts, origin, prev-or-null]}``.
"""
from __future__ import annotations

import json
import uuid

from syncd.merge import column_change
from syncd.proto.change import OP_DELETE, OP_INSERT, OP_UPDATE, ColumnChange, Version
from syncd.schema.declarations import SCHEMA
from syncd.store.versioning import Capture, RowVer, version_captures

ME = "430102"
T0 = 1_800_000_000_000_000


def _cap(serial: int, op: str, table: str, rid: uuid.UUID, new: dict | None, old: object = None) -> Capture:
    return Capture(serial, T0 + serial, 100 + serial, table, op, rid, old, new)


def _member(**cols: object) -> dict:
    image = {c.name: None for c in SCHEMA["members"].columns}
    image.update({"id": None, "org_code": ME, "name": "张三", "work_unit": "湖南大学", **cols})
    return image


def _stored(rv: RowVer) -> dict:
    return json.loads(rv.to_db()[3])


def test_a_new_row_then_update_delete_reinsert_carry_the_versions_they_replace() -> None:
    rid = uuid.uuid4()
    key = ("members", rid)
    shipped = [c.name for c in SCHEMA["members"].shipped if not c.derived_from]
    state: dict = {}
    caps = [
        _cap(1, "I", "members", rid, _member()),
        _cap(2, "u", "members", rid, _member(work_unit="中南大学"), ["work_unit"]),
        _cap(3, "D", "members", rid, None, _member(work_unit="中南大学")),
        _cap(4, "I", "members", rid, _member(name="李四")),
    ]
    changes, hlc = version_captures(caps, state, SCHEMA, ME, 0, {key: {"home": ME}})
    assert [(c.op, c.cl, c.ts) for c in changes] == [
        (OP_INSERT, 1, T0 + 1), (OP_UPDATE, 1, T0 + 2), (OP_DELETE, 2, T0 + 3), (OP_INSERT, 3, T0 + 4)]
    assert hlc == T0 + 4
    insert, update, delete, again = changes
    assert set(shipped) <= set(insert.cols)
    assert insert.cols["work_unit"] == ColumnChange("湖南大学", 0, 0, None)
    assert all(cc.prev is None and (cc.round, cc.stage) == (0, 0) for cc in insert.cols.values())
    first = Version(1, 0, 0, T0 + 1, ME)
    assert update.cols == {"work_unit": ColumnChange("中南大学", 0, 0, first)}
    assert delete.cols == {}
    assert again.cols["name"] == ColumnChange("李四", 0, 0, None)  # a new causal length: nothing replaced
    assert all(cc.prev is None for cc in again.cols.values())
    stored = _stored(state[key])
    assert stored["name"] == [3, 0, 0, T0 + 4, ME, None]
    assert set(stored) == set(again.cols)


def test_stored_versions_name_the_version_each_update_replaced() -> None:
    rid = uuid.uuid4()
    key = ("members", rid)
    state: dict = {}
    version_captures([_cap(1, "I", "members", rid, _member())], state, SCHEMA, ME, 0, {key: {"home": ME}})
    version_captures([_cap(2, "u", "members", rid, _member(work_unit="中南大学"), ["work_unit"])],
                     state, SCHEMA, ME, 0, {key: {"home": ME}})
    stored = _stored(state[key])
    assert stored["work_unit"] == [1, 0, 0, T0 + 2, ME, [1, 0, 0, T0 + 1, ME]]
    assert stored["name"] == [1, 0, 0, T0 + 1, ME, None]
    back = RowVer.from_db(*state[key].to_db())
    assert back.v == state[key].v
    assert back.prevs["work_unit"] == Version(1, 0, 0, T0 + 1, ME)
    assert back.prevs["name"] is None


def test_a_new_row_with_a_workflow_column_gets_the_workflow_rank() -> None:
    rid = uuid.uuid4()
    key = ("proposals", rid)
    image = {c.name: None for c in SCHEMA["proposals"].columns}
    image.update(id=None, org_code=ME, title="关于加强农村饮水安全的提案", status="立案")
    state: dict = {}
    (change,), _ = version_captures([_cap(1, "I", "proposals", rid, image)], state, SCHEMA, ME, 0,
                                    {key: {"home": ME}})
    ranked = column_change("proposals", "status", "立案", None)
    assert (ranked.round, ranked.stage) != (0, 0)  # else this test could not tell the paths apart
    assert change.cols["status"] == ranked
    assert change.cols["title"] == ColumnChange("关于加强农村饮水安全的提案", 0, 0, None)
    stored = _stored(state[key])
    assert stored["status"] == [1, ranked.round, ranked.stage, T0 + 1, ME, None]
    assert stored["title"] == [1, 0, 0, T0 + 1, ME, None]


def test_stored_versions_are_the_same_document_whichever_way_to_db_writes_them() -> None:
    """A new row (one version, nothing replaced) is written in one step; a row of different
    versions, or with a version it replaced, column by column: both give the general form."""
    one, two = Version(1, 0, 0, T0 + 1, ME), Version(1, 0, 0, T0 + 2, ME)
    general = lambda rv: {c: [*ver, list(rv.prevs[c]) if rv.prevs.get(c) else None]  # noqa: E731
                          for c, ver in rv.v.items()}
    for v, prevs in (({"name": one, "title": Version(*one)}, {}),  # equal versions, distinct objects
                     ({"name": one, "title": one}, {"name": None, "title": None}),
                     ({"name": one, "title": two}, {}),
                     ({"name": two, "title": two}, {"title": one}),
                     ({"name": one}, {"title": one}),  # a prev left from a column no longer held
                     ({}, {})):
        rv = RowVer(ME, 1, {"home": ME}, dict(v), dict(prevs))
        assert _stored(rv) == general(rv), (v, prevs)
        assert list(_stored(rv)) == list(v)


def test_the_id_number_hash_is_hmac_sha256_of_the_trimmed_upper_cased_number_tagged_with_the_key_id() -> None:
    import hashlib
    import hmac

    from syncd.config import Secret
    from syncd.store.versioning import id_card_hash

    key = Secret("k1", "province-secret")
    expected = "k1:" + hmac.new(b"province-secret", b"43010219900101123X", hashlib.sha256).hexdigest()
    assert id_card_hash(key, " 43010219900101123x ") == expected
    assert id_card_hash(key, "") is None and id_card_hash(None, "43010219900101123X") is None
