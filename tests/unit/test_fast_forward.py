"""The fast path's fast-forward test on one row (``fastpath._forwarded``): what a change must
have replaced for its row's versions to be merged without judgement, and the versions it leaves.
The differential test (``tests/integration/test_fastpath.py``) checks the same decisions
against ``merge.decide`` on random histories; these name the cases one by one."""
from __future__ import annotations

import uuid

import orjson

from syncd.proto.change import Change, ColumnChange, Version
from syncd.store.fastpath import _forwarded
from syncd.store.log import dumps

COUNTY = "430102"
T0, T1 = 1_700_000_000_000_000, 1_700_000_000_500_000
HELD = {"name": [1, 0, 0, T0, COUNTY, None], "work_unit": [1, 0, 0, T0, COUNTY, None]}
SEEN = Version(1, 0, 0, T0, COUNTY)


def _update(**cols: ColumnChange) -> Change:
    return Change("members", uuid.uuid4(), COUNTY, "U", 1, T1, COUNTY, 7, {"home": COUNTY}, cols)


def test_a_change_that_replaced_what_is_held_leaves_its_versions_over_the_rest() -> None:
    out = _forwarded(_update(work_unit=ColumnChange("中南大学", 0, 0, SEEN)), dumps(HELD))
    assert out is not None
    assert orjson.loads(out) == {"name": HELD["name"], "work_unit": [1, 0, 0, T1, COUNTY, list(SEEN)]}


def test_a_column_not_held_here_may_be_written_whatever_it_replaced() -> None:
    out = _forwarded(_update(party=ColumnChange("民盟", 0, 0, SEEN)), dumps(HELD))
    assert out is not None and orjson.loads(out)["party"] == [1, 0, 0, T1, COUNTY, list(SEEN)]
    out = _forwarded(_update(party=ColumnChange("民盟", 2, 1, None)), dumps(HELD))
    assert out is not None and orjson.loads(out)["party"] == [1, 2, 1, T1, COUNTY, None]


def test_a_change_that_did_not_see_the_held_version_is_not_a_fast_forward() -> None:
    older = Version(1, 0, 0, T0 - 5, COUNTY)
    other_writer = Version(1, 0, 0, T0, "430100")
    for prev in (older, other_writer, None):  # None: it replaced nothing, yet a version is held
        assert _forwarded(_update(work_unit=ColumnChange("中南大学", 0, 0, prev)), dumps(HELD)) is None, prev
    # one column that saw the held version does not carry another that did not
    assert _forwarded(_update(name=ColumnChange("王芳", 0, 0, SEEN),
                              work_unit=ColumnChange("中南大学", 0, 0, older)), dumps(HELD)) is None


def test_a_plain_column_replaced_nothing_so_none_may_be_held() -> None:
    plain = _update(party=ColumnChange("民盟", 0, 0, None))
    assert plain.plain == {"party": "民盟"}
    assert _forwarded(plain, dumps(HELD)) is not None
    assert _forwarded(_update(name=ColumnChange("王芳", 0, 0, None)), dumps(HELD)) is None
