"""HC-13: a table's merge-rule version goes up whenever its declarations change incompatibly.

Hello refuses a peer only on a different table version (``validate.check_tables``): it
cannot tell a renamed or removed column from an added one, nor see another merge rule or
reach.  So a release that changes any of those must bump ``Table.version``, and this test
holds the engineer to it: ``declarations.lock.json`` beside it records every table's
version and, per shipped column, what peers must agree on (merge rule, workflow stages,
reach, writers).  A change that only adds columns of reach ``all`` needs no bump; anything
else does.  Either way the lock is regenerated on purpose, with
``SYNCD_UPDATE_DECLARATIONS_LOCK=1 python -m pytest tests/unit/test_declaration_versions.py``,
which refuses to write a lock over an incompatible change without a bump.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from syncd.schema.declarations import SCHEMA, Schema, Table

LOCK = Path(__file__).with_name("declarations.lock.json")


def fingerprint(schema: Schema) -> dict[str, Any]:
    def column(t: Table, name: str) -> list[Any]:
        c = t.column(name)
        return [c.merge, list(c.workflow.stages) if c.workflow else None, c.reach, list(c.writers)]
    return {t.name: {"version": t.version, "routes": [[r.name, list(r.path), r.flow] for r in t.routes],
                     "natural_key": list(t.natural_key),
                     "columns": {c.name: column(t, c.name) for c in t.shipped}}
            for t in schema.tables}


def needs_bump(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Tables whose declarations changed beyond adding reach-``all`` columns, version unchanged."""
    out = []
    for name, n in new.items():
        o = old.get(name)
        if o is None or o["version"] != n["version"]:
            continue  # a new table, or bumped already
        added = set(n["columns"]) - set(o["columns"])
        incompatible = (set(o["columns"]) - set(n["columns"])  # removed or renamed
                        or any(o["columns"][c] != n["columns"][c] for c in o["columns"] if c in n["columns"])
                        or any(n["columns"][c][2] != "all" for c in added)  # a new limited-reach column
                        or o["routes"] != n["routes"] or o["natural_key"] != n["natural_key"])
        if incompatible:
            out.append(name)
    return out


def test_hc13_an_incompatible_declaration_change_bumps_the_table_version() -> None:
    now = fingerprint(SCHEMA)
    lock = json.loads(LOCK.read_text(encoding="utf-8"))
    unbumped = needs_bump(lock, now)
    assert not unbumped, (f"declarations of {unbumped} changed incompatibly (a column removed or renamed, a merge "
                          "rule, reach, writers or route changed): bump Table.version (HC-13)")
    if os.environ.get("SYNCD_UPDATE_DECLARATIONS_LOCK") == "1":
        LOCK.write_text(json.dumps(now, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert now == lock, ("the declarations changed compatibly: regenerate the lock with "
                         "SYNCD_UPDATE_DECLARATIONS_LOCK=1 (see this module's text)")


def test_the_guard_catches_a_rename_a_new_merge_rule_and_a_narrowed_reach() -> None:
    base = fingerprint(SCHEMA)

    def edited(edit: Any) -> dict[str, Any]:
        new = json.loads(json.dumps(base))
        edit(new["members"]["columns"])
        return new
    assert needs_bump(base, edited(lambda cols: cols.__setitem__("work_place", cols.pop("work_unit")))) == ["members"]
    assert needs_bump(base, edited(lambda cols: cols["title"].__setitem__(0, "workflow"))) == ["members"]
    assert needs_bump(base, edited(lambda cols: cols["work_unit"].__setitem__(2, "home"))) == ["members"]
    assert needs_bump(base, edited(lambda cols: cols.__setitem__("wechat_id", ["lww", None, "home", ["home"]]))) \
        == ["members"]
    assert needs_bump(base, edited(lambda cols: cols.__setitem__("wechat_id", ["lww", None, "all", ["home"]]))) == []
    bumped = edited(lambda cols: cols.pop("title"))
    bumped["members"]["version"] += 1
    assert needs_bump(base, bumped) == []
